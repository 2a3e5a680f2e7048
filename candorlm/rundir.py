"""The run directory's layout: one place for everything a run is and produced (see
docs/architecture.md). Reading and writing its files is the job of `candorlm.io`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from candorlm.config import RunConfig, read_toml, validate_config
from candorlm.errors import CandorError


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def ledger(self) -> Path:
        return self.path / "ledger.json"

    @property
    def evals(self) -> Path:
        return self.path / "evals"

    def read_config(self) -> RunConfig:
        if not self.config.is_file():
            raise CandorError(f"{self.path} is not a candorlm run directory (no config.toml)")
        return validate_config(read_toml(self.config), str(self.config))

    def exists(self) -> bool:
        return self.config.is_file()


def open_run(path: str | Path) -> RunDir:
    run = RunDir(Path(path))
    if not run.path.is_dir():
        raise CandorError(f"run directory not found: {run.path}")
    if not run.exists():
        raise CandorError(f"{run.path} is not a candorlm run directory (no config.toml)")
    return run


# What candorlm writes at a run directory's top (train, finetune, import, generate, eval, audit,
# explain, report); anything else there is someone else's.
RUN_ENTRIES = frozenset({
    "config.toml", "tokenizer.json", "source_tokenizer.json", "special_tokens_map.json", "model.safetensors",
    "checkpoints", "metrics.jsonl", "ledger.json", "evals", "task.json", "dp.json", "canaries.json",
    "SHA256SUMS", "explain", "report", "report.html", "report.json", "report.md",
})
# ... and what a task run or `serve` adds: a sentiment mix's NB-LR, a pinyin tagger's n-gram LM, the audit log
TASK_RUN_ENTRIES = frozenset({"nblr.safetensors", "nblr.json", "ngram.safetensors", "audit.jsonl"})


def foreign_entries(path: Path) -> list[str]:
    """The entries at a run directory's top that candorlm did not write there (hidden ones aside):
    what `--overwrite` would delete of someone else's."""
    from candorlm.io.manifest import MANIFEST_NAME, read_manifest

    listed: set[str] = set()
    if (path / MANIFEST_NAME).is_file():
        try:
            listed = {name.split("/", 1)[0] for name in read_manifest(path)}
        except CandorError:
            pass
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(".")
                  and p.name not in RUN_ENTRIES | TASK_RUN_ENTRIES | listed)


def looks_like_old_run(path: Path) -> bool:
    """A run directory written before candorlm marked its outputs: a config.toml that candorlm
    reads, weights (final or a checkpoint), and nothing at the top that candorlm does not write
    (hidden entries aside). The rule `--overwrite` uses for runs without a marker."""
    run = RunDir(path)
    if not (run.weights.is_file() or run.checkpoints.is_dir()):
        return False
    if any(p.name not in RUN_ENTRIES for p in path.iterdir() if not p.name.startswith(".")):
        return False
    try:
        run.read_config()
    except CandorError:
        return False
    return True
