"""candorlm against `transformers.LlamaForCausalLM` of the same shape, in one process, on this machine.

Training: tokens/s of a full optimizer step (forward, loss, backward, gradient clipping, fused
AdamW), batch 8 x 256 tokens of People's Daily, for the issue's shape (vocab 8192, d_model 256,
4 layers, 4 heads) and the `small` preset's shape (8 layers, same batch). candorlm runs its own
Trainer.train_step; transformers runs its standard `model(input_ids, labels=...)` loss with the
same optimizer, clipping and autocast. Each precision is compared like for like (fp32 with
fp32, bf16 autocast with bf16 autocast), and candorlm's default precision against transformers'
bf16 autocast.

Generation: a 32-token prompt, 256 new tokens, greedy, KV cache on, batch 1 and 8, fp32:
candorlm's `generate_ids` against `transformers`' `generate` with the same weights (the tokens
are checked to be identical). candorlm runs twice: its eager decode step (`compile=False`, what
a one-off generation gets) and the compiled one (`compile=True`; compiling happens in the
warm-up call and its time is printed on its own, since a process pays it once per shape). A
fourth contestant runs only the step's matmuls (each weight matrix read once per token): the
floor that bounds any fp32 step on this machine, and so the ratio a step without any overhead
would reach.

The two sides alternate, round after round, so that a noisy machine slows both alike; each
figure is the median over rounds, and the ratio is taken of the medians. MFU is printed against
the measured matmul peak in fp32 and in bf16 (candorlm.ledger.hardware). Never fails on time.

    .venv/bin/python bench/vs_transformers.py [--rounds 5] [--steps 3] [--skip-train] [--skip-generate]
        [--threads N] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

from _common import ROOT, cpu_setup, ensure_data

import torch

from candorlm.config import ModelConfig, resolve
from candorlm.device import autocast, resolve_precision
from candorlm.generate import SamplingConfig, generate_ids
from candorlm.interop.hf import _NAMES, _rename
from candorlm.ledger.flops import forward_flops_per_token, train_flops_per_token
from candorlm.model import DecoderLM
from candorlm.training.optim import build_optimizer
from candorlm.training.trainer import Trainer

SHAPES = {
    "issue (d256 L4 H4)": {"d_model": 256, "n_layers": 4, "n_heads": 4, "max_seq_len": 256},
    "small (d256 L8 H4)": {"d_model": 256, "n_layers": 8, "n_heads": 4, "max_seq_len": 512},
}
BATCH, SEQ = 8, 256


def hf_model(cfg: ModelConfig, ours: DecoderLM | None = None) -> torch.nn.Module:
    """LlamaForCausalLM of the same shape from a LlamaConfig (no download); our weights if given."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ff_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
        attn_implementation="sdpa", bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = transformers.LlamaForCausalLM(config)
    if ours is not None:
        state = {_rename(k, _NAMES): v for k, v in ours.state_dict().items()}
        model.load_state_dict(state, strict=False)
        if cfg.tie_embeddings:
            model.tie_weights()
    return model


