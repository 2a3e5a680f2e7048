"""Weights saved by earlier candorlm versions load into today's model classes, unchanged.

The fixture (tests/model/fixtures/, written by make_state_dicts.py on the commit named in
state_dicts.json, before the Trunk class) holds five tiny models as a run's model.safetensors
holds them, their logits on fixed inputs, and their parameter names in order: an optimizer
state indexes parameters by that order, and an FSDP checkpoint names them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, load_model

from candorlm.config import ModelConfig
from candorlm.model import build_model
from candorlm.model.hooks import hook_points
from .fixtures.make_state_dicts import CONFIGS, inputs

FIXTURES = Path(__file__).parent / "fixtures"
META = json.loads((FIXTURES / "state_dicts.json").read_text())
EXPECTED = load_file(str(FIXTURES / "expected_logits.safetensors"))
NEW_ATTENTION_POINTS = {"hook_q", "hook_k", "hook_v", "hook_attn_scores"}


def saved_model(name: str) -> torch.nn.Module:
    model = build_model(ModelConfig(**CONFIGS[name])).eval()
    load_model(model, str(FIXTURES / f"{name}.safetensors"), strict=True)  # raises on any missing or extra key
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_old_weights_load_strictly_and_give_the_same_logits(name):
    model = saved_model(name)
    with torch.no_grad():
        assert torch.allclose(model(**inputs(name)), EXPECTED[f"{name}.logits"], atol=1e-5, rtol=0)
        if name.startswith("decoder"):
            assert torch.allclose(model(inputs(name)["input_ids"]), EXPECTED[f"{name}.logits_unmasked"],
                                  atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_names_order_and_counts_are_unchanged(name):
    old = META["models"][name]
    model = build_model(ModelConfig(**CONFIGS[name]))
    assert [n for n, _ in model.named_parameters()] == old["parameters"]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == old["state_dict"]
    assert model.num_params() == old["num_params"]
    assert model.num_params(non_embedding=True) == old["num_params_non_embedding"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hook_points_only_grow_by_the_attention_points(name):
    old = set(META["models"][name]["hook_points"])
    new = set(hook_points(build_model(ModelConfig(**CONFIGS[name]))))
    assert old <= new
    added = new - old
    assert added and all(n.rsplit(".", 1)[1] in NEW_ATTENTION_POINTS for n in added)
    attention_modules = {n.rsplit(".", 1)[0] for n in old if n.endswith("hook_pattern")}
    assert added == {f"{m}.{p}" for m in attention_modules for p in NEW_ATTENTION_POINTS}


@pytest.mark.skipif(torch.__version__ != META["torch"], reason="torch's random streams may differ between versions")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_same_seed_initialises_the_same_weights(name):
    """Modules are built and initialised in the old order, so a seeded run starts where it did."""
    torch.manual_seed(0)
    fresh = build_model(ModelConfig(**CONFIGS[name]))
    saved = saved_model(name)
    for (key, a), b in zip(fresh.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(a, b), key
