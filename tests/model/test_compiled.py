"""The training forward with compiled blocks (model/compiled.py): the same losses as eager for a
few steps, checkpoints whose names are the eager model's, and everything other than a training
pass (evaluation, hooks) running the eager blocks.

Compiling costs seconds (inductor's C++ compiler), so one fixture trains both models once."""

import copy

import pytest
import torch

from candorlm.config import ModelConfig
from candorlm.model import DecoderLM, build_model, lm_loss
from candorlm.model.compiled import block_runner, compile_blocks, is_compiled, uncompile_blocks
from candorlm.model.hooks import hooks

STEPS = 4


def model() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=32))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    xs = [torch.randint(0, 97, (4, 32), generator=g) for _ in range(STEPS)]
    return [(x, (x + 1) % 97) for x in xs]  # learnable: the loss falls within a few steps


def train(m: DecoderLM, precision: torch.dtype | None) -> list[float]:
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    out = []
    for x, y in batches():
        with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
            loss = m(input_ids=x, targets=y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out


@pytest.fixture(scope="module")
def runs() -> dict:
    eager, compiled = model(), compile_blocks(model())
    return {"eager": (eager, train(eager, None), train(copy.deepcopy(model()), torch.bfloat16)),
            "compiled": (compiled, train(compiled, None), train(compile_blocks(model()), torch.bfloat16))}


@pytest.mark.slow  # compiles (tens of seconds on a cold inductor cache)
def test_compiled_training_gives_eager_losses(runs):
    _, eager, eager_bf16 = runs["eager"]
    _, compiled, compiled_bf16 = runs["compiled"]
    # fp32: the fused loops sum in another order, nothing more
    assert compiled == pytest.approx(eager, rel=1e-4)
    # bf16 autocast: inductor keeps fused intermediates in fp32 where eager rounds them to bf16
    assert compiled_bf16 == pytest.approx(eager_bf16, rel=2e-2)
    assert compiled[-1] < compiled[0]


@pytest.mark.slow
def test_checkpoint_of_a_compiled_model_loads_in_eager(runs):
    compiled = runs["compiled"][0]
    assert is_compiled(compiled)
    state = compiled.state_dict()
    assert list(state) == list(model().state_dict())  # no `_orig_mod.` or other prefixes
    eager = model()
    eager.load_state_dict(state)
    ids = batches()[0][0]
    with torch.no_grad():  # a pass without gradients runs the eager blocks: the same numbers exactly
        assert torch.equal(eager(ids), compiled(ids))


def test_only_training_passes_of_a_compiled_model_take_the_compiled_blocks():
    m = model()
    block = m.blocks[0]
    assert block_runner(m, block, cached=False) is block  # not compiled
    compile_blocks(m)
    assert block_runner(m, block, cached=False) is not block  # (nothing compiles until it is called)
    assert block_runner(m, block, cached=True) is block  # a KV cache: generation
    with torch.no_grad():
        assert block_runner(m, block, cached=False) is block  # evaluation
    with hooks(m, {"blocks.0.hook_resid_post": lambda x, hook: None}):
        assert block_runner(m, block, cached=False) is block  # someone watches: eager
    handle = block.mlp.up_proj.register_forward_hook(lambda *a: None)
    assert block_runner(m, block, cached=False) is block
    handle.remove()
    assert block_runner(m, m.blocks[1], cached=False) is not m.blocks[1]
    uncompile_blocks(m)
    assert not is_compiled(m) and block_runner(m, block, cached=False) is block


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["encoder", "seq2seq"])
def test_other_families_train_compiled_as_eager(arch):
    def build():
        torch.manual_seed(0)
        return build_model(ModelConfig(arch=arch, vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=32))

    def losses(m):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        out = []
        for x, y in batches()[:2]:
            mask = torch.ones_like(x)
            logits = m(x, mask) if arch == "encoder" else m(x, y, mask)
            loss = lm_loss(logits, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            out.append(loss.item())
        return out

    compiled = compile_blocks(build())
    if arch == "seq2seq":
        assert is_compiled(compiled.encoder)  # the encoder's blocks too
    assert losses(compiled) == pytest.approx(losses(build()), rel=1e-4)


def test_compile_blocks_needs_blocks():
    with pytest.raises(TypeError, match="no `blocks`"):
        compile_blocks(torch.nn.Linear(2, 2))
