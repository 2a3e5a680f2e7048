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
