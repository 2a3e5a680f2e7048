"""The analytic FLOP counts agree with torch's FLOP counter on real forward and backward passes."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from candorlm.config import ModelConfig, resolve
from candorlm.generate import SamplingConfig, generate_ids
from candorlm.ledger.flops import forward_flops_per_token, generation_flops, train_flops_per_token
from candorlm.model import DecoderLM

VARIANTS = {
    "gqa-gelu-untied": {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "mlp": "gelu",
                        "tie_embeddings": False},
    "relu": {"d_model": 48, "n_layers": 3, "n_heads": 3, "mlp": "relu"},
}


def _config(name: str) -> ModelConfig:
    if name in VARIANTS:
        return ModelConfig(vocab_size=1000, max_seq_len=64, **VARIANTS[name])
    return resolve(name).model.model_copy(update={"vocab_size": 8192})


def _count(fn) -> int:
    # torch's counter knows SDPA's CUDA kernels but not the CPU flash kernel; the math backend
    # runs attention as counted batched matmuls.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["tiny", "small", "base", "large", *VARIANTS])
def test_analytic_flops_match_torch_flop_counter(name):
    cfg = _config(name)
    batch, seq = 2, 32
    # base and large (124M, 350M parameters) run on the meta device: the same code and shapes,
    # counted without the arithmetic, which would take minutes on 2 CPU cores.
    device = torch.device("meta" if name in ("base", "large") else "cpu")
    torch.manual_seed(0)
    with device:
        model = DecoderLM(cfg)
        x = torch.randint(0, cfg.vocab_size, (batch, seq))
    with torch.no_grad():
        measured_fwd = _count(lambda: model(x))
    measured_train = _count(lambda: model(x, targets=x).backward())
    tokens = batch * seq
    assert measured_fwd == pytest.approx(tokens * forward_flops_per_token(cfg, seq), rel=0.05)
    assert measured_train == pytest.approx(tokens * train_flops_per_token(cfg, seq), rel=0.05)


def test_generation_flops_match_the_counter():
    cfg = _config("gqa-gelu-untied")
    model = DecoderLM(cfg).eval()
    prompt, new = 10, 20
    measured = _count(lambda: generate_ids(model, [list(range(5, 5 + prompt))],
                                           SamplingConfig(max_new_tokens=new, greedy=True)))
    assert measured == pytest.approx(generation_flops(cfg, prompt, new), rel=0.05)


@pytest.mark.parametrize("arch,src_len", [("encoder", None), ("seq2seq", 32), ("seq2seq", 20)])
def test_encoder_and_seq2seq_flops_match_the_counter(arch, src_len):
    from candorlm.model import build_model

    cfg = ModelConfig(vocab_size=1000, max_seq_len=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, arch=arch,
                      **({"n_encoder_layers": 3} if arch == "seq2seq" else {}))
    torch.manual_seed(0)
    model = build_model(cfg)
    batch, seq = 2, 32
    y = torch.randint(0, cfg.vocab_size, (batch, seq))
    if arch == "encoder":
        inputs = {"input_ids": y}
    else:
        inputs = {"input_ids": torch.randint(0, cfg.vocab_size, (batch, src_len)), "decoder_input_ids": y}
    with torch.no_grad():
        measured_fwd = _count(lambda: model(**inputs))
    measured_train = _count(lambda: torch.nn.functional.cross_entropy(
        model(**inputs).reshape(-1, cfg.vocab_size), y.reshape(-1)).backward())
    tokens = batch * seq
    assert measured_fwd == pytest.approx(tokens * forward_flops_per_token(cfg, seq, src_len), rel=0.05)
    assert measured_train == pytest.approx(tokens * train_flops_per_token(cfg, seq, src_len), rel=0.05)
