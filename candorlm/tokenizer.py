"""Tokenizers: train and load, saved as `tokenizer.json` in the Hugging Face `tokenizers` format.

Three kinds, all with the same reserved special tokens at ids 0..len(SPECIAL_TOKENS)-1:
- `bpe` (default): byte-level BPE. Any Unicode text round-trips exactly. Its pre-tokenizer
  keeps runs of Chinese characters apart from Latin words and splits digits in threes.
- `char`: one token per character, with UTF-8 byte fallback (`<0xNN>` tokens, as in Llama's
  tokenizer) for characters outside the vocabulary, so it also round-trips exactly. Good
  for tiny Chinese models.
- `word`: words found by jieba (the classic 我/爱/编程 split). The segmentation runs in
  Python, so `tokenizer.json` alone splits Chinese into single characters; load it through
  candorlm to get jieba. Words outside the vocabulary fall back to their characters, and a
  character outside the vocabulary becomes `<|unk|>` (so this kind is lossy on unseen text).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from candorlm.errors import CandorError
from candorlm.io.sealed import is_encrypted, read_text

TokenizerKind = Literal["bpe", "char", "word"]

PAD, BOS, EOS, UNK, MASK, SEP = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>", "<|mask|>", "<|sep|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, MASK, SEP, SYSTEM, USER, ASSISTANT, END]

# Like GPT-4's split, but a run of Han characters is its own pre-token, so Chinese never
# glues onto a neighbouring Latin word or punctuation.
BPE_SPLIT = (
    r"""'(?i:[sdmt]|ll|ve|re)|\p{Han}+| ?[^\r\n\p{L}\p{N}]?[^\s\p{N}\p{P}\p{S}\p{Han}]+"""
    r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]


CHAT_ROLES = ("system", "user", "assistant")
# The same template in Jinja, for tokenizer_config.json (transformers' apply_chat_template).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

ROLES = {"pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK, "mask": MASK, "sep": SEP,
         "system": SYSTEM, "user": USER, "assistant": ASSISTANT, "end": END}


