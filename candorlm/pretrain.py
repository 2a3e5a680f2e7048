"""`candorlm.train`: pretraining with everything attached.

The training loop (candorlm/training) knows nothing of the ledger or of privacy; this is where
they attach: the ledger's meter (ledger.json: time, energy, money, MFU) always, and DP-SGD
(candorlm/privacy/dp.py) when train.dp_epsilon is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from candorlm.config import RunConfig, build_config, parse_override, resolve
from candorlm.ledger.training import LedgerMeter
from candorlm.training.trainer import Trainer, TrainResult

__all__ = ["train", "TrainResult"]


def attach_features(trainer: Trainer) -> Trainer:
    """Attach the ledger's meter, and DP-SGD when the config asks for it, to `trainer`."""
    if trainer.config.train.dp_epsilon is not None:  # DP-SGD, an isolated path: see candorlm/privacy/dp.py
        from candorlm.privacy.dp import attach

        attach(trainer)
    trainer.callbacks.append(LedgerMeter(trainer.config, trainer.run.path, device=trainer.device,
                                         precision=trainer.precision, threads=trainer.threads,
                                         n_params=trainer.model.num_params(), resumed=trainer.resume,
                                         node_leader=trainer.world.local_rank == 0,
                                         extra=trainer.ledger_figures))
    return trainer


def train(out: str | Path, *, data: str | Path | None = None, preset: str | None = None,
          config: RunConfig | str | Path | None = None, overrides: list[str] | None = None,
          model: dict[str, Any] | None = None, resume: bool = False, overwrite: bool = False,
          time: str | None = None, **train_settings: Any) -> TrainResult:
    """Train a model and write the run directory `out`.

    The config is a preset, then a TOML file (or a ready RunConfig), then `section.key=value`
    overrides, then `model` and `train_settings` (keys of [model] and [train]):

        candorlm.train("runs/pd", data="data/pd", preset="tiny", max_steps=500)
        candorlm.train("runs/pd", data="data/pd", preset="tiny", time="5m")

    Args:
        out: Run directory to write.
        data: Data directory from `candorlm prepare`.
        preset: Model size preset.
        config: TOML file with [model], [data], [train] sections.
        overrides: Config values as section.key=value, e.g. train.lr=1e-3.
        model: Keys of [model], applied last.
        resume: Continue the run in `out` from its newest checkpoint.
        overwrite: Replace the run in `out`.
        time: Train for this long (90s, 5m, 1h) instead of a number of steps: the schedule is
            sized to the time, the learning rate decays by elapsed time, and the run stops when
            the time is up (default: the config's train.time, unset: train for max_steps).
        **train_settings: Keys of [train], applied last.
    """
    if time is not None:
        train_settings["time"] = time
    if isinstance(config, RunConfig):
        cfg = build_config(config.model_dump(), *(parse_override(o) for o in overrides or []),
                           {"model": model or {}, "train": train_settings})
    else:
        cfg = resolve(preset, config, overrides, model=model or {}, train=train_settings)
    if data is not None:
        cfg.data.path = str(data)
    return attach_features(Trainer(cfg, out, resume=resume, overwrite=overwrite)).fit()
