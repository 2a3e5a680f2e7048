"""Before a run: what it will cost (FLOPs, time, memory, energy, money, CO2), and, for a compute
budget, the compute-optimal model size and token count.

Time is FLOPs / (peak x MFU). On a GPU profile the MFU is an assumption (40% unless given); on
this CPU it is measured: a few real training steps of the very model, on random tokens, are
timed (a calibration, stated in the output). Memory is counted from the model's shape:

    weights          4 bytes x parameters (fp32 master weights)
    gradients        4 bytes x parameters
    optimizer state  8 bytes x parameters (AdamW: two fp32 moments)
    activations      what autograd keeps for the backward pass, per token and layer, for this
                     implementation (counted in `activation_bytes`), plus the output layer's
                     working set and, under bf16 autocast, the bf16 copies of the weights
    runtime          on the CPU, the measured resident memory of a process that has loaded
                     torch and candorlm; on a GPU, 1 GiB assumed for the CUDA context
    workspace        on the CPU only, measured: the calibration's peak resident memory less
                     all of the above (allocator caching and fragmentation, oneDNN and MKL
                     scratch buffers, temporaries the count above leaves out). On this machine
                     kind the count alone came to 63-67% of a real run's peak; with the
                     measured term, 84-90% (bench/estimate_validation.py).

Compute-optimal sizes follow Hoffmann et al. (2022, "Chinchilla"): training compute C = 6 N D
for N parameters and D tokens, and D = 20 N at the optimum, so N = sqrt(C / 120), D = 20 N.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from candorlm.config import ModelConfig, RunConfig, resolve
from candorlm.device import autocast, cpu_has_bf16, keep_freed_memory, peak_rss_bytes
from candorlm.errors import CandorError
from candorlm.ledger.energy import CPU_WATTS_PER_CORE
from candorlm.ledger.flops import forward_flops_per_token, train_flops_per_token
from candorlm.ledger.hardware import device_name, measured_peak_flops
from candorlm.ledger.launches import KERNEL_LAUNCH_S, MAX_OPERATORS_PER_LAYER, launch_floor_s
from candorlm.ledger.memory import memory_breakdown, param_count, runtime_baseline
from candorlm.ledger.meter import DEFAULT_GRID_KG_PER_KWH, DEFAULT_PRICE_PER_HOUR
from candorlm.tokenizer import DEFAULT_VOCAB_SIZE

CHINCHILLA_TOKENS_PER_PARAM = 20.0
GPU_ASSUMED_MFU = 0.40
GPU_RUNTIME_BYTES = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: dict[str, float]  # precision -> FLOP/s
    memory_bytes: int
    watts: float
    price_per_hour: float
    source: str
    measured: bool = False  # True: this machine, probed; False: a datasheet preset


# Dense (no sparsity) peaks from NVIDIA's datasheets; power is the board's maximum; prices are
# rounded 2024-2025 on-demand cloud rates per GPU-hour (an assumption: set --price-per-hour).
GPUS = {
    "a100": Hardware("NVIDIA A100 80GB SXM", {"bf16": 312e12, "fp32": 19.5e12}, 81920 * MiB, 400, 1.80,
                     "datasheet: 312 TFLOP/s dense bf16, 19.5 TFLOP/s fp32, 80 GB, 400 W"),
    "h100": Hardware("NVIDIA H100 SXM", {"bf16": 989e12, "fp32": 67e12}, 81559 * MiB, 700, 2.50,
                     "datasheet: 989 TFLOP/s dense bf16, 67 TFLOP/s fp32, 80 GB HBM3, 700 W"),
    "h200": Hardware("NVIDIA H200 SXM", {"bf16": 989e12, "fp32": 67e12}, 143771 * MiB, 700, 3.50,
                     "datasheet: 989 TFLOP/s dense bf16, 67 TFLOP/s fp32, 141 GB HBM3e, 700 W"),
}
HARDWARE_NAMES = ("cpu", *GPUS)


def this_cpu() -> Hardware:
    """This machine's CPU: matmul peaks probed (and cached), memory from /proc/meminfo."""
    cores = torch.get_num_threads()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    peaks = {p: measured_peak_flops(p) for p in ("fp32", "bf16")}
    return Hardware(device_name(torch.device("cpu")), peaks, memory, CPU_WATTS_PER_CORE * cores,
                    DEFAULT_PRICE_PER_HOUR["cpu"],
                    f"measured on this machine: matmul probe at {cores} threads; power {CPU_WATTS_PER_CORE:.0f} W "
                    f"per core assumed", measured=True)


