"""Every way to tamper with a run (issue 14) is refused: on an encrypted tree made by `candorlm
encrypt RUN -o RUN.enc` by `decrypt` and `generate`, and where it applies on a plain run by
`generate`; always exit status 2 and one line, never a traceback. Key files and serve's keys.json
must be private, like ssh keys.

The CLI runs in this process (`candorlm.cli.main`), so each case costs a load, not a Python start.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
from pathlib import Path

import pytest

from candorlm.cli import main
from candorlm.errors import CandorError
from candorlm.io import sealed
from candorlm.io.manifest import write_manifest
from candorlm.io.sealed import TREE_MANIFEST, DecryptionError, Key, decrypt_stream, encrypt_stream
from candorlm.io.sealedtree import tree_files, write_tree_manifest
from candorlm.privacy.crypto import decrypt_path, encrypt_path, write_key_file

KEY_HEX = "00112233445566778899aabbccddeeff" * 2


def cli(capsys, *args) -> tuple[int, str]:
    """`candorlm ARGS` in this process: (exit status, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    return exit_.value.code or 0, capsys.readouterr().err


def refused(capsys, *args, fragment: str = "") -> str:
    code, err = cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error:"), err
    assert fragment in err, err
    return err


# ---------------------------------------------------------------- the trees


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    return write_key_file(tmp_path_factory.mktemp("key") / "k.key")


@pytest.fixture(scope="module")
def older_run(tmp_path_factory, trained_run) -> Path:
    """The same run as it was earlier: its final weights are those of its oldest checkpoint."""
    old = tmp_path_factory.mktemp("older") / "run"
    shutil.copytree(trained_run, old)
    shutil.copyfile(_oldest(old) / "model.safetensors", old / "model.safetensors")
    write_manifest(old)
    assert (old / "model.safetensors").read_bytes() != (trained_run / "model.safetensors").read_bytes()
    return old


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory, trained_run, older_run, key_file) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("enc")
    key = Key.from_file(key_file)
    encrypt_path(trained_run, base / "run.enc", key)
    encrypt_path(older_run, base / "older.enc", key)  # what an attacker who kept an old copy has
    return {"run": base / "run.enc", "older": base / "older.enc"}


def _oldest(run: Path) -> Path:
    # The newest checkpoint of a finished run holds its final weights; the oldest differs.
    return sorted((run / "checkpoints").iterdir())[0]


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".swap")
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)


def _flip(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    path.write_bytes(bytes(blob))


def _plain_sha256sums(root: Path) -> None:
    """What `sha256sum` (no key needed) writes, as an attacker would after changing files."""
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}"
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "SHA256SUMS" and not p.name.startswith(".")]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


# Each case: (name, how to tamper with a copy (tree, older tree, plain original), encrypted?, plain?)
def _inject_plain_weights(tree: Path, older: Path, plain: Path) -> None:
    shutil.copyfile(plain / "model.safetensors", tree / "model.safetensors")


def _issue_silent_rollback(tree: Path, older: Path, plain: Path) -> None:
    _swap(tree / "model.safetensors", _oldest(tree) / "model.safetensors")
    _plain_sha256sums(tree)


def _issue_plaintext_no_manifest(tree: Path, older: Path, plain: Path) -> None:
    shutil.copyfile(plain / "model.safetensors", tree / "model.safetensors")
    (tree / TREE_MANIFEST).unlink()
    _plain_sha256sums(tree)


