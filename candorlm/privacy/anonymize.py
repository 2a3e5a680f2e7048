"""Replacing the personal data `pii` finds, by one of four operators:

- `mask`: every letter, digit and Chinese character becomes `*`; separators stay
  (`138-1234-5678` -> `***-****-****`);
- `placeholder`: the type in angle brackets (`<PHONE>`, `<CN_ID>`, `<PERSON>`);
- `pseudonym`: a fake value of the same type and shape that passes the same checks, chosen by a
  keyed HMAC of the original, so the same person or number maps to the same fake everywhere
  (across a whole corpus, and across corpora scrubbed with the same key);
- `drop`: the whole document is left out.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import re
import secrets
from dataclasses import dataclass, field
from typing import Sequence

from candorlm.errors import CandorError
from candorlm.privacy.checks import fold
from candorlm.privacy.fakes import FAKERS
from candorlm.privacy.pii import Entity, PIIDetector

OPERATORS = ("mask", "placeholder", "pseudonym", "drop")
_MASKABLE = re.compile(r"[0-9A-Za-z\u3400-\u9fff\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]")


def mask(value: str) -> str:
    return _MASKABLE.sub("*", value)


def _canonical(type_: str, value: str) -> str:
    # One person, one pseudonym: 138-1234-5678 and 13812345678 are the same number.
    if type_ in ("PHONE", "BANK_CARD", "CN_ID"):
        digits = re.sub(r"[^0-9Xx]", "", value).upper()
        return digits[-11:] if type_ == "PHONE" and len(digits) > 11 else digits
    if type_ == "EMAIL":
        return value.lower()
    if type_ == "IP_ADDRESS":
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value
    if type_ == "VEHICLE_PLATE":
        return re.sub(r"[·•. ]", "", value)
    return " ".join(value.split())


class Pseudonymizer:
    """Keyed, consistent fakes: HMAC-SHA256(key, type, canonical value) seeds the fake's generator."""

    def __init__(self, key: bytes | None = None):
        self.key = key if key is not None else secrets.token_bytes(32)
        self._cache: dict[tuple[str, str], str] = {}

    def __call__(self, type_: str, value: str) -> str:
        folded = fold(value)  # fakes are made from, and cached as, ASCII; the width comes back at the end
        canonical = _canonical(type_, folded)
        cached = self._cache.get((type_, canonical))
        if cached is not None and len(cached) == len(value):
            return same_width(value, cached)
        digest = hmac.new(self.key, f"{type_}\x00{canonical}".encode("utf-8"), hashlib.sha256).digest()
        fake = FAKERS[type_](random.Random(int.from_bytes(digest, "big")), folded)
        if len(self._cache) < 1_000_000:
            self._cache[(type_, canonical)] = fake
        return same_width(value, fake)


def _wide(ch: str) -> str:
    return chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else "\u3000" if ch == " " else ch


def same_width(original: str, fake: str) -> str:
    """The fake in the original's width: a full-width number gets a full-width fake (１３９１６３６９７９５,
    never １３９１6369795). Character by character where the lengths agree, else all of it when
    most of the original's ASCII-foldable characters were full-width."""
    if original == fold(original):
        return fake
    if len(fake) == len(original):
        return "".join(_wide(f) if o != fold(o) else f for o, f in zip(original, fake))
    wide = sum(o != fold(o) for o in original)
    return "".join(map(_wide, fake)) if 2 * wide >= sum(fold(o).isascii() for o in original) else fake


@dataclass
class Result:
    text: str | None  # None: the document is dropped
    entities: list[Entity] = field(default_factory=list)


class Anonymizer:
    """Detect personal data of the chosen types and replace it with the chosen operator."""

    def __init__(self, operator: str = "placeholder", types: Sequence[str] | None = None,
                 key: bytes | None = None):
        if operator not in OPERATORS:
            raise CandorError(f"unknown operator '{operator}'. Valid: {', '.join(OPERATORS)}.")
        self.operator = operator
        self.detector = PIIDetector(types)
        self.pseudonymize = Pseudonymizer(key) if operator == "pseudonym" else None

    def replacement(self, entity: Entity) -> str:
        if self.operator == "mask":
            return mask(entity.text)
        if self.operator == "pseudonym":
            assert self.pseudonymize is not None
            return self.pseudonymize(entity.type, entity.text)
        return f"<{entity.type}>"

    def anonymize(self, text: str) -> Result:
        return self.anonymize_many([text])[0]

    def anonymize_many(self, texts: Sequence[str]) -> list[Result]:
        return [self._apply(t, e) for t, e in zip(texts, self.detector.detect_many(texts))]

    def _apply(self, text: str, entities: list[Entity]) -> Result:
        if not entities:
            return Result(text, entities)
        if self.operator == "drop":
            return Result(None, entities)
        return Result(replace(text, entities, self.replacement), entities)


def replace(text: str, entities: Sequence[Entity], replacement) -> str:
    """text with each (non-overlapping, sorted) entity replaced by replacement(entity)."""
    parts, pos = [], 0
    for e in entities:
        parts.append(text[pos:e.start])
        parts.append(replacement(e))
        pos = e.end
    parts.append(text[pos:])
    return "".join(parts)
