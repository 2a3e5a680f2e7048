"""A no-gradient forward pass after an optimizer step sees the stepped weights (model/fused.py keeps
a concatenated q/k/v weight while the weights' version counters are unchanged; the fused AdamW
kernel does not bump them by itself)."""

import torch

from candorlm.config import resolve
from candorlm.model import build_model
from candorlm.training.optim import build_optimizers


def test_evaluation_after_a_fused_adamw_step_uses_the_new_weights():
    torch.manual_seed(0)
    cfg = resolve("tiny", model={"vocab_size": 64, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 16})
    model = build_model(cfg.model)
    (optimizer,) = build_optimizers(model, cfg)
    x = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        model(input_ids=x)  # keeps the fused q/k/v weight
    for _ in range(2):
        loss = model(input_ids=x, targets=x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        kept = model(input_ids=x)
        for module in model.modules():
            module.__dict__.pop("_fused_weights", None)
        fresh = model(input_ids=x)
    assert torch.equal(kept, fresh)
