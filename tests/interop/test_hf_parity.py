"""Our decoder is Llama: exported, transformers computes the same logits and greedy tokens."""

import pytest
import torch

from candorlm.checkpoint.weights import save_weights
from candorlm.config import RunConfig
from candorlm.generate import SamplingConfig, generate_ids
from candorlm.interop.hf import export_hf, import_hf
from candorlm.io.files import atomic_write_text
from candorlm.io.manifest import write_manifest
from candorlm.lm import load
from candorlm.model import DecoderLM
from candorlm.rundir import RunDir

transformers = pytest.importorskip("transformers", reason="the parity test needs transformers (pip install -e .[test])")


@pytest.fixture(scope="module", params=[{}, {"n_kv_heads": 2, "tie_embeddings": False}], ids=["mha-tied", "gqa-untied"])
def exported(request, tmp_path_factory, trained_run):
    """A trained run (tied, MHA) and a randomly initialised GQA/untied model, both exported."""
    if not request.param:
        run = trained_run
    else:
        torch.manual_seed(0)
        base = load(trained_run)
        cfg = base.model.cfg.model_copy(update=request.param)
        model = DecoderLM(cfg)
        run = tmp_path_factory.mktemp("gqa") / "run"
        run.mkdir()
        save_weights(model, RunDir(run).weights)
        base.tokenizer.save(RunDir(run).tokenizer)
        atomic_write_text(RunDir(run).config, RunConfig(model=cfg).to_toml())
        write_manifest(run)  # a run made by hand: loading checks its manifest
    out = tmp_path_factory.mktemp("hf") / "export"
    export_hf(run, out)
    return run, out


def test_transformers_logits_match(exported):
    run, out = exported
    ours = load(run, device="cpu").model
    theirs = transformers.LlamaForCausalLM.from_pretrained(out, local_files_only=True, torch_dtype=torch.float32).eval()
    x = torch.randint(0, ours.cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(x) - theirs(x).logits).abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_greedy_generation_is_token_for_token_the_same(exported, compile):
    """The decode step (model/decode.py), eager and compiled, against transformers' generate."""
    run, out = exported
    lm = load(run, device="cpu")
    theirs = transformers.LlamaForCausalLM.from_pretrained(out, local_files_only=True, torch_dtype=torch.float32).eval()
    prompt = lm.encode_prompt("中国经济")
    ours = generate_ids(lm.model, [prompt], SamplingConfig(max_new_tokens=20, greedy=True),
                        compile=compile)[0]
    with torch.no_grad():
        hf = theirs.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                             pad_token_id=lm.tokenizer.pad_id, min_new_tokens=20)
    assert hf[0, len(prompt):].tolist() == ours


def test_transformers_tokenizer_loads_the_export(exported):
    run, out = exported
    lm = load(run)
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "人民日报：１２月３１日，中国经济 grows 7%."
    assert tok(text, add_special_tokens=False).input_ids == lm.tokenizer.encode(text)
    assert tok.decode(lm.tokenizer.encode(text)) == text
    assert tok.eos_token == "<|eos|>" and tok.bos_token == "<|bos|>"


def test_import_round_trip(exported, tmp_path):
    run, out = exported
    imported = import_hf(out, tmp_path / "imported")
    a, b = load(run).model, load(imported.path).model
    x = torch.randint(0, a.cfg.vocab_size, (1, 20))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_exported_tokenizer_adds_bos_as_candorlm_does(exported):
    run, out = exported
    lm = load(run)
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok("中国经济").input_ids == lm.encode_prompt("中国经济")


@pytest.mark.parametrize("prompt", ["中国经济", "人民日报：１２月"])
def test_transformers_pipeline_greedy_text_matches_candorlm(exported, prompt):
    run, out = exported
    lm = load(run, device="cpu")
    model = transformers.LlamaForCausalLM.from_pretrained(out, local_files_only=True, torch_dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    theirs = pipe(prompt, max_new_tokens=20, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert theirs == lm.generate(prompt, max_new_tokens=20, greedy=True)
