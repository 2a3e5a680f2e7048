"""The one way to open a run: `load_run(path)` reads config.toml, task.json and the tokenizers,
finds the weights (the final model.safetensors, or while the run trains its newest checkpoint,
single-file or FSDP-sharded), and checks what it reads before trusting it:

- every file it reads against the run's SHA256SUMS (a checkpoint's files against the sha256 in
  its state.json), so a flipped byte, a swapped or rolled-back file is refused before use;
- an encrypted run (`candorlm encrypt RUN -o RUN.enc`) against its keyed manifest instead: no
  file missing or added, each file it reads listed, encrypted and the one the run was encrypted
  with; SHA256SUMS, which anyone can rewrite, decides nothing there. Format 1 encrypted runs
  (no keyed manifest) are refused with the command that encrypts them again;
- the tokenizer against the model: a vocabulary larger than the model's embedding is refused.

Either failure is one CandorError saying what to do. The weights are hashed in a thread while
they load (hashlib releases the GIL), and nothing is returned before the hash matched. `verify=False` (or, around a block,
`unverified()`; `--no-verify` on the command line) skips the hashing for people who know why.

    run = load_run("runs/pd")
    model = run.build_model(device="cpu")    # eval mode, weights loaded
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from candorlm.checkpoint.retention import latest_checkpoint
from candorlm.checkpoint.sharded import load_checkpoint_weights
from candorlm.checkpoint.state import verified_state
from candorlm.checkpoint.weights import load_weights
from candorlm.config import ModelConfig, RunConfig
from candorlm.device import pick_device
from candorlm.errors import CandorError
from candorlm.io.manifest import MANIFEST_NAME, check_files, read_manifest
from candorlm.io.sealed import Key, read_text, use_key
from candorlm.io.sealedtree import SealedTree, open_tree, tree_format
from candorlm.model import SequenceClassifier, SpanReader, TokenTagger, build_model
from candorlm.rundir import RunDir, open_run
from candorlm.tokenizer import Tokenizer

SOURCE_TOKENIZER = "source_tokenizer.json"
TASK_FILE = "task.json"
# What candorlm writes into a run after the fact (eval, explain, report) and no loader reads: a file
# there is no reason to refuse an encrypted run (`candorlm decrypt` still refuses a plain one).
LATER_OUTPUTS = ("evals", "explain", "report", "report.html", "report.json", "report.md")
_unverified: list[bool] = []
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="candorlm-verify")


@contextlib.contextmanager
def unverified() -> Iterator[None]:
    """Within this block, runs load without checking their files (what --no-verify does)."""
    _unverified.append(True)
    try:
        yield
    finally:
        _unverified.pop()


@dataclass
class LoadedRun:
    """A run opened for use: what it is (config, task.json), its tokenizers, and where its weights are."""

    run: RunDir
    config: RunConfig
    info: dict[str, Any]  # task.json of a fine-tuned run; {} for a pretrained one
    tokenizer: Tokenizer  # the target side (the only one, unless source_tokenizer is set)
    source_tokenizer: Tokenizer | None  # seq2seq with separate vocabularies
    weights: Path | None  # model.safetensors or a checkpoint directory; None: no weights yet
    key: Key | None = field(default=None, repr=False)
    pending: Future | None = field(default=None, repr=False)  # the weights' hash, computed while they load

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def task(self) -> str | None:
        return self.info.get("task")

    def build_model(self, device: str = "cpu", model_config: ModelConfig | None = None) -> nn.Module:
        """The run's model with its weights (a sentiment classifier, a QA span reader or a pinyin tagger with its
        head), in eval mode."""
        if self.weights is None:
            raise CandorError(f"{self.path} has no weights yet (no model.safetensors, no checkpoint); train it first")
        model = build_model(model_config or self.config.model)
        if self.task == "sentiment":
            model = SequenceClassifier(model, len(self.info["labels"]), self.info["pooling"])
        elif self.task == "qa" and self.info.get("head") == "span":
            model = SpanReader(model)
        elif self.task == "translate" and self.info.get("head") == "tag":
            model = TokenTagger(model, self.info["tags"])
        try:
            with use_key(self.key):
                if self.weights.is_dir():  # checked (or deliberately not) by load_run already
                    load_checkpoint_weights(model, self.weights, verify=False)
                else:
                    load_weights(model, self.weights)
        except BaseException:
            self._settle()  # a changed file explains a failed load better than the parser's complaint
            raise
        self._settle()  # nothing is returned before its hash matched
        _check_finite(model, self.weights)
        return model.to(pick_device(device)).eval()

    def _settle(self) -> None:
        if self.pending is not None:
            self.pending.result()  # raises the CandorError of a mismatch


def load_run(path: str | Path, *, key: Key | None = None, verify: bool | None = None) -> LoadedRun:
    """Open a run directory (see the module docstring). An encrypted run is read with `key`, or
    the key in force (`use_key`, CANDORLM_KEY...). verify: None means yes, unless inside `unverified()`."""
    verify = not _unverified if verify is None else verify
    with use_key(key):
        run = open_run(path)
        tree = _sealed(run, verify)
        weights = _find_weights(run, verify and tree is None)
        pending = _verify(run, weights, tree) if verify else None
        config = run.read_config()
        task_file = run.path / TASK_FILE
        info = json.loads(read_text(task_file)) if task_file.is_file() else {}
        tokenizer = Tokenizer.load(run.tokenizer)
        source_file = run.path / SOURCE_TOKENIZER
        source = Tokenizer.load(source_file) if source_file.is_file() else None
    _check_vocabulary(run, config.model, tokenizer, source, info)
    return LoadedRun(run, config, info, tokenizer, source, weights, key, pending)


def _find_weights(run: RunDir, verify: bool) -> Path | None:
    if run.weights.is_file():
        return run.weights
    if verify and (run.path / MANIFEST_NAME).is_file() and run.weights.name in read_manifest(run.path):
        # The run was finished; falling back to a checkpoint would silently roll it back.
        raise CandorError(f"{run.weights} is missing but listed in {run.path / MANIFEST_NAME}: the run's final weights "
                          f"were removed. Restore them from a backup (`candorlm verify {run.path}` lists what differs)")
    return latest_checkpoint(run.checkpoints)


def _sealed(run: RunDir, verify: bool) -> SealedTree | None:
    """An encrypted run's keyed manifest, authenticated, with no file missing or added (None: a
    plain run, or verify=False). Format 1 and a removed manifest are refused either way."""
    state = tree_format(run.path)
    if state == "plain":
        return None
    if state != "sealed" or verify:
        tree = open_tree(run.path)  # says what is wrong with an old or orphaned tree
        tree.check_listing(ignore=LATER_OUTPUTS)
        return tree
    return None


def _verify(run: RunDir, weights: Path | None, tree: SealedTree | None = None) -> Future | None:
    """Check the small files now; return the weights' check, running beside the load that follows."""
    names = ["config.toml", "tokenizer.json", SOURCE_TOKENIZER, "special_tokens_map.json", TASK_FILE]
    files = [run.path / n for n in names if (run.path / n).is_file()]
    if tree is not None:  # encrypted: the keyed manifest, never the plain SHA256SUMS
        tree.check(files)
        if weights is not None and weights.is_file():
            tree.check([weights], hash=False)  # listed and encrypted: say so at once
            return _HASHER.submit(tree.check, [weights])
        if weights is not None:
            tree.check(sorted(p for p in weights.rglob("*") if p.is_file()))
            verified_state(weights)
        return None
    if weights is not None and weights.is_file():  # a finished run: everything against SHA256SUMS
        check_files(run.path, files, what="run")
        check_files(run.path, [weights], what="run", hash=False)  # listed at all: say so at once
        return _HASHER.submit(check_files, run.path, [weights], "run")  # hashlib lets go of the GIL
    if (run.path / MANIFEST_NAME).is_file():
        check_files(run.path, files, what="run")
    if weights is not None:
        verified_state(weights)  # a run still training: its checkpoint against its own sha256
    return None