class HFTrainer:
    """transformers' training step with candorlm's optimizer settings, clipping and autocast."""

    def __init__(self, trainer: Trainer, precision: str):
        torch.manual_seed(trainer.config.train.seed)
        self.model = hf_model(trainer.model.cfg).train()
        self.optimizer = build_optimizer(self.model, trainer.config)
        self.trainer, self.precision = trainer, precision

    def train_step(self) -> None:
        x, y = self.trainer.sampler.next_batch()
        with autocast(self.precision, self.trainer.device):
            # y is already x shifted by one: shift_labels tells transformers not to shift again.
            y = y.contiguous()
            loss = self.model(input_ids=x, labels=y, shift_labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.trainer.config.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def alternate(runs: dict[str, callable], rounds: int,
              warmup: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in turn, `rounds` times (the warm-up call's
    seconds go into `warmup`, when given)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, fn in runs.items():
        start = time.perf_counter()
        fn()  # warm-up: allocator, oneDNN kernel selection, compiling
        if warmup is not None:
            warmup[name] = time.perf_counter() - start
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def mfu_text(flops_per_s: float, peaks: dict[str, float]) -> str:
    return f"MFU {flops_per_s / peaks['fp32']:5.1%} of fp32 peak, {flops_per_s / peaks['bf16']:5.1%} of bf16 peak"


def bench_training(rounds: int, steps: int, peaks: dict[str, float]) -> None:
    data = ensure_data()
    default = resolve_precision("auto", torch.device("cpu"))
    print(f"\n== training step, batch {BATCH} x {SEQ}, People's Daily (8k BPE); candorlm default precision: {default}")
    for label, shape in SHAPES.items():
        results: dict[tuple[str, str], float] = {}
        flops = 0.0
        for precision in ("fp32", "bf16"):
            cfg = resolve("tiny", data={"path": str(data)}, model=shape,
                          train={"precision": precision, "batch_size": BATCH, "seq_len": SEQ})
            ours = Trainer(cfg, ROOT / "runs" / "bench-vs-hf", overwrite=True)
            theirs = HFTrainer(ours, precision)
            flops = train_flops_per_token(ours.model.cfg, SEQ)

            def run(t: object = ours) -> None:
                for _ in range(steps):
                    t.train_step()  # type: ignore[attr-defined]

            def run_hf(t: HFTrainer = theirs) -> None:
                for _ in range(steps):
                    t.train_step()

            times = alternate({"candorlm": run, "transformers": run_hf}, rounds)
            for name, ts in times.items():
                results[(name, precision)] = BATCH * SEQ * steps / statistics.median(ts)
            del ours, theirs
        print(f"\n{label}: {DecoderLM_params(shape):.1f}M parameters, {flops / 1e6:.1f} MFLOP per token (training)")
        print(f"  {'':<26}{'tokens/s':>10}   MFU")
        for precision in ("fp32", "bf16"):
            for name in ("candorlm", "transformers"):
                tps = results[(name, precision)]
                print(f"  {name + ' ' + precision:<26}{tps:>10,.0f}   {mfu_text(tps * flops, peaks)}")
        for precision in ("fp32", "bf16"):
            ratio = results[("candorlm", precision)] / results[("transformers", precision)]
            print(f"  ratio candorlm/transformers, {precision}: {ratio:.2f}x")
        ratio = results[("candorlm", default)] / results[("transformers", "bf16")]
        print(f"  ratio candorlm default ({default}) / transformers bf16 autocast: {ratio:.2f}x")


def DecoderLM_params(shape: dict) -> float:
    cfg = ModelConfig(vocab_size=8192, **shape)
    return DecoderLM(cfg).num_params() / 1e6


def bench_generation(rounds: int, peaks: dict[str, float], new_tokens: int = 256, prompt_len: int = 32,
                     batches: tuple[int, ...] = (1, 8)) -> None:
    cfg = ModelConfig(vocab_size=8192, **dict(SHAPES["issue (d256 L4 H4)"], max_seq_len=512))
    torch.manual_seed(0)
    ours = DecoderLM(cfg).eval()
    theirs = hf_model(cfg, ours).eval()
    flops = forward_flops_per_token(cfg, prompt_len + new_tokens // 2)  # mean context length
    print(f"\n== generation, issue shape, {ours.num_params() / 1e6:.1f}M parameters, fp32, prompt {prompt_len}, "
          f"{new_tokens} new tokens, greedy, KV cache")
    sampling = SamplingConfig(max_new_tokens=new_tokens, greedy=True)
    for batch in batches:
        prompts = torch.randint(10, cfg.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(batch))
        ids = prompts.tolist()
        out: dict[str, object] = {}

        def run() -> None:
            out["candorlm"] = generate_ids(ours, ids, sampling, compile=False)

        def run_compiled() -> None:
            out["compiled"] = generate_ids(ours, ids, sampling, compile=True)

        @torch.no_grad()
        def run_hf() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seq = theirs.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                      eos_token_id=None, pad_token_id=0, use_cache=True)
            out["transformers"] = seq[:, prompt_len:].tolist()

        matrices = [p for name, p in ours.named_parameters() if p.dim() == 2 and name != "tok_emb.weight"]
        matrices.append(ours.lm_head.weight)  # tied: the embedding once more, as the output layer

        @torch.inference_mode()
        def run_floor() -> None:
            # The step's matrices alone, each read once per token as any fp32 decoder must read
            # them: what neither side can go below without changing the arithmetic.
            x = torch.randn(batch, cfg.d_model)
            for _ in range(new_tokens):
                for w in matrices:
                    torch.nn.functional.linear(x if w.shape[1] == cfg.d_model else x.new_zeros(batch, w.shape[1]), w)

        warmup: dict[str, float] = {}
        times = alternate({"candorlm": run, "compiled": run_compiled, "transformers": run_hf, "floor": run_floor},
                          rounds, warmup)
        same = {name: out[name] == out["transformers"] for name in ("candorlm", "compiled")}
        tps = {name: batch * new_tokens / statistics.median(ts) for name, ts in times.items()}
        print(f"\nbatch {batch}:  (greedy tokens identical to transformers': eager step "
              f"{'yes' if same['candorlm'] else 'NO'}, compiled {'yes' if same['compiled'] else 'NO'})")
        labels = {"candorlm": "candorlm eager", "compiled": "candorlm compiled", "transformers": "transformers"}
        for name, label in labels.items():
            step_ms = 1e3 * batch / tps[name]
            print(f"  {label:<18}{tps[name]:>9,.0f} new tokens/s  {step_ms:6.2f} ms/step   {mfu_text(tps[name] * flops, peaks)}")
        for name in ("candorlm", "compiled"):
            print(f"  ratio {labels[name]}/transformers: {tps[name] / tps['transformers']:.2f}x")
        floor_ms = 1e3 * statistics.median(times["floor"]) / new_tokens
        print(f"  the matmuls alone (every weight matrix read once per step, nothing else): {floor_ms:.2f} ms/step; "
              f"transformers/that: {tps['floor'] / tps['transformers']:.2f}x, the most any fp32 step could reach")
        print(f"  first call of the compiled step (compiling + one generation): {warmup['compiled']:.1f} s; "
              f"a generation afterwards: {statistics.median(times['compiled']):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per comparison")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as the trainer sets them)")
    parser.add_argument("--batches", default="1,8", help="generation batch sizes, comma-separated")
    args = parser.parse_args()
    threads, peaks = cpu_setup(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {threads} threads; measured matmul "
          f"peak: fp32 {peaks['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s")
    if not args.skip_train:
        bench_training(args.rounds, args.steps, peaks)
    if not args.skip_generate:
        bench_generation(args.rounds, peaks, batches=tuple(int(b) for b in args.batches.split(",")))


if __name__ == "__main__":
    main()
