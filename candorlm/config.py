"""Validated configuration: model shape, data, training; presets by size; overrides.

A run is configured in three layers, each overriding the one before: a preset
(`candorlm/presets/NAME.toml`), an optional TOML file, then `section.key=value` overrides.
Unknown keys and bad values are `CandorError`s that list what is valid.
"""

from __future__ import annotations

import math
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from candorlm.errors import CandorError
from candorlm.io.sealed import read_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w


class _Strict(BaseModel):
    # Every number finite: an inf or nan learning rate, decay or clip only shows up as NaN weights later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    """The transformer's shape. Derived values (head_dim, ff_dim) are computed, not stored."""

    # decoder: GPT (causal LM); encoder: BERT (masked LM); seq2seq: encoder-decoder (the original Transformer)
    arch: Literal["decoder", "encoder", "seq2seq"] = "decoder"
    vocab_size: int = 0  # 0: taken from the tokenizer when training starts
    n_encoder_layers: int | None = None  # seq2seq only; None: n_layers
    src_vocab_size: int = 0  # seq2seq only; 0: the source shares the target's vocabulary and embeddings
    cross_attention_rope: bool = True  # seq2seq only: rotary positions in cross-attention (target vs source offset)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: n_heads (plain multi-head attention); fewer: GQA
    d_ff: int | None = None  # None: derived from d_model and the MLP kind
    mlp: Literal["swiglu", "gelu", "relu", "relu2"] = "swiglu"  # relu2: ReLU squared (modded-nanoGPT)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before the rotary positions
    zero_init_out: bool = False  # residual output projections (o_proj, down_proj) start at zero
    # Value embeddings (modded-nanoGPT): this many extra token-embedding tables whose rows are mixed
    # into the attention values; table j feeds layer j and layer n_layers-1-j (model/value_embeds.py)
    value_embeds: int = 0
    logit_softcap: float = 0.0  # > 0: logits = c * tanh(logits / c) (Gemma 2, modded-nanoGPT); 0: off
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02

    @model_validator(mode="after")
    def _check_shape(self) -> "ModelConfig":
        positive = {"d_model": self.d_model, "n_layers": self.n_layers, "n_heads": self.n_heads,
                    "max_seq_len": self.max_seq_len}
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"model.{key} must be positive, got {value}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head dimension d_model/n_heads = {self.head_dim} must be even for rotary embeddings")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"model.n_heads ({self.n_heads}) must be a multiple of model.n_kv_heads ({self.kv_heads})")
        if self.n_encoder_layers is not None and self.n_encoder_layers <= 0:
            raise ValueError(f"model.n_encoder_layers must be positive, got {self.n_encoder_layers}")
        if not 0 <= self.value_embeds <= self.n_layers:
            raise ValueError(f"model.value_embeds must be between 0 and model.n_layers ({self.n_layers}), "
                             f"got {self.value_embeds}")
        if self.logit_softcap < 0:
            raise ValueError(f"model.logit_softcap must be 0 (off) or positive, got {self.logit_softcap}")
        if self.logit_softcap and self.arch != "decoder":
            raise ValueError(f"model.logit_softcap is for decoders (model.arch = 'decoder'), not '{self.arch}'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            # Llama's rule: 2/3 of 4*d keeps the gated MLP's parameter count equal to a plain one's,
            # rounded up to a multiple of 64 for efficient matmuls.
            hidden = int(2 * 4 * self.d_model / 3)
            return 64 * ((hidden + 63) // 64)
        return 4 * self.d_model


class DataConfig(_Strict):
    path: str = ""  # a directory written by `candorlm prepare`


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds in a duration: `90s`, `5m`, `1h`, `1h30m`, or a plain number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)([smh]?)", text)
        if not text or "".join(n + u for n, u in parts) != text or (len(parts) > 1 and not all(u for _, u in parts)):
            raise ValueError(f"a duration is a number with s, m or h (90s, 5m, 1h, 1h30m), got {value!r}")
        seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


class TrainConfig(_Strict):
    max_steps: int = 1000
    # A time budget (90s, 5m, 1h): train until it is spent, the schedule sized to it
    # (candorlm/training/budget.py); max_steps and epochs are then ignored. None: train for max_steps.
    time: str | float | None = None
    epochs: float | None = None  # when set, max_steps is derived from the number of training windows
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1
    seq_len: int | None = None  # None: model.max_seq_len
    # muon: torch.optim.Muon for the blocks' matrices, AdamW for embeddings, head and gains (training/optim.py)
    optimizer: Literal["adamw", "adam", "muon"] = "adamw"
    lr: float = 3e-3
    muon_lr: float | None = None  # Muon's learning rate (RMS-matched to AdamW's); None: lr
    # wsd: warmup, stable, then a linear decay over the last 30% (issue 16: it won the interleaved
    # time-to-quality bench, docs/training.md); cosine: the decay from the first step after warmup
    schedule: Literal["cosine", "wsd"] = "wsd"
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    # Ramps (training/ramp.py), as shares of the run (of its time with train.time, else of its steps):
    # the batch grows from a quarter of batch_size, the windows from a quarter of seq_len. 0: off.
    batch_warmup: float = 0.0
    seq_warmup: float = 0.0
    align_windows: bool = False  # training windows start at document starts (shards.AlignedWindows)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool | None = None  # None: where it pays (training/compile_policy.py): CUDA on; CPU by the run's length
    strategy: Literal["ddp", "fsdp"] = "ddp"  # with several processes (torchrun): replicate, or shard (FSDP2)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None  # None: physical cores
    seed: int = 1337
    log_every: int = 10
    eval_every: int = 250
    eval_tokens: int = 262144  # validation tokens per evaluation; 0: the whole split
    save_every: int = 500
    keep_checkpoints: int = 2
    keep_best_checkpoint: bool = True  # also keep the checkpoint with the lowest validation loss
    dp_epsilon: float | None = None  # DP-SGD: train with this privacy budget (candorlm/privacy/dp.py)
    dp_delta: float | None = None  # None: min(1e-5, 1/(10 * training windows))
    dp_max_grad_norm: float = 1.0  # per-window gradient clipping bound

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        for key in ("max_steps", "batch_size", "grad_accum", "log_every", "eval_every", "save_every"):
            if getattr(self, key) <= 0:
                raise ValueError(f"train.{key} must be positive, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}")
        if self.time is not None:
            try:
                parse_duration(self.time)
            except ValueError as exc:
                raise ValueError(f"train.time: {exc}") from None
            if self.dp_epsilon is not None:
                raise ValueError("train.time and train.dp_epsilon do not go together: DP-SGD's privacy accounting "
                                 "needs the number of steps before training starts; give max_steps instead")
        for key in ("batch_warmup", "seq_warmup"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"train.{key} must be a share of the run between 0 and 1, got {getattr(self, key)}")
        if self.keep_checkpoints < 1:
            raise ValueError("train.keep_checkpoints must be at least 1")
        if self.dp_epsilon is not None and self.dp_epsilon <= 0:
            raise ValueError(f"train.dp_epsilon must be positive, got {self.dp_epsilon}")
        if self.dp_delta is not None and not 0 < self.dp_delta < 1:
            raise ValueError(f"train.dp_delta must be between 0 and 1, got {self.dp_delta}")
        if self.dp_max_grad_norm <= 0:
            raise ValueError(f"train.dp_max_grad_norm must be positive, got {self.dp_max_grad_norm}")
        return self


class LedgerConfig(_Strict):
    """What the run's ledger.json counts with (candorlm/ledger): prices, grid, MFU denominator."""

    price_per_hour: float | None = None  # per device-hour; None: a stated default (ledger/meter.py)
    currency: str = "USD"
    grid_kg_co2_per_kwh: float | None = None  # None: the world average, stated in the ledger
    peak_tflops: float | None = None  # MFU denominator; None: the measured matmul peak of this device
    energy: Literal["auto", "codecarbon", "rapl", "estimate"] = "auto"


class RunConfig(_Strict):
    """Everything that produced a run; written to `RUN/config.toml`."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    ledger: LedgerConfig = LedgerConfig()

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.max_seq_len

    def check_seq_len(self) -> None:
        if self.seq_len > self.model.max_seq_len:
            raise CandorError(
                f"train.seq_len ({self.seq_len}) is above the model's maximum sequence length "
                f"model.max_seq_len ({self.model.max_seq_len}). Lower train.seq_len or raise model.max_seq_len."
            )

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("candorlm.presets").iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise CandorError(f"unknown preset '{name}'. Valid presets: {', '.join(preset_names())}.")
    text = resources.files("candorlm.presets").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CandorError(f"config file not found: {path}")
    try:
        return tomllib.loads(read_text(path))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CandorError(f"{path} is not valid TOML: {exc}") from None


def parse_override(item: str) -> dict[str, Any]:
    """`train.lr=1e-3` -> {"train": {"lr": 0.001}}; the value is read as TOML, else as a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise CandorError(f"override '{item}' is not of the form section.key=value (for example train.lr=1e-3)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    tree: dict[str, Any] = {}
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(*layers: dict[str, Any], source: str = "config") -> RunConfig:
    """Merge layers (later wins) and validate; errors name the bad key and list the valid ones."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, layer)
    return validate_config(merged, source)


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise CandorError(_explain(exc, source)) from None


def _explain(exc: ValidationError, source: str) -> str:
    sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "ledger": LedgerConfig}
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parent = str(err["loc"][0]) if len(err["loc"]) > 1 else None
            if parent in sections:
                valid = ", ".join(sections[parent].model_fields)
                lines.append(f"unknown config key '{loc}'. Valid keys in [{parent}]: {valid}.")
            else:
                lines.append(f"unknown config section '{loc}'. Valid sections: {', '.join(sections)}.")
        else:
            lines.append(f"{loc or 'config'}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid {source}:\n  " + "\n  ".join(lines)


def resolve(preset: str | None = None, config_file: str | Path | None = None,
            overrides: list[str] | None = None, **sections: dict[str, Any]) -> RunConfig:
    """The run's config from a preset, a TOML file, `section.key=value` overrides and keyword sections."""
    layers: list[dict[str, Any]] = []
    if preset:
        layers.append(load_preset(preset))
    if config_file:
        layers.append(read_toml(config_file))
    layers.extend(parse_override(item) for item in overrides or [])
    layers.append({k: v for k, v in sections.items() if v})
    return build_config(*layers, source=str(config_file) if config_file else "config")
