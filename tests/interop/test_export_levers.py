"""Levers with no Llama equivalent (issue 16): `export_hf` refuses them with one line, writing nothing."""

import pytest
import torch

from candorlm.checkpoint.weights import save_weights
from candorlm.config import RunConfig, resolve
from candorlm.errors import CandorError
from candorlm.interop.hf import export_hf
from candorlm.io.files import atomic_write_text
from candorlm.io.manifest import write_manifest
from candorlm.model import DecoderLM
from candorlm.rundir import RunDir
from candorlm.tokenizer import Tokenizer


@pytest.mark.parametrize("keys, named", [({"value_embeds": 1}, "value_embeds"), ({"logit_softcap": 15.0}, "logit_softcap")])
def test_export_refuses_a_lever_llama_cannot_express(tmp_path, data_dir, keys, named):
    tokenizer = Tokenizer.load(data_dir / "tokenizer.json")
    cfg = resolve(model=dict(d_model=32, n_layers=2, n_heads=2, max_seq_len=32, vocab_size=tokenizer.vocab_size,
                             **keys)).model
    torch.manual_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    save_weights(DecoderLM(cfg), RunDir(run).weights)
    tokenizer.save(RunDir(run).tokenizer)
    atomic_write_text(RunDir(run).config, RunConfig(model=cfg).to_toml())
    write_manifest(run)
    with pytest.raises(CandorError, match=f"model.{named}.*LlamaForCausalLM") as err:
        export_hf(run, tmp_path / "hf")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "hf" / "model.safetensors").exists()