def hardware(name: str) -> Hardware:
    if name == "cpu":
        return this_cpu()
    if name not in GPUS:
        raise CandorError(f"unknown hardware '{name}'. Valid: {', '.join(HARDWARE_NAMES)}.")
    return GPUS[name]


# ------------------------------------------------------------------ time
@dataclass(frozen=True)
class Calibration:
    step_seconds: float  # median over the timed steps
    peak_rss_bytes: int  # the process's peak resident memory after them


def calibrate(cfg: ModelConfig, batch: int, seq_len: int, precision: str, steps: int = 4) -> Calibration:
    """Time `steps` real training steps of this model on this CPU after two warm-ups (random
    tokens; the trainer's step: autocast, fused loss, clipping, AdamW), and read the peak
    resident memory they reached. The median step: the first steps after start-up pay for
    oneDNN kernel selection and allocator growth, which a long run does not."""
    from candorlm.training.optim import build_optimizer

    keep_freed_memory()
    torch.manual_seed(0)
    model = _model(cfg)
    optimizer = build_optimizer(model, RunConfig(model=cfg))
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    device = torch.device("cpu")

    def step() -> None:
        with autocast(precision, device):
            loss = model(x, targets=x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return Calibration(statistics.median(times), peak_rss_bytes())


def _model(cfg: ModelConfig) -> torch.nn.Module:
    from candorlm.model import DecoderLM

    return DecoderLM(cfg)


# ------------------------------------------------------------------ sizes
def shape_for_params(params: float, vocab_size: int = 32000) -> ModelConfig:
    """A decoder shape of about `params` parameters: width d, d/64 layers and heads of 64."""
    best: ModelConfig | None = None
    for d in range(64, 16385, 64):
        cfg = ModelConfig(vocab_size=vocab_size, d_model=d, n_layers=max(1, d // 64), n_heads=max(1, d // 64),
                          max_seq_len=2048 if d >= 512 else 512)
        if best is None or abs(param_count(cfg) - params) < abs(param_count(best) - params):
            best = cfg
        if param_count(cfg) > params:
            break
    assert best is not None
    return best


def compute_optimal(compute_flops: float) -> dict[str, float]:
    """Chinchilla: N = sqrt(C / (6 x 20)), D = 20 N."""
    n = math.sqrt(compute_flops / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    return {"params": n, "tokens": CHINCHILLA_TOKENS_PER_PARAM * n}


# ------------------------------------------------------------------ the estimate
@dataclass
class Estimate:
    hardware: str
    hardware_source: str
    model: dict[str, Any]
    params: int
    precision: str
    batch_size: int
    seq_len: int
    tokens: int
    steps: int
    flops: float
    train_flops: float
    eval_flops: float
    train_seconds: float
    eval_seconds: float
    flops_per_token: int
    peak_flops_per_s: float
    mfu: float
    mfu_method: str
    seconds: float
    memory: dict[str, dict[str, Any]]
    peak_memory_bytes: int
    device_memory_bytes: int
    fits: bool
    watts: float
    energy_kwh: float
    price_per_hour: float
    currency: str
    cost: float
    grid_kg_co2_per_kwh: float
    co2_kg: float
    notes: list[str] = field(default_factory=list)
    compute_optimal: dict[str, Any] | None = None
    mfu_basis: str = "assumed"  # given | measured (this CPU) | assumed (a GPU's typical MFU) | launch-bound (derived)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(config: RunConfig | None = None, *, preset: str | None = None, params: float | None = None,
             tokens: int | None = None, steps: int | None = None, hardware_name: str = "cpu",
             precision: str = "auto", mfu: float | None = None, price_per_hour: float | None = None,
             currency: str = "USD", grid_kg_co2_per_kwh: float | None = None, calibration_steps: int = 4,
             vocab_size: int = DEFAULT_VOCAB_SIZE) -> Estimate:
    """Predict a training run's cost. Give a config, a preset or a parameter count; a token
    budget (`tokens`) or a number of optimizer steps; and a hardware profile.

    Args:
        config: The run's config (None: the preset's).
        preset: Model size preset (None: tiny).
        params: A parameter count instead of a config (a shape is assumed).
        tokens: Training tokens (None: the config's max_steps).
        steps: Optimizer steps instead of tokens.
        hardware_name: cpu (this machine, measured), a100, h100 or h200.
        precision: auto, bf16 or fp32.
        mfu: Assumed model FLOPs utilization, 0-1 (cpu: measured if unset).
        price_per_hour: Price of one device-hour.
        currency: Currency of the price.
        grid_kg_co2_per_kwh: Grid carbon intensity, kg CO2e per kWh.
        calibration_steps: Training steps timed on this machine to measure the CPU's throughput.
        vocab_size: Vocabulary size assumed when the config leaves it to the tokenizer.
    """
    notes: list[str] = []
    if config is None:
        if params is not None:
            model = shape_for_params(params, vocab_size=32000)
            config = RunConfig(model=model)
            notes.append(f"shape assumed for {params:,.0f} parameters: d_model {model.d_model}, {model.n_layers} layers, "
                         f"{model.n_heads} heads, vocabulary 32,000, sequence {model.max_seq_len}")
        else:
            config = resolve(preset or "tiny")
    if config.model.vocab_size == 0:
        config = config.model_copy(deep=True)
        config.model.vocab_size = vocab_size
        notes.append(f"vocabulary {vocab_size:,} assumed (set model.vocab_size; it comes from the tokenizer)")
    cfg, t = config.model, config.train
    seq = config.seq_len
    batch = t.batch_size * t.grad_accum
    tokens_per_step = batch * seq
    if tokens is None:
        tokens = (steps if steps is not None else t.max_steps) * tokens_per_step
    n_steps = math.ceil(tokens / tokens_per_step)
    hw = hardware(hardware_name)
    calibration: Calibration | None = None
    if precision == "auto":
        precision = ("bf16" if cpu_has_bf16() else "fp32") if hw.measured else "bf16"
    if hw.measured:  # before the calibration below grows this process
        runtime, runtime_method = runtime_baseline()
    else:
        runtime, runtime_method = GPU_RUNTIME_BYTES, "CUDA context and libraries, 1 GiB assumed"
    fpt = train_flops_per_token(cfg, seq)
    flops = float(fpt) * tokens
    peak = hw.peak_flops[precision]
    mfu_basis = "given" if mfu is not None else "measured" if hw.measured else "assumed"
    if mfu is not None:
        mfu_method = f"given MFU {mfu:.0%}"
    elif hw.measured:
        if calibration_steps <= 0:
            raise CandorError("the cpu profile measures MFU with a short calibration: give calibration steps > 0, "
                              "or an assumed --mfu")
        calibration = calibrate(cfg, t.batch_size, seq, precision, calibration_steps)
        step_s = calibration.step_seconds * t.grad_accum
        mfu = fpt * tokens_per_step / step_s / peak
        mfu_method = (f"measured: median of {calibration_steps} real training steps of this model on this CPU "
                      f"({t.batch_size} x {seq} tokens, {precision}), {step_s:.3f} s per step")
    else:
        mfu, mfu_method, mfu_basis = gpu_mfu(cfg, t.batch_size, seq, float(fpt) * tokens_per_step, peak,
                                             t.grad_accum)
    train_seconds = flops / (peak * mfu)
    # Periodic evaluation (and the one at the end): forward passes over eval_tokens, at the same MFU.
    n_evals = n_steps // t.eval_every + (0 if n_steps % t.eval_every == 0 else 1)
    per_eval = _eval_tokens(config, tokens_per_step)
    eval_tokens = n_evals * per_eval
    eval_flops = float(forward_flops_per_token(cfg, seq)) * eval_tokens
    eval_seconds = eval_flops / (peak * mfu)
    if n_evals:
        notes.append(f"includes {n_evals} evaluation(s) of {per_eval:,} tokens: "
                     f"{eval_flops:.3g} FLOP, {eval_seconds:,.1f} s")
    seconds = train_seconds + eval_seconds
    memory = memory_breakdown(cfg, t.batch_size, seq, precision, runtime, runtime_method)
    if calibration is not None:
        counted = sum(part["bytes"] for part in memory.values())
        memory["workspace"] = {
            "bytes": max(0, calibration.peak_rss_bytes - counted),
            "how": (f"measured: the calibration's peak resident memory ({calibration.peak_rss_bytes / MiB:,.0f} MiB) "
                    f"less the parts above (allocator caching, oneDNN/MKL scratch, uncounted temporaries)")}
    peak_memory = sum(part["bytes"] for part in memory.values())
    price = hw.price_per_hour if price_per_hour is None else price_per_hour
    grid = DEFAULT_GRID_KG_PER_KWH if grid_kg_co2_per_kwh is None else grid_kg_co2_per_kwh
    energy = hw.watts * seconds / 3.6e6
    if not hw.measured and precision == "fp32":
        notes.append("fp32 on a GPU: the peak is the plain fp32 one (TF32 would be faster)")
    return Estimate(
        hardware=hw.name, hardware_source=hw.source, model=cfg.model_dump(), params=param_count(cfg),
        precision=precision, batch_size=batch, seq_len=seq, tokens=int(tokens), steps=n_steps, flops=flops + eval_flops,
        train_flops=flops, eval_flops=eval_flops, train_seconds=train_seconds, eval_seconds=eval_seconds,
        flops_per_token=fpt, peak_flops_per_s=peak, mfu=mfu, mfu_method=mfu_method, mfu_basis=mfu_basis,
        seconds=seconds, memory=memory,
        peak_memory_bytes=int(peak_memory), device_memory_bytes=int(hw.memory_bytes), fits=peak_memory <= hw.memory_bytes,
        watts=hw.watts, energy_kwh=energy, price_per_hour=price, currency=currency, cost=seconds / 3600 * price,
        grid_kg_co2_per_kwh=grid, co2_kg=energy * grid, notes=notes,
    )


def gpu_mfu(cfg: ModelConfig, micro_batch: int, seq: int, step_flops: float, peak: float,
            grad_accum: int = 1) -> tuple[float, str, str]:
    """(MFU, how it was had, basis) on a GPU profile: the assumed typical MFU, unless launching the
    step's kernels takes longer than its FLOPs at that MFU; then the MFU those launches allow."""
    assumed = (f"assumed MFU {GPU_ASSUMED_MFU:.0%} (typical of well-tuned training of large models; give --mfu "
               f"with a figure measured on the GPU)")
    flop_s = step_flops / (peak * GPU_ASSUMED_MFU)
    if MAX_OPERATORS_PER_LAYER * (cfg.n_layers + (cfg.n_encoder_layers or 0) + 2) * KERNEL_LAUNCH_S * grad_accum < flop_s:
        return GPU_ASSUMED_MFU, assumed, "assumed"  # a large model: its launches cannot matter (no need to count)
    floor = launch_floor_s(cfg, micro_batch, seq)
    if floor is None:
        return GPU_ASSUMED_MFU, assumed, "assumed"
    per_micro, ops = floor
    launch_s = per_micro * grad_accum
    launches = (f"{ops:,} operators per step (counted by tracing this model's training step) x "
                f"{KERNEL_LAUNCH_S * 1e6:.0f} µs per kernel launch (assumed, eager PyTorch on CUDA) = "
                f"{launch_s * 1e3:.2f} ms per step")
    if launch_s <= flop_s:
        return GPU_ASSUMED_MFU, f"{assumed}; kernel launches take less: {launches}", "assumed"
    mfu = step_flops / (peak * launch_s)
    return mfu, (f"derived, launch-bound: {launches}, longer than the step's FLOPs take at an assumed "
                 f"{GPU_ASSUMED_MFU:.0%} MFU ({flop_s * 1e3:.3f} ms), so the launches set the time and MFU is at "
                 f"most {mfu:.1%}; time is a lower bound, measure on the GPU to know"), "launch-bound"


def _eval_tokens(config: RunConfig, tokens_per_step: int) -> int:
    """Tokens one evaluation reads: train.eval_tokens, capped by the validation split when the
    config names prepared data (the trainer never reads past the split)."""
    from candorlm.shards import ShardSet

    wanted = config.train.eval_tokens
    val = 0
    if config.data.path and os.path.isfile(os.path.join(config.data.path, "meta.json")):
        try:
            val = ShardSet(config.data.path).meta.tokens.get("val", 0)
        except CandorError:  # encrypted without its key, or damaged: the estimate does not need it
            val = 0
    if val:
        return min(wanted, val) if wanted else val
    return wanted or tokens_per_step


def estimate_compute_budget(compute_flops: float, hardware_name: str = "h100", mfu: float | None = None,
                            price_per_hour: float | None = None, currency: str = "USD",
                            grid_kg_co2_per_kwh: float | None = None) -> dict[str, Any]:
    """The Chinchilla-optimal model size and token count for a compute budget, and what spending
    that budget on the hardware costs in time, energy, money and CO2."""
    if compute_flops <= 0:
        raise CandorError(f"--compute-budget must be a positive number of FLOPs, got {compute_flops}")
    opt = compute_optimal(compute_flops)
    hw = hardware(hardware_name)
    precision = "bf16"
    peak = hw.peak_flops[precision]
    use_mfu = mfu if mfu is not None else GPU_ASSUMED_MFU
    seconds = compute_flops / (peak * use_mfu)
    price = hw.price_per_hour if price_per_hour is None else price_per_hour
    grid = DEFAULT_GRID_KG_PER_KWH if grid_kg_co2_per_kwh is None else grid_kg_co2_per_kwh
    energy = hw.watts * seconds / 3.6e6
    return {
        "compute_flops": compute_flops, "params": opt["params"], "tokens": opt["tokens"],
        "rule": f"Chinchilla (Hoffmann et al. 2022): C = 6 N D and D = {CHINCHILLA_TOKENS_PER_PARAM:g} N at the optimum",
        "hardware": hw.name, "hardware_source": hw.source, "precision": precision, "peak_flops_per_s": peak,
        "mfu": use_mfu, "mfu_method": "given" if mfu is not None else f"assumed {GPU_ASSUMED_MFU:.0%}",
        "flops": compute_flops, "seconds": seconds, "energy_kwh": energy, "price_per_hour": price, "currency": currency,
        "cost": seconds / 3600 * price, "grid_kg_co2_per_kwh": grid, "co2_kg": energy * grid,
        "peak_memory_bytes": _chinchilla_memory(opt["params"]),
    }


def _chinchilla_memory(params: float) -> int:
    """Weights, gradients and AdamW state of the optimal model (16 bytes per parameter);
    activations depend on batch and sequence and are not included."""
    return int(16 * params)

