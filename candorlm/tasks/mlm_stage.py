"""A masked-LM stage before a task's training: the encoder first learns the task's own texts.

Pretraining on news does little for product reviews; the reviews of the training split are text
too. `finetune --pretrain-mlm EPOCHS` runs that many passes of BERT's masked LM
(`objectives.mask_tokens`: 15% of the tokens, 80/10/10) over the training split's texts (their
labels unused; the dev and test splits never seen by it, the dev split's texts only scored, with
fixed masks, to keep the best epoch), then the task's training starts from those weights with a
fresh optimizer and schedule. This is task-adaptive pretraining (Gururangan et al. 2020, "Don't
Stop Pretraining"), on an encoder from scratch or from a pretrained run.

A task offers it by providing `mlm_rows(prepared) -> (train rows, dev rows)`: the token ids of
each example's text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from candorlm.beam import pad_training_batch
from candorlm.errors import CandorError
from candorlm.progress import batched
from candorlm.tokenizer import Tokenizer
from candorlm.training.objectives import IGNORE, mask_tokens, seeded_generator

_DEV_SEED = 20240602  # dev masks: the same positions at every epoch, so the epochs compare


@dataclass
class MaskedLM:
    """The stage as the fine-tuning loop sees a task: `loss`, `dev_metrics`, `example_length`,
    and its own prepared examples (`train`, `dev`: lists of token ids)."""

    tokenizer: Tokenizer
    train: list[list[int]]
    dev: list[list[int]]
    rate: float = 0.15
    max_seq_len: int | None = None  # a training batch's width limit (beam.pad_training_batch)
    info: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def example_length(row: list[int]) -> int:
        return len(row)

    def masked_loss(self, model: nn.Module, rows: Sequence[list[int]], device: torch.device,
                    generator: torch.Generator, limit: int | None = None) -> torch.Tensor:
        """With `limit`, a training batch (beam.pad_training_batch): padding is never masked."""
        ids, mask = pad_training_batch(rows, self.tokenizer.pad_id, limit)
        inputs, targets = mask_tokens(ids, self.tokenizer, generator, self.rate)
        backbone = model.backbone
        hidden = backbone.hidden_states(inputs.to(device), mask.to(device))
        chosen = (targets != IGNORE).to(device)  # the LM head only where there is a target
        return F.cross_entropy(backbone.lm_head(hidden[chosen]).float(), targets.to(device)[chosen])

    def loss(self, model: nn.Module, batch: Sequence[list[int]], device: torch.device, prepared: Any) -> torch.Tensor:
        # the global generator, seeded by finetune: a repeated run masks the same tokens
        return self.masked_loss(model, batch, device, torch.default_generator, self.max_seq_len)

    @torch.no_grad()
    def dev_metrics(self, model: nn.Module, prepared: Any, device: torch.device) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total, n = 0.0, 0
        try:
            for i, rows in enumerate(batched(self.dev, 64)):
                total += self.masked_loss(model, rows, device, seeded_generator(_DEV_SEED, i)).item() * len(rows)
                n += len(rows)
        finally:
            model.train(was_training)
        loss = total / max(1, n)
        return {"score": -loss, "mlm_loss": round(loss, 4)}


def masked_lm_stage(spec: Any, prepared: Any, arch: str) -> MaskedLM:
    """The stage for a task's prepared examples; a CandorError where it cannot run."""
    if arch != "encoder":
        raise CandorError(f"--pretrain-mlm trains a masked LM, which needs an encoder; this model is a {arch}")
    if not hasattr(spec, "mlm_rows"):
        raise CandorError(f"--pretrain-mlm is not offered by the {spec.__name__.rsplit('.', 1)[-1]} task")
    tok = prepared.tokenizer
    if tok.mask_id is None:
        raise CandorError("--pretrain-mlm needs a tokenizer with <|mask|> (one trained by candorlm)")
    train, dev = spec.mlm_rows(prepared)
    return MaskedLM(tok, train, dev, max_seq_len=prepared.model_config.max_seq_len)


def stage_steps(epochs: float, examples: int, batch_size: int) -> int:
    if epochs < 0:
        raise CandorError(f"--pretrain-mlm must be >= 0 epochs, got {epochs}")
    return max(1, math.ceil(epochs * math.ceil(examples / batch_size)))