def _check_finite(model: nn.Module, weights: Path) -> None:
    """Refuse weights holding NaN or inf (a diverged training): they generate nothing useful, silently.
    One pass over the tensors, a small part of the load."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CandorError(f"{weights} holds non-finite weights (NaN or inf, first in {name}): the training that "
                              f"wrote them diverged. Train again with a lower learning rate (train.lr) or with "
                              f"gradient clipping (train.grad_clip), or resume from an earlier checkpoint")


def refuse_encrypted_resume(path: Path) -> None:
    """`train --resume` writes checkpoints in plain text, so never into an encrypted run: it is
    checked against its keyed manifest (so tampering is named as such), then refused with the
    commands that resume a decrypted copy."""
    if tree_format(path) == "plain":
        return
    from candorlm.io.sealed import active_key

    open_tree(path).check_all()
    flag = getattr(active_key(), "flag", "") or "--key-file KEY"
    raise CandorError(f"--resume: {path} is encrypted, and resuming would write plain checkpoints into it; resume "
                      f"a decrypted copy instead: `candorlm decrypt {path} -o {path}.plain {flag}`, train with "
                      f"--out {path}.plain --resume, then `candorlm encrypt {path}.plain -o NEW {flag}`")


def _check_vocabulary(run: RunDir, cfg: ModelConfig, target: Tokenizer, source: Tokenizer | None,
                      info: dict[str, Any]) -> None:
    # A tagger's encoder embeds the source vocabulary; its head scores the target one (task.json's tags).
    tagger = info.get("head") == "tag"
    sides = [(run.tokenizer, target, int(info.get("tags") or 0) if tagger else cfg.vocab_size)]
    if source is not None:
        source_rows = cfg.vocab_size if tagger else cfg.src_vocab_size or cfg.vocab_size
        sides.append((run.path / SOURCE_TOKENIZER, source, source_rows))
    for file, tok, rows in sides:
        if tok.vocab_size > rows:
            raise CandorError(f"{file} has {tok.vocab_size:,} tokens but the model in {run.path} embeds only {rows:,}: "
                              f"this tokenizer does not belong to this model. Put back the run's own tokenizer.json")
