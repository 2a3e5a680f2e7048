"""The tasks by name. Each task module provides the same functions:

    default_arch                          the architecture a from-scratch run uses
    prepare(base, data, seed, **options)  -> Prepared (model, tokenizers, encoded train/dev examples)
    loss(model, batch, device, prepared)  -> the training loss of a batch of examples
    dev_metrics(model, prepared, device)  -> {"score": ..., ...} (higher is better; picks the epoch)
    evaluate(run, data, **options)        -> the test metrics and baselines, written to RUN/evals/<task>.json
    eval_options(options)                 -> the evaluation options among the fine-tuning options
    example_length(example)               -> optional: an example's tokens (training batches then group
                                             examples of similar length, finetune.length_batches), or
                                             None for an example whose set is not grouped (translate's
                                             seq2seq keeps the plain permutation)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from candorlm.errors import CandorError

TASKS = ("sentiment", "translate", "qa", "chat")


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise CandorError(f"unknown task '{name}'. Valid tasks: {', '.join(TASKS)}.")
    return importlib.import_module(f"candorlm.tasks.{name}")
