"""Loading verifies what it loads: one load_run for every reader, checked against the run's
SHA256SUMS (a checkpoint against its state.json), with an explicit opt-out; a tokenizer that does
not fit the model is a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from candorlm.checkpoint.retention import list_checkpoints
from candorlm.checkpoint.run import load_run, unverified
from candorlm.errors import CandorError
from candorlm.explain.subject import load_subject
from candorlm.io.manifest import MANIFEST_NAME, write_manifest
from candorlm.lm import LanguageModel
from candorlm.tasks.base import load_base
from tests.conftest import assert_clean_error, run_cli


@pytest.fixture
def run(tmp_path, trained_run) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_every_reader_loads_an_intact_run(run):
    loaded = load_run(run)
    assert loaded.weights == run / "model.safetensors" and loaded.info == {}
    assert LanguageModel.load(run, device="cpu").generate("今天", max_new_tokens=3, seed=0) is not None
    assert load_subject(run).arch == "decoder"
    base = load_base(run)
    assert base.weights == run / "model.safetensors" and base.build() is not None


def test_a_flipped_weight_byte_is_refused_by_every_reader(run):
    flip_byte(run / "model.safetensors")
    # (the weights are hashed while they load: the error comes before a model is returned)
    for load in (lambda r: load_run(r).build_model(), LanguageModel.load, load_subject, lambda r: load_base(r).build()):
        with pytest.raises(CandorError, match="does not match .*SHA256SUMS"):
            load(run)
    assert_clean_error(run_cli("generate", run, "--prompt", "今天", "--max-new-tokens", "2", check=False),
                       "model.safetensors does not match", "--no-verify")
    # The explicit opt-out, in Python and on the command line:
    LanguageModel.load(run, device="cpu", verify=False)
    with unverified():
        load_subject(run)
    run_cli("generate", run, "--prompt", "今天", "--max-new-tokens", "2", "--no-verify")


def test_huge_weights_written_over_the_file_are_refused(run):
    tensors = load_file(str(run / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name].view(-1)[:1000] = 1e30
    save_file(tensors, str(run / "model.safetensors"))
    with pytest.raises(CandorError, match="model.safetensors does not match"):
        LanguageModel.load(run, device="cpu")


def test_a_rolled_back_or_removed_final_model_is_refused(run):
    older = list_checkpoints(run / "checkpoints")[0] / "model.safetensors"
    shutil.copyfile(older, run / "model.safetensors")  # roll back to an earlier checkpoint's weights
    with pytest.raises(CandorError, match="model.safetensors does not match"):
        load_run(run).build_model()
    (run / "model.safetensors").unlink()  # ... or remove them so that the newest checkpoint loads instead
    with pytest.raises(CandorError, match="missing but listed"):
        load_run(run)


def test_a_swapped_config_or_tokenizer_is_refused(run, tmp_path):
    (run / "config.toml").write_text((run / "config.toml").read_text().replace("seed = 7", "seed = 8"))
    with pytest.raises(CandorError, match="config.toml does not match"):
        load_run(run)


def test_a_run_without_its_manifest_is_refused_until_one_is_written(run):
    (run / MANIFEST_NAME).unlink()
    with pytest.raises(CandorError, match="has no SHA256SUMS") as err:
        load_run(run)
    assert "verify" in str(err.value) and "--update" in str(err.value) and "--no-verify" in str(err.value)
    load_run(run, verify=False)
    run_cli("verify", run, "--update")
    load_run(run)


def test_a_file_added_after_the_manifest_is_refused(run):
    shutil.copyfile(run / "tokenizer.json", run / "source_tokenizer.json")
    with pytest.raises(CandorError, match="source_tokenizer.json is not listed"):
        load_run(run)


def test_a_tokenizer_that_does_not_fit_the_model_is_a_clear_error(run):
    from tokenizers import Tokenizer as HF

    tok = HF.from_file(str(run / "tokenizer.json"))
    tok.add_tokens([f"extra{i}" for i in range(100)])
    tok.save(str(run / "tokenizer.json"))
    write_manifest(run)  # even with a matching manifest, and even unchecked
    for verify in (True, False):
        with pytest.raises(CandorError, match="tokenizer.json has .* tokens but the model .* embeds only"):
            load_run(run, verify=verify)
    assert_clean_error(run_cli("generate", run, "--prompt", "今天", check=False), "does not belong to this model")


def test_a_run_still_training_loads_its_newest_checkpoint_checked(run):
    (run / "model.safetensors").unlink()
    (run / MANIFEST_NAME).unlink()  # training writes the manifest at the end
    newest = list_checkpoints(run / "checkpoints")[-1]
    assert load_run(run).weights == newest
    LanguageModel.load(run, device="cpu")
    flip_byte(newest / "model.safetensors")
    with pytest.raises(CandorError, match="corrupt .*sha256"):
        load_run(run)
    load_run(run, verify=False)


def test_an_encrypted_run_is_checked_too(run, tmp_path):
    from candorlm.io.sealed import Key
    from candorlm.privacy.crypto import encrypt_path

    key = Key(raw=bytes(range(32)))
    enc = tmp_path / "run.enc"
    encrypt_path(run, enc, key)
    LanguageModel.load(enc, device="cpu", key=key)
    flip_byte(enc / "model.safetensors")
    with pytest.raises(CandorError, match="model.safetensors is not the file .* was encrypted with"):
        LanguageModel.load(enc, device="cpu", key=key)  # its keyed manifest decides (tests/privacy/test_tamper.py)
