"""Applications of the three model families, each measured against an honest baseline:
sentiment (classification), translate (sequence to sequence), qa (generative question
answering), chat (dialogue). `finetune` is the one entry point; `evaluate_task` re-scores a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from candorlm import keep_functions
from candorlm.tasks.registry import TASKS, get_task


def finetune(run: str | Path | None, **kwargs: Any) -> dict[str, Any]:
    """See `candorlm.tasks.finetune.finetune`."""
    from candorlm.tasks.finetune import finetune as _finetune

    return _finetune(run, **kwargs)


def evaluate_task(run: str | Path, task: str, data: str | None = None, **options: Any) -> dict[str, Any]:
    """Score a fine-tuned run on its task's test split; writes `RUN/evals/<task>.json`. Says first
    how long that will take, at the pace its dev evaluations kept during fine-tuning."""
    import logging

    from candorlm.io.sealedtree import refuse_plain_output_in_sealed_tree
    from candorlm.tasks.pace import eval_forecast

    refuse_plain_output_in_sealed_tree(run, f"evals/{task}.json")
    logging.getLogger("candorlm").info("%s", eval_forecast(run, options.get("limit")))
    return get_task(task).evaluate(run, data=data, **options)


def load_task(run: str | Path, verify: bool | None = None) -> Any:
    """See `candorlm.tasks.predict.load_task`."""
    from candorlm.tasks.predict import load_task as _load_task

    return _load_task(run, verify=verify)


__all__ = ["TASKS", "evaluate_task", "finetune", "get_task", "load_task"]

keep_functions(__name__, ["finetune"])  # candorlm.tasks.finetune is this function, whatever is imported
