"""A no-gradient forward pass after the trainer's optimizer step sees the stepped weights (model/fused.py
keeps a concatenated q/k/v weight while the weights are unchanged; the fused AdamW kernel does not
bump the version counters by itself, so the trainer's optimizer does)."""

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
        model(input_ids=x, cache=model.make_cache(2, 8))  # a pass that keeps a fused q/k/v weight (in its cache)
    for _ in range(2):
        loss = model(input_ids=x, targets=x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    fresh = build_model(cfg.model)
    fresh.load_state_dict(model.state_dict())  # the stepped weights, nothing kept
    with torch.no_grad():
        cache, fresh_cache = model.make_cache(2, 8), fresh.make_cache(2, 8)
        assert torch.equal(model(input_ids=x), fresh(input_ids=x))
        assert torch.equal(model(input_ids=x, cache=cache), fresh(input_ids=x, cache=fresh_cache))
