"""What a fine-tuning starts from, and how a fine-tuned run is loaded back.

A fine-tuned run directory is a run directory like any other, plus `task.json`:

    config.toml          the backbone's [model] (arch included), [data] (the task data), [train] (fine-tuning settings)
    tokenizer.json       the tokenizer (for seq2seq with separate vocabularies: the target side)
    source_tokenizer.json   seq2seq with separate vocabularies only: the source side
    model.safetensors    the task model's weights (a sentiment classifier: backbone.* and head.*)
    task.json            task name, labels, the run it started from, split sizes, options
    metrics.jsonl        training loss per logged step, dev metrics per epoch
    evals/<task>.json    test metrics next to baselines (written by finetune and by `candorlm eval`)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from candorlm.checkpoint.run import LoadedRun, load_run
from candorlm.config import ModelConfig, RunConfig, build_config, parse_override, resolve
from candorlm.errors import CandorError
from candorlm.model import build_model
from candorlm.rundir import RunDir
from candorlm.tokenizer import Tokenizer


@dataclass
class Base:
    """A starting point: a config, tokenizers, and pretrained weights (None: random init)."""

    config: RunConfig
    tokenizer: Tokenizer | None  # None: from scratch with no run; the task trains one on its data
    source_tokenizer: Tokenizer | None = None
    weights: Path | None = None
    run: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    loaded: LoadedRun | None = field(default=None, repr=False)

    @property
    def arch(self) -> str:
        return self.config.model.arch

    def tokenizer_file(self) -> str:
        return str(self.run / "tokenizer.json") if self.run else "the task's tokenizer"

    def build(self) -> nn.Module:
        """The backbone, with the pretrained weights when there are any (in training mode, on the CPU)."""
        if self.weights is None or self.loaded is None:
            return build_model(self.config.model)
        return self.loaded.build_model("cpu", self.config.model).train()


def load_base(run: str | Path | None, *, scratch: bool = False, preset: str = "tiny", arch: str | None = None,
              overrides: list[str] | None = None, verify: bool | None = None) -> Base:
    """The run to fine-tune (its weights; with `scratch`, only its config and tokenizer), or,
    with no run, a preset of `arch` whose tokenizer the task trains on its own data. The run is
    opened by `load_run` (checked against its manifest unless verify=False)."""
    if run is None:
        cfg = resolve(preset, None, overrides, model={"arch": arch} if arch else {})
        return Base(cfg, None)
    loaded = load_run(run, verify=verify)
    config, info = loaded.config, loaded.info
    if info.get("task") == "sentiment":
        raise CandorError(f"{loaded.path} is a sentiment classifier; fine-tune from the pretrained run it started from "
                          f"({info.get('base_run') or 'see its task.json'})")
    weights = loaded.weights
    if weights is None and not scratch:
        raise CandorError(f"{loaded.path} has no weights yet (no model.safetensors, no checkpoint); "
                          f"train it first, or pass --scratch to use only its config and tokenizer")
    if overrides:
        config = build_config(config.model_dump(), *(parse_override(o) for o in overrides), source=str(loaded.run.config))
    return Base(config, loaded.tokenizer, loaded.source_tokenizer, None if scratch else weights, loaded.path, info,
                loaded)


def require_tokens(tokenizer: Tokenizer, where: str, roles: tuple[str, ...], task: str) -> None:
    """A CandorError naming the tokenizer file when it lacks the special tokens a task needs."""
    missing = [r for r in roles if tokenizer.ids.get(r) is None]
    if missing:
        names = ", ".join(f"<|{r}|>" for r in missing)
        raise CandorError(f"{where}: the tokenizer lacks {names}, which the {task} task needs. "
                          f"Start from a run whose tokenizer was trained by candorlm (it reserves them), "
                          f"or from scratch (omit the run).")


def load_task_run(run: str | Path, verify: bool | None = None
                  ) -> tuple[RunDir, RunConfig, dict[str, Any], nn.Module, Tokenizer, Tokenizer | None]:
    """A fine-tuned run: (run dir, config, task.json, model in eval mode on the CPU, tokenizer, source
    tokenizer), opened by `load_run` (checked against its manifest unless verify=False)."""
    loaded = load_run(run, verify=verify)
    if loaded.weights is None or not loaded.weights.is_file():
        raise CandorError(f"{loaded.path} has no model.safetensors")
    return loaded.run, loaded.config, loaded.info, loaded.build_model("cpu"), loaded.tokenizer, loaded.source_tokenizer


@dataclass
class Prepared:
    """A task ready to train: its model, tokenizers, encoded examples, and what goes into task.json."""

    model: nn.Module
    model_config: ModelConfig
    tokenizer: Tokenizer
    source_tokenizer: Tokenizer | None
    train: list[Any]
    dev: list[Any]
    info: dict[str, Any] = field(default_factory=dict)
    # the task's records by split: for a task whose `finish` fits something on the texts themselves
    # (sentiment --ensemble nblr), and the test split's check against the pretraining text
    # (tasks/overlap.py); not written into the run
    records: dict[str, list[Any]] = field(default_factory=dict, repr=False)


def eval_path(run: RunDir | Path, task: str) -> Path:
    return Path(getattr(run, "path", run)) / "evals" / f"{task}.json"