CASES = {
    "flip a byte": (lambda t, o, p: _flip(t / "model.safetensors"), True, True),
    "truncate": (lambda t, o, p: os.truncate(t / "model.safetensors", (t / "model.safetensors").stat().st_size // 2),
                 True, True),
    "swap final and checkpoint weights": (
        lambda t, o, p: _swap(t / "model.safetensors", _oldest(t) / "model.safetensors"), True, True),
    "swap config.toml and tokenizer.json": (lambda t, o, p: _swap(t / "config.toml", t / "tokenizer.json"), True, True),
    "roll back to an older copy": (
        lambda t, o, p: shutil.copyfile(o / "model.safetensors", t / "model.safetensors"), True, True),
    "rename the final weights": (
        lambda t, o, p: os.replace(t / "model.safetensors", t / "model-final.safetensors"), True, True),
    "rename a checkpoint to look newest": (
        lambda t, o, p: os.replace(_oldest(t), t / "checkpoints" / "step-999999"),
        True, False),  # a plain load reads the final weights only; `candorlm verify` finds this one
    "inject a plaintext file": (lambda t, o, p: (t / "task.json").write_text('{"task": "lm"}'), True, True),
    "replace the weights with plaintext": (_inject_plain_weights, True, False),
    "remove the manifest": (lambda t, o, p: (t / (TREE_MANIFEST if (t / TREE_MANIFEST).exists() else "SHA256SUMS"))
                            .unlink(), True, True),
    "swap and rewrite SHA256SUMS with sha256sum": (_issue_silent_rollback, True, False),  # plain: nothing to tell
    "plaintext weights, manifest removed, SHA256SUMS rewritten": (_issue_plaintext_no_manifest, True, False),
}


def _tampered(tmp_path: Path, source: Path, older: Path, plain: Path, case: str) -> Path:
    tree = tmp_path / source.name
    shutil.copytree(source, tree)
    CASES[case][0](tree, older, plain)
    return tree


@pytest.mark.parametrize("case", [c for c, (_, enc, _) in CASES.items() if enc])
def test_a_tampered_encrypted_run_is_refused_by_decrypt_and_generate(case, tmp_path, capsys, encrypted, trained_run,
                                                                     key_file):
    tree = _tampered(tmp_path, encrypted["run"], encrypted["older"], trained_run, case)
    refused(capsys, "decrypt", tree, "-o", tmp_path / "out", "--key-file", key_file)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # no plaintext written
    refused(capsys, "generate", tree, "--prompt", "中国", "--max-new-tokens", "2", "--key-file", key_file)


@pytest.mark.parametrize("case", [c for c, (_, _, plain) in CASES.items() if plain])
def test_a_tampered_plain_run_is_refused_by_generate(case, tmp_path, capsys, trained_run, older_run):
    tree = _tampered(tmp_path, trained_run, older_run, trained_run, case)
    refused(capsys, "generate", tree, "--prompt", "中国", "--max-new-tokens", "2")


def test_the_untouched_trees_work(tmp_path, capsys, encrypted, trained_run, key_file):
    code, err = cli(capsys, "generate", encrypted["run"], "--prompt", "中国", "--max-new-tokens", "2", "--greedy",
                    "--key-file", key_file)
    assert code == 0, err
    code, err = cli(capsys, "decrypt", encrypted["run"], "-o", tmp_path / "plain", "--key-file", key_file)
    assert code == 0, err
    for file in tree_files(trained_run):
        assert (tmp_path / "plain" / file.relative_to(trained_run)).read_bytes() == file.read_bytes()
    assert not (tmp_path / "plain" / TREE_MANIFEST).exists()


def test_the_issue_cases_name_what_happened(tmp_path, capsys, encrypted, trained_run, key_file):
    tree = _tampered(tmp_path, encrypted["run"], encrypted["older"], trained_run,
                     "swap and rewrite SHA256SUMS with sha256sum")
    refused(capsys, "generate", tree, "--prompt", "x", "--key-file", key_file, fragment="swapped with another file")
    tree = _tampered(tmp_path / "b", encrypted["run"], encrypted["older"], trained_run,
                     "swap config.toml and tokenizer.json")
    refused(capsys, "decrypt", tree, "-o", tmp_path / "o", "--key-file", key_file, fragment="swapped")
    tree = _tampered(tmp_path / "c", encrypted["run"], encrypted["older"], trained_run,
                     "replace the weights with plaintext")
    refused(capsys, "generate", tree, "--prompt", "x", "--key-file", key_file, fragment="is a plain file inside")
    tree = _tampered(tmp_path / "d", encrypted["run"], encrypted["older"], trained_run,
                     "plaintext weights, manifest removed, SHA256SUMS rewritten")
    refused(capsys, "generate", tree, "--prompt", "x", "--key-file", key_file, fragment="manifest was removed")


def test_a_file_moved_in_its_tree_fails_even_under_a_remade_manifest(tmp_path, encrypted, key_file):
    """Defence in depth: each member authenticates its own path, so a swap fails to decrypt even
    if the keyed manifest were rewritten to match (it cannot be without the key; here the test has it)."""
    key = Key.from_file(key_file)
    tree = tmp_path / "t"
    shutil.copytree(encrypted["run"], tree)
    _swap(tree / "config.toml", tree / "tokenizer.json")
    write_tree_manifest(tree, key)
    with pytest.raises(DecryptionError, match="does not authenticate as 'config.toml'.*renamed, moved or swapped"):
        decrypt_path(tree, tmp_path / "out", key)
    with pytest.raises(DecryptionError, match="does not authenticate as 'tokenizer.json'"):
        sealed.read_bytes(tree / "tokenizer.json", key)
    blob = io.BytesIO()
    encrypt_stream(io.BytesIO(b"secret"), blob, key, member="a/b.txt")
    with pytest.raises(DecryptionError, match="renamed, moved or swapped"):
        decrypt_stream(io.BytesIO(blob.getvalue()), io.BytesIO(), key, "x", member="a/c.txt")
    with pytest.raises(DecryptionError, match="no CANDORLM-SEALED.json is above it"):
        decrypt_stream(io.BytesIO(blob.getvalue()), io.BytesIO(), key, "x")


def test_the_keyed_manifest_tells_a_wrong_key_from_a_changed_manifest(tmp_path, encrypted, key_file):
    tree = tmp_path / "t"
    shutil.copytree(encrypted["run"], tree)
    with pytest.raises(DecryptionError, match="wrong key"):
        decrypt_path(tree, tmp_path / "out", Key(raw=bytes(32)))
    manifest = tree / TREE_MANIFEST
    manifest.write_text(manifest.read_text().replace('"files": {', '"files": {"extra.bin": "00", ', 1))
    with pytest.raises(DecryptionError, match="HMAC does not match"):
        decrypt_path(tree, tmp_path / "out", Key.from_file(key_file))


@pytest.mark.slow
def test_resume_checks_an_encrypted_run_then_sends_it_to_a_decrypted_copy(tmp_path, encrypted, trained_run, key_file,
                                                                          data_dir):
    from tests.conftest import TINY_MODEL, TINY_TRAIN

    from candorlm.pretrain import train

    key = Key.from_file(key_file)
    tree = _tampered(tmp_path, encrypted["run"], encrypted["older"], trained_run, "roll back to an older copy")
    with sealed.use_key(key), pytest.raises(CandorError, match="rolled back"):
        train(tree, data=data_dir, model=TINY_MODEL, max_steps=40, resume=True, **TINY_TRAIN)
    intact = tmp_path / "intact.enc"
    shutil.copytree(encrypted["run"], intact)
    with sealed.use_key(key), pytest.raises(CandorError, match="resume a decrypted copy instead"):
        train(intact, data=data_dir, model=TINY_MODEL, max_steps=40, resume=True, **TINY_TRAIN)
    assert sorted(p.name for p in intact.rglob("*")) == sorted(p.name for p in encrypted["run"].rglob("*"))


def test_training_refuses_a_tampered_encrypted_data_directory(tmp_path, data_dir, key_file):
    from candorlm.shards import ShardSet

    key = Key.from_file(key_file)
    enc = tmp_path / "data.enc"
    encrypt_path(data_dir, enc, key)
    shards = sorted(p for p in enc.rglob("*.bin"))
    assert len(shards) >= 2
    plain = data_dir / shards[0].relative_to(enc)
    with sealed.use_key(key):
        assert ShardSet(enc).tokenizer.vocab_size > 0
        shutil.copyfile(plain, shards[0])  # a plain shard in place of the encrypted one
        with pytest.raises(CandorError, match="plain file inside the encrypted tree"):
            ShardSet(enc)


def test_a_passphrase_tree_round_trips_and_verify_checks_its_keyed_manifest(tmp_path):
    from candorlm.privacy.integrity import verify

    src = tmp_path / "notes"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("人民日报 " * 50)
    (src / "sub" / "b.txt").write_text("second file")
    key = Key.from_passphrase("correct horse battery staple", scrypt_log2n=12)
    encrypt_path(src, tmp_path / "notes.enc", key)
    same = Key.from_passphrase("correct horse battery staple")  # the cost is read from the files
    decrypt_path(tmp_path / "notes.enc", tmp_path / "back", same)
    assert (tmp_path / "back" / "sub" / "b.txt").read_text() == "second file"
    assert verify(tmp_path / "notes.enc", key=same).ok
    _swap(tmp_path / "notes.enc" / "a.txt", tmp_path / "notes.enc" / "sub" / "b.txt")
    _plain_sha256sums(tmp_path / "notes.enc")  # SHA256SUMS agrees; the keyed manifest does not
    assert verify(tmp_path / "notes.enc").ok  # without the key, only SHA256SUMS can be checked
    with pytest.raises(CandorError, match="swapped"):
        verify(tmp_path / "notes.enc", key=same)
    with pytest.raises(DecryptionError, match="wrong key"):
        decrypt_path(tmp_path / "notes.enc", tmp_path / "x", Key.from_passphrase("wrong horse"))


# ---------------------------------------------------------------- the previous format


def _encrypt_v1(data: bytes, key: Key, chunk: int = 1 << 20) -> bytes:
    """A file as candorlm wrote it before paths were bound (format 1), for the migration test."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, prefix = os.urandom(16), os.urandom(7)
    enc_key, check = sealed._subkeys(key.master(salt, 0, 0, 0), salt)
    header = sealed._HEADERS[1].pack(sealed.MAGIC, 1, 0, 0, 0, 0, salt, prefix, chunk, check)
    aead, out = AESGCM(enc_key), [header]
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] or [b""]
    for i, piece in enumerate(pieces):
        out.append(aead.encrypt(sealed._nonce(prefix, i, i == len(pieces) - 1), piece, header))
    return b"".join(out)


def test_a_format_1_run_is_refused_with_the_command_that_reencrypts_it(tmp_path, capsys, trained_run, key_file):
    key = Key.from_file(key_file)
    old = tmp_path / "old.enc"
    for file in tree_files(trained_run):
        target = old / file.relative_to(trained_run)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_encrypt_v1(file.read_bytes(), key))
    write_manifest(old)
    err = refused(capsys, "generate", old, "--prompt", "x", "--key-file", key_file, fragment="format 1")
    assert f"candorlm decrypt {old} -o {old}.plain --key-file {key_file}" in err
    assert f"candorlm encrypt {old}.plain -o {old}.v2 --key-file {key_file}" in err
    code, err = cli(capsys, "decrypt", old, "-o", tmp_path / "old.plain", "--key-file", key_file)  # still reads
    needle = f"candorlm encrypt {tmp_path / 'old.plain'} -o {old}.v2 --key-file {key_file}"
    assert code == 0 and "".join(needle.split()) in "".join(err.split()), err  # (the log handler wraps lines)
    code, err = cli(capsys, "encrypt", tmp_path / "old.plain", "-o", tmp_path / "new.enc", "--key-file", key_file)
    assert code == 0, err
    code, err = cli(capsys, "generate", tmp_path / "new.enc", "--prompt", "x", "--max-new-tokens", "2",
                    "--key-file", key_file)
    assert code == 0, err
    single = tmp_path / "notes.enc"
    single.write_bytes(_encrypt_v1(b"old notes", key))
    with pytest.raises(DecryptionError, match="format 1"):
        sealed.read_bytes(single, key)


def test_format_2_files_say_so_in_their_header(tmp_path, key_file):
    key = Key.from_file(key_file)
    blob = io.BytesIO()
    encrypt_stream(io.BytesIO(b"x"), blob, key)
    assert blob.getvalue()[len(sealed.MAGIC)] == 2 == sealed.VERSION
    assert struct.unpack(">B", blob.getvalue()[sealed.HEADER_SIZE - 1:sealed.HEADER_SIZE]) == (sealed.SCOPE_FILE,)


# ---------------------------------------------------------------- key files like ssh keys


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666, 0o660])
def test_a_key_file_others_can_read_is_refused_with_the_chmod(mode, tmp_path, capsys, encrypted, key_file):
    loose = tmp_path / "loose.key"
    shutil.copyfile(key_file, loose)
    loose.chmod(mode)
    err = refused(capsys, "decrypt", encrypted["run"], "-o", tmp_path / "out", "--key-file", loose,
                  fragment=f"chmod 600 {loose}")
    assert f"mode {mode:03o}" in err
    assert not (tmp_path / "out").exists()
    refused(capsys, "generate", encrypted["run"], "--prompt", "x", "--key-file", loose, fragment=f"chmod 600 {loose}")


def test_private_key_files_are_accepted_and_the_environment_is_checked_too(tmp_path, monkeypatch):
    key = tmp_path / "k.key"
    key.write_text(KEY_HEX + "\n")
    for mode in (0o600, 0o400):
        key.chmod(mode)
        assert Key.from_file(key).raw == bytes.fromhex(KEY_HEX)
    key.chmod(0o644)
    monkeypatch.setenv("CANDORLM_KEY_FILE", str(key))
    with pytest.raises(CandorError, match=f"chmod 600 {key}"):
        Key.from_env()


def test_files_candorlm_writes_are_private_whatever_the_umask(tmp_path):
    from candorlm.serve.auth import add_key

    previous = os.umask(0)
    try:
        assert write_key_file(tmp_path / "a.key").stat().st_mode & 0o777 == 0o600
        loose = tmp_path / "b.key"
        loose.write_text("old")
        loose.chmod(0o666)
        assert write_key_file(loose, overwrite=True).stat().st_mode & 0o777 == 0o600
        add_key(tmp_path / "keys.json", "alice", "generate")
        assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)


def test_a_keys_file_others_can_read_is_refused(tmp_path, capsys):
    from candorlm.serve.auth import KeyStore, add_key

    keys = tmp_path / "keys.json"
    add_key(keys, "alice", "generate")
    keys.chmod(0o666)
    with pytest.raises(CandorError, match=f"keys file {keys} can be read or changed.*chmod 600 {keys}"):
        KeyStore(keys)
    refused(capsys, "keys", "list", "--keys", keys, fragment=f"chmod 600 {keys}")
    keys.chmod(0o600)
    assert KeyStore(keys).usable()
