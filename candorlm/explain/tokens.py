"""A prompt and target as token ids, with readable labels for each token."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace

from candorlm.errors import CandorError
from candorlm.tokenizer import Tokenizer, byte_decoder


@dataclass(frozen=True)
class Example:
    """What one explanation is about, for any architecture (`candorlm.explain.subject` builds it).

    `ids` is the input that attributions, deletion and patching vary; `n_prompt` counts its
    prompt part (<bos> included); `frame` lists the prompt positions that hold structure, not
    content (<bos>, a source's <eos>, an encoder's <|mask|>): never removed, kept in the
    integrated-gradients baseline.
    - decoder: ids = <bos> + prompt + target[:-1], so one forward pass gives the probability of
      every target token (teacher forcing);
    - encoder: ids = <bos> + prompt with <|mask|> tokens; the target tokens are predicted at
      the `masked` positions;
    - encoder-decoder: ids = the source; the decoder reads `decoder_ids` = <bos> + target[:-1]
      and predicts the target at its positions 0..n-1.
    """

    ids: list[int]
    labels: list[str]
    n_prompt: int
    target_ids: list[int]
    frame: tuple[int, ...] = ()
    masked: tuple[int, ...] = ()
    decoder_ids: tuple[int, ...] = ()
    decoder_labels: tuple[str, ...] = ()

    @property
    def target_positions(self) -> list[int]:
        """Positions of the logits whose prediction is a target token."""
        if self.masked:
            return list(self.masked)
        if self.decoder_ids:
            return list(range(len(self.target_ids)))
        return list(range(self.n_prompt - 1, self.n_prompt - 1 + len(self.target_ids)))

    @property
    def content_positions(self) -> list[int]:
        """Prompt positions an attribution ranks and the deletion test may remove."""
        fixed = set(self.frame) | set(self.masked)
        return [i for i in range(self.n_prompt) if i not in fixed]

    def without(self, positions: tuple[int, ...]) -> "Example":
        """The example with the prompt tokens at `positions` removed (a shorter ordinary prompt)."""
        keep = [i for i in range(len(self.ids)) if i not in positions]
        new = {old: k for k, old in enumerate(keep)}
        return replace(self, ids=[self.ids[i] for i in keep], labels=[self.labels[i] for i in keep],
                       n_prompt=self.n_prompt - sum(1 for p in set(positions) if p < self.n_prompt),
                       frame=tuple(new[i] for i in self.frame), masked=tuple(new[i] for i in self.masked))


def encode_example(tokenizer: Tokenizer, prompt: str, target_ids: list[int] | None = None,
                   target: str | None = None) -> Example:
    """Encode a prompt (with <bos> where the tokenizer has one) and an optional target text."""
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    prompt_ids = bos + tokenizer.encode(prompt)
    if not prompt_ids:
        raise CandorError("the prompt is empty: give --prompt some text")
    if target is not None:
        target_ids = tokenizer.encode(target)
        if not target_ids:
            raise CandorError(f"the target {target!r} encodes to no tokens: give a non-empty --target")
    target_ids = list(target_ids or [])
    ids = prompt_ids + target_ids[:-1]
    return Example(ids, token_labels(tokenizer, ids), len(prompt_ids), target_ids, frame=(0,) if bos else ())


def token_labels(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """One visible label per token. A byte-level token that holds part of a character (a Chinese
    character is three UTF-8 bytes and BPE may split it) shows that character with a dot on
    the side where the rest of it lies: '爱·' then '·爱'. Newlines, tabs and blank tokens are
    drawn as ↵, ⇥ and ␣, other control characters as \\xNN (no font has a glyph for them)."""
    return [_visible(label) for label in _raw_labels(tokenizer, ids)]


def _visible(label: str) -> str:
    label = label.replace("\r\n", "↵").replace("\n", "↵").replace("\r", "↵").replace("\t", "⇥")
    label = "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in label)
    return "␣" * len(label) if label and not label.strip() else label


def _raw_labels(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    if not tokenizer.byte_level:
        return [tokenizer.decode([i], skip_special=False) for i in ids]
    decoder = byte_decoder()
    pieces: list[bytes | str] = []
    for i in ids:
        token = tokenizer.hf.id_to_token(i)
        if i in tokenizer.special_ids or token is None or any(ch not in decoder for ch in token):
            pieces.append(tokenizer.decode([i], skip_special=False))
        else:
            pieces.append(bytes(decoder[ch] for ch in token))
    labels: list[str] = []
    run: list[int] = []  # indices of consecutive byte pieces, decoded together
    for k, piece in enumerate(pieces + [""]):
        if isinstance(piece, bytes):
            run.append(k)
            continue
        labels.extend(_label_run([pieces[j] for j in run]))  # type: ignore[misc]
        run = []
        if k < len(pieces):
            labels.append(piece)
    return labels


def _label_run(chunks: list[bytes]) -> list[str]:
    data = b"".join(chunks)
    # Decode character by character, noting the character that covers each byte and where
    # characters start (an undecodable byte stands alone, shown as \xNN).
    char_of: list[str] = []
    starts: set[int] = set()
    pos = 0
    while pos < len(data):
        for width in (1, 2, 3, 4):
            try:
                ch = data[pos:pos + width].decode("utf-8")
            except UnicodeDecodeError:
                continue
            break
        else:
            ch, width = f"\\x{data[pos]:02x}", 1
        starts.add(pos)
        char_of.extend([ch] * width)
        pos += width
    starts.add(len(data))
    labels, start = [], 0
    for chunk in chunks:
        end = start + len(chunk)
        label = "".join(char_of[b] for b in range(start, end) if b == start or b in starts)
        if start not in starts:
            label = "·" + label
        if end not in starts:
            label = label + "·"
        labels.append(label)
        start = end
    return labels
