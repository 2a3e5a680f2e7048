"""Encryption at rest: round trips, and every kind of damage is a clear error, never garbage;
encrypted data and runs are read transparently with the key; pickle never loads."""

import io
import os
import pickle
import shutil

import pytest

from candorlm.errors import CandorError
from candorlm.lm import load
from candorlm.io import sealed
from candorlm.io.sealed import (HEADER_SIZE, TAG, DecryptionError, Key, decrypt_file, decrypt_stream, encrypt_file,
                                encrypt_stream, read_bytes)
from candorlm.privacy.crypto import decrypt_path, encrypt_path
from candorlm.io.manifest import write_manifest
from candorlm.pretrain import train
from tests.conftest import TINY_MODEL, TINY_TRAIN, assert_clean_error, run_cli

KEY = Key(raw=bytes(range(32)))
OTHER = Key(raw=bytes(32))


def _encrypt(data: bytes, key: Key = KEY, chunk: int = 64) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, key, chunk_size=chunk)
    return out.getvalue()


def _decrypt(blob: bytes, key: Key = KEY) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, key, "blob")
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 640, 1000])
def test_round_trip_any_size(size):
    data = os.urandom(size)
    blob = _encrypt(data)
    assert _decrypt(blob) == data
    chunks = max(1, -(-size // 64))
    assert len(blob) == HEADER_SIZE + size + chunks * TAG
    assert _encrypt(data) != blob  # a fresh salt and nonce prefix each time


def test_wrong_key_is_named():
    with pytest.raises(DecryptionError, match="wrong key"):
        _decrypt(_encrypt(b"secret" * 100), OTHER)


@pytest.mark.parametrize("where", ["first chunk", "middle chunk", "last tag", "header salt", "header chunk size"])
def test_tampering_is_detected(where):
    blob = bytearray(_encrypt(os.urandom(300)))  # 5 chunks of 64 bytes
    offset = {"first chunk": HEADER_SIZE + 3, "middle chunk": HEADER_SIZE + 2 * (64 + TAG) + 10,
              "last tag": len(blob) - 1, "header salt": 22, "header chunk size": 44}[where]
    blob[offset] ^= 0x01
    with pytest.raises(DecryptionError, match="tampered|damaged|wrong key"):
        _decrypt(bytes(blob))


def test_truncation_reordering_and_appending_are_detected():
    blob = _encrypt(os.urandom(300))
    step = 64 + TAG
    with pytest.raises(DecryptionError, match="truncated"):
        _decrypt(blob[:HEADER_SIZE + 2 * step])  # cut exactly at a chunk boundary
    with pytest.raises(DecryptionError, match="truncated|tampered"):
        _decrypt(blob[:-5])  # cut inside the last chunk
    with pytest.raises(DecryptionError, match="truncated"):
        _decrypt(blob[:HEADER_SIZE - 1])
    swapped = blob[:HEADER_SIZE] + blob[HEADER_SIZE + step:HEADER_SIZE + 2 * step] + \
        blob[HEADER_SIZE:HEADER_SIZE + step] + blob[HEADER_SIZE + 2 * step:]
    with pytest.raises(DecryptionError, match="tampered"):
        _decrypt(swapped)
    with pytest.raises(DecryptionError, match="tampered"):  # the short last chunk no longer ends the file
        _decrypt(blob + _encrypt(b"x" * 10)[HEADER_SIZE:])
    whole = _encrypt(os.urandom(320))  # ends on a full chunk
    with pytest.raises(DecryptionError, match="appended"):
        _decrypt(whole + _encrypt(b"x" * 10)[HEADER_SIZE:])
    with pytest.raises(DecryptionError, match="not a file encrypted"):
        _decrypt(b"plain text, not encrypted at all, long enough to fill a header" * 2)


def test_passphrase_keys(tmp_path):
    key = Key.from_passphrase("correct horse battery staple", scrypt_log2n=12)
    src = tmp_path / "a.txt"
    src.write_text("人民日报" * 1000, encoding="utf-8")
    encrypt_file(src, tmp_path / "a.enc", key)
    same = Key.from_passphrase("correct horse battery staple")  # the cost is read from the file
    assert read_bytes(tmp_path / "a.enc", same) == src.read_bytes()
    with pytest.raises(DecryptionError, match="wrong key"):
        read_bytes(tmp_path / "a.enc", Key.from_passphrase("wrong horse"))
    with pytest.raises(DecryptionError, match="passphrase"):
        read_bytes(tmp_path / "a.enc", KEY)


def test_failed_decryption_leaves_no_output(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(5000))
    encrypt_file(src, tmp_path / "a.enc", KEY)
    blob = bytearray((tmp_path / "a.enc").read_bytes())
    blob[-100] ^= 1
    (tmp_path / "bad.enc").write_bytes(bytes(blob))
    with pytest.raises(DecryptionError):
        decrypt_file(tmp_path / "bad.enc", tmp_path / "out.bin", KEY)
    assert not (tmp_path / "out.bin").exists() and not list(tmp_path.glob(".out.bin*"))


def test_encrypted_run_loads_with_its_key_only(tmp_path, trained_run):
    enc = tmp_path / "enc"
    encrypt_path(trained_run, enc, KEY)
    assert sealed.is_encrypted(enc / "model.safetensors") and sealed.is_encrypted(enc / "config.toml")
    expected = load(trained_run).generate("中国", max_new_tokens=6, greedy=True)
    assert load(enc, key=KEY).generate("中国", max_new_tokens=6, greedy=True) == expected
    with pytest.raises(CandorError, match="is encrypted: give its key with --key-file"):
        load(enc)
    with pytest.raises(CandorError, match="wrong key"):
        load(enc, key=OTHER)
    decrypt_path(enc, tmp_path / "plain", KEY)
    assert (tmp_path / "plain" / "model.safetensors").read_bytes() == (trained_run / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_training_reads_encrypted_shards(tmp_path, data_dir):
    enc = tmp_path / "data.enc"
    encrypt_path(data_dir, enc, KEY)
    with sealed.use_key(KEY):
        result = train(tmp_path / "run", data=enc, model=TINY_MODEL, max_steps=3, **TINY_TRAIN)
    assert result.steps == 3
    plain = train(tmp_path / "run2", data=data_dir, model=TINY_MODEL, max_steps=3, **TINY_TRAIN)
    assert result.final_eval["loss"] == plain.final_eval["loss"]  # same data, same numbers
    with pytest.raises(CandorError, match="is encrypted"):
        train(tmp_path / "run3", data=enc, model=TINY_MODEL, max_steps=3, **TINY_TRAIN)


def _evil_pickle(marker):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Evil())


def test_pickle_in_a_checkpoint_directory_is_refused_without_running_it(tmp_path, trained_run):
    run = tmp_path / "evil"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "pwned"
    (run / "model.safetensors").unlink()  # so load() falls back to the newest checkpoint
    newest = sorted((run / "checkpoints").iterdir())[-1]
    (newest / "model.safetensors").write_bytes(_evil_pickle(marker))
    with pytest.raises(CandorError, match="missing but listed"):  # a finished run never falls back silently
        load(run)
    with pytest.raises(CandorError, match="never loads pickle"):  # unchecked, the pickle still never runs
        load(run, verify=False)
    with pytest.raises(CandorError, match="corrupt"):  # resuming checks the sha256 first
        _resume(run)
    (newest / "optim.safetensors").write_bytes(_evil_pickle(marker))
    write_manifest(run)  # whoever planted the pickle could rewrite the manifest too
    enc_dir = tmp_path / "enc"
    encrypt_path(run, enc_dir, KEY)  # an encrypted pickle is refused the same way
    with pytest.raises(CandorError, match="corrupt"):  # its checkpoint's state.json still knows the real sha256
        load(enc_dir, key=KEY)
    with pytest.raises(CandorError, match="never loads pickle"):
        load(enc_dir, key=KEY, verify=False)
    assert not marker.exists()


def _resume(run):
    from candorlm.rundir import RunDir

    cfg = RunDir(run).read_config()
    train(run, data=cfg.data.path, model=TINY_MODEL, max_steps=40, resume=True, **TINY_TRAIN)


@pytest.mark.slow
def test_cli_keygen_encrypt_decrypt_and_errors(tmp_path, corpus_file):
    key = tmp_path / "k.key"
    run_cli("keygen", "-o", key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert_clean_error(run_cli("keygen", "-o", key, check=False), "refusing to overwrite")
    run_cli("encrypt", corpus_file, "-o", tmp_path / "c.enc", "--key-file", key)
    run_cli("decrypt", tmp_path / "c.enc", "-o", tmp_path / "c.txt", "--key-file", key)
    assert (tmp_path / "c.txt").read_bytes() == corpus_file.read_bytes()
    other = tmp_path / "other.key"
    run_cli("keygen", "-o", other)
    assert_clean_error(run_cli("decrypt", tmp_path / "c.enc", "-o", tmp_path / "x.txt", "--key-file", other,
                               check=False), "wrong key")
    assert not (tmp_path / "x.txt").exists()
    blob = bytearray((tmp_path / "c.enc").read_bytes())
    blob[len(blob) // 2] ^= 4
    (tmp_path / "t.enc").write_bytes(bytes(blob))
    assert_clean_error(run_cli("decrypt", tmp_path / "t.enc", "-o", tmp_path / "y.txt", "--key-file", key,
                               check=False), "tampered")
    (tmp_path / "cut.enc").write_bytes(bytes(blob[:HEADER_SIZE + 100]))
    assert_clean_error(run_cli("verify", tmp_path / "cut.enc", "--key-file", key, check=False), "truncated")
    assert_clean_error(run_cli("decrypt", tmp_path / "c.enc", "-o", tmp_path / "z.txt", check=False), "no key")
    no_tty = run_cli("decrypt", tmp_path / "c.enc", "-o", tmp_path / "p.txt", "--passphrase", check=False)
    assert_clean_error(no_tty, "CANDORLM_PASSPHRASE")


def test_keygen_never_writes_through_a_link(tmp_path):
    from candorlm.privacy.crypto import write_key_file

    link = tmp_path / "k.key"
    link.symlink_to(tmp_path / "elsewhere.txt")  # dangling: path.exists() is False
    with pytest.raises(CandorError, match="refusing to overwrite a key"):
        write_key_file(link)
    assert not (tmp_path / "elsewhere.txt").exists()
    with pytest.raises(CandorError, match="symbolic link"):
        write_key_file(link, overwrite=True)  # the library's overwrite does not follow a link either
    assert not (tmp_path / "elsewhere.txt").exists()
    key = write_key_file(tmp_path / "new.key")
    assert oct(key.stat().st_mode & 0o777) == "0o600" and len(key.read_text().strip()) == 64


def test_one_member_of_an_encrypted_tree_decrypts_by_a_relative_path(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("第一段")
    run_cli("keygen", "-o", tmp_path / "k.key")
    run_cli("encrypt", "notes", "-o", "notes.enc", "--key-file", "k.key", cwd=tmp_path)
    run_cli("decrypt", "notes.enc/a.txt", "-o", "a.txt", "--key-file", "k.key", cwd=tmp_path)
    assert (tmp_path / "a.txt").read_text() == "第一段"
