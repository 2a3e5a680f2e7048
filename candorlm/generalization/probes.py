"""Robustness probes: the in-domain set under simple, documented perturbations.

Each perturbation maps a document's text to another text; the model scores both, and the row
reports bits-per-byte of the perturbed set and its difference from the clean one, with a paired
bootstrap interval (document i of both sides is the same document). Bytes are counted on the
perturbed text, so a probe that changes byte counts (full-width forms are 3 UTF-8 bytes, ASCII 1)
is compared per byte of what the model actually read.

- `traditional`: simplified to traditional characters with OpenCC's `s2t` conversion (the
  `opencc` package; its dictionaries ship inside the wheel, nothing is downloaded).
- `halfwidth`: full-width forms (U+FF01-FF5E: ，！（）１２Ａ...) and the CJK marks 。、「」『』
  to their ASCII counterparts (, ! ( ) 1 2 A . , " " ' ').
- `fullwidth`: printable ASCII to full-width forms, spaces to U+3000 (the reverse direction).
- `noise-1%`, `noise-5%`: each non-space character, with that probability, replaced by a
  character drawn uniformly from the set's own character inventory (seeded).
The context probe (longer windows than the training length) lives in `context.py`.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from candorlm.errors import CandorError

_CJK_MARKS = {"。": ".", "、": ",", "「": '"', "」": '"', "『": "'", "』": "'", "　": " "}


def to_halfwidth(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if 0xFF01 <= code <= 0xFF5E:
            out.append(chr(code - 0xFEE0))
        else:
            out.append(_CJK_MARKS.get(ch, ch))
    return "".join(out)


def to_fullwidth(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if 0x21 <= code <= 0x7E:
            out.append(chr(code + 0xFEE0))
        elif ch == " ":
            out.append("\u3000")
        else:
            out.append(ch)
    return "".join(out)


def to_traditional(text: str) -> str:
    return _opencc().convert(text)


def _opencc():
    try:
        import opencc
    except ImportError:
        raise CandorError("the traditional-characters probe needs the 'opencc' package: pip install opencc") from None
    global _CONVERTER
    if _CONVERTER is None:
        _CONVERTER = opencc.OpenCC("s2t")
    return _CONVERTER


_CONVERTER = None


def character_noise(rate: float, alphabet: Sequence[str], seed: int) -> Callable[[str], str]:
    """A perturbation that replaces each non-space character with probability `rate` by a
    uniformly drawn character of `alphabet`; seeded per call order, so a set is reproducible."""
    rng = random.Random(seed)
    pool = list(alphabet)

    def perturb(text: str) -> str:
        return "".join(rng.choice(pool) if not ch.isspace() and rng.random() < rate else ch for ch in text)

    return perturb


def opencc_available() -> bool:
    try:
        _opencc()
        return True
    except CandorError:
        return False


def perturbations(texts: Sequence[str], seed: int = 0) -> dict[str, tuple[str, Callable[[str], str] | None]]:
    """The probes by name: (what it does, the function, or None with the reason in the text when
    the probe cannot run here)."""
    alphabet = sorted({ch for t in texts for ch in t if not ch.isspace()})
    probes: dict[str, tuple[str, Callable[[str], str] | None]] = {}
    if opencc_available():
        probes["traditional"] = ("simplified to traditional characters (OpenCC s2t)", to_traditional)
    else:
        probes["traditional"] = ("not run: the 'opencc' package is not installed (pip install opencc)", None)
    probes["halfwidth"] = ("full-width punctuation, digits and letters to half-width (ASCII)", to_halfwidth)
    probes["fullwidth"] = ("half-width (ASCII) punctuation, digits and letters to full-width", to_fullwidth)
    for rate in (0.01, 0.05):
        probes[f"noise-{rate:.0%}"] = (f"{rate:.0%} of characters replaced by random characters of the set",
                                       character_noise(rate, alphabet, seed))
    return probes