class Tokenizer:
    """A trained tokenizer and its special tokens; wraps a `tokenizers.Tokenizer`.

    candorlm's own tokenizers hold all of SPECIAL_TOKENS. A tokenizer imported from elsewhere
    (a Hugging Face Llama model) names its own bos/eos/pad/unk in `special_tokens_map.json`;
    roles it lacks are None, and a task that needs one says so (`require`).
    """

    def __init__(self, hf: HFTokenizer, specials: dict[str, str] | None = None):
        self.hf = hf
        self.specials = dict(ROLES if specials is None else specials)
        ids = {role: hf.token_to_id(tok) for role, tok in self.specials.items()}
        if specials is None and any(v is None for v in ids.values()):
            missing = [self.specials[r] for r, v in ids.items() if v is None]
            raise CandorError(f"tokenizer lacks the special tokens {', '.join(missing)}; "
                              f"train one with `candorlm tokenizer train`")
        self.ids: dict[str, int | None] = {role: ids.get(role) for role in ROLES}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.mask_id, self.sep_id = (
            self.ids[r] for r in ("pad", "bos", "eos", "unk", "mask", "sep"))
        if self.pad_id is None:
            self.pad_id = self.eos_id if self.eos_id is not None else 0
        added = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
        self.special_ids = frozenset(i for i in (hf.token_to_id(t) for t in added | set(self.specials.values()))
                                     if i is not None)

    def require(self, *roles: str, why: str = "this task") -> None:
        missing = [ROLES[r] for r in roles if self.ids.get(r) is None]
        if missing:
            raise CandorError(f"{why} needs the special tokens {', '.join(missing)}, which this tokenizer lacks; "
                              f"start from a run whose tokenizer was trained by candorlm")

    # ------------------------------------------------------------ persistence
    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise CandorError(f"tokenizer not found: {path}")
        try:
            hf = HFTokenizer.from_str(read_text(path)) if is_encrypted(path) else HFTokenizer.from_file(str(path))
        except CandorError:
            raise
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise CandorError(f"{path} is not a valid tokenizer.json ({exc})") from None
        if all(hf.token_to_id(t) is not None for t in SPECIAL_TOKENS):
            return cls(hf)
        return cls(hf, _read_special_map(path.parent / "special_tokens_map.json"))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.hf.save(str(path))
        if self.specials != ROLES:
            (path.parent / "special_tokens_map.json").write_text(
                json.dumps({f"{r}_token": t for r, t in self.specials.items()}, ensure_ascii=False), encoding="utf-8")

    # ------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @cached_property
    def _json(self) -> dict:
        return json.loads(self.hf.to_str())

    @cached_property
    def kind(self) -> TokenizerKind:
        model = self._json["model"]
        if model["type"] == "WordLevel":
            return "word"
        if model["type"] == "BPE" and model.get("byte_fallback") and not model.get("merges"):
            return "char"
        return "bpe"

    @cached_property
    def byte_level(self) -> bool:
        """True when tokens are GPT-2 style byte-level strings (candorlm's bpe)."""
        return "ByteLevel" in json.dumps(self._json.get("decoder"))

    def token_id(self, token: str) -> int:
        tid = self.hf.token_to_id(token)
        if tid is None:
            raise CandorError(f"token {token!r} is not in the vocabulary")
        return tid

    # ------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.kind == "word":
            return [self._encode_words(t) for t in texts]
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def _encode_words(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in segment_words(text):
            tid = self.hf.token_to_id(word)
            if tid is not None:
                ids.append(tid)
                continue
            for ch in word:
                tid = self.hf.token_to_id(ch)
                ids.append(self.unk_id if tid is None else tid)
        return ids

    # ------------------------------------------------------------ chat template
    def encode_literal(self, text: str) -> list[int]:
        """Token ids of `text` with special-token strings in it read as plain text: a user who types
        "<|assistant|>" gets those characters, not the control token (no prompt injection by markup)."""
        if self.kind == "word":
            return self._encode_words(text)
        self.hf.encode_special_tokens = True
        try:
            return self.hf.encode(text, add_special_tokens=False).ids
        finally:
            self.hf.encode_special_tokens = False

    def encode_chat(self, messages: Sequence[dict[str, str]],
                    add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """A conversation in the chat template (CHAT_TEMPLATE), and the mask of the tokens an
        assistant writes (1: each assistant message's content and its closing <|end|>).

            <|bos|><|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>...

        With `add_generation_prompt`, the ids end with <|assistant|>, ready for the reply.
        Messages must already be checked (roles in CHAT_ROLES, contents strings).
        """
        self.require("bos", "system", "user", "assistant", "end", why="the chat template")
        ids, mask = [self.ids["bos"]], [0]
        for message in messages:
            content = self.encode_literal(message["content"]) + [self.ids["end"]]
            ids += [self.ids[message["role"]]] + content
            mask += [0] + [1 if message["role"] == "assistant" else 0] * len(content)
        if add_generation_prompt:
            ids.append(self.ids["assistant"])
            mask.append(0)
        return ids, mask  # type: ignore[return-value]

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (0 for special tokens); the denominator of bits-per-byte."""
        lengths = np.zeros(self.vocab_size, dtype=np.int32)
        byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
        for token, tid in self.hf.get_vocab(with_added_tokens=True).items():
            if tid in self.special_ids:
                continue
            if self.byte_level:
                lengths[tid] = sum(1 for ch in token if ch in byte_decoder)
            elif token in _BYTE_TOKENS:
                lengths[tid] = 1
            else:  # SentencePiece-style vocabularies write a space as U+2581
                lengths[tid] = len(token.replace("\u2581", " ").encode("utf-8"))
        return lengths


def _read_special_map(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CandorError(f"{path.parent / 'tokenizer.json'} lacks candorlm's special tokens and there is no "
                          f"special_tokens_map.json beside it naming its own")
    raw = json.loads(path.read_text(encoding="utf-8"))
    out = {}
    for key, value in raw.items():
        role = key.removesuffix("_token")
        if role in ROLES and value:
            out[role] = value["content"] if isinstance(value, dict) else str(value)
    return out


# ---------------------------------------------------------------- training


def train_tokenizer(texts: Iterable[str], kind: TokenizerKind = "bpe", vocab_size: int = 8192,
                    min_frequency: int = 2) -> Tokenizer:
    """Train a tokenizer of `kind` on a stream of texts (streamed, never held in memory at once)."""
    floor = len(SPECIAL_TOKENS) + (256 if kind in ("bpe", "char") else 1)
    if vocab_size <= floor:
        raise CandorError(
            f"vocabulary size {vocab_size} is too small for a {kind} tokenizer: the special tokens "
            f"{'and the 256 bytes ' if kind != 'word' else ''}need {floor}. Use --vocab-size {max(floor + 1, 512)} or more."
        )
    builders = {"bpe": _train_bpe, "char": _train_char, "word": _train_word}
    if kind not in builders:
        raise CandorError(f"unknown tokenizer kind '{kind}'. Valid: bpe, char, word.")
    return Tokenizer(builders[kind](texts, vocab_size, min_frequency))


def _train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(BPE_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def _train_char(texts: Iterable[str], vocab_size: int, min_frequency: int) -> HFTokenizer:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    budget = vocab_size - len(SPECIAL_TOKENS) - len(_BYTE_TOKENS)
    chars = [c for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_frequency]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + _BYTE_TOKENS)}
    for ch in chars[:budget]:
        vocab.setdefault(ch, len(vocab))
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def _train_word(texts: Iterable[str], vocab_size: int, min_frequency: int) -> HFTokenizer:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(segment_words(text))
    budget = vocab_size - len(SPECIAL_TOKENS)
    words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_frequency]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for word in words[:budget]:
        vocab.setdefault(word, len(vocab))
    tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Without jieba (for example in transformers) fall back to one pre-token per character.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\p{Han}|[^\p{Han}\s]+|\s+"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def segment_words(text: str) -> list[str]:
    """jieba's segmentation; spaces and newlines are kept as tokens so decoding is exact."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba.lcut(text)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible map from bytes to printable characters, used by byte-level BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))
