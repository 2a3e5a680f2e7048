"""Canaries (Carlini et al. 2019, "The Secret Sharer"): random secrets of a fixed format planted
in the training data, so an audit can measure how much a model memorized them.

    candorlm prepare corpus.txt --out data/c --canaries 4 --repeats 1,10,100

plants 4 canaries for each repeat count (each copy a document of its own, at seeded random
places in the stream), and draws 4 more that are never planted: controls, whose exposure shows
what an unseen secret scores. Each secret is drawn again until its document falls in the
training split, so every planted copy is trained on. The list goes to DATA/canaries.json, and
training copies it into the run directory, where `candorlm audit` reads it.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from candorlm.corpus import CorpusFilter, Document
from candorlm.errors import CandorError
from candorlm.shards import is_validation

DEFAULT_FORMAT = "我的银行卡号是####-####"
FILE_NAME = "canaries.json"


@dataclass
class Canary:
    text: str
    secret: str
    repeats: int  # 0: a control, never planted


@dataclass
class CanarySet:
    format: str
    seed: int
    canaries: list[Canary] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.format[:self.format.index("#")]

    def planted(self) -> list[Canary]:
        return [c for c in self.canaries if c.repeats > 0]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "CanarySet":
        from candorlm.io.sealed import read_text

        try:
            raw = json.loads(read_text(path))
            return cls(raw["format"], int(raw["seed"]), [Canary(**c) for c in raw["canaries"]])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CandorError(f"{path} is not a canary list written by candorlm ({exc})") from None


def check_format(fmt: str) -> str:
    if "#" not in fmt:
        raise CandorError(f"canary format '{fmt}' has no '#': mark each random digit of the secret with #")
    if fmt.count("#") < 4:
        raise CandorError(f"canary format '{fmt}' has {fmt.count('#')} random digits; use at least 4 so the secret "
                          f"cannot be guessed")
    return fmt


def fill(fmt: str, digits: str) -> str:
    it = iter(digits)
    return "".join(next(it) if ch == "#" else ch for ch in fmt)


def secret_of(fmt: str, text: str) -> str:
    """The part of a filled format from its first to its last random digit."""
    return text[fmt.index("#"):fmt.rindex("#") + 1]


def random_digits(fmt: str, rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") for _ in range(fmt.count("#")))


def make_canaries(count: int, repeats: Sequence[int], fmt: str = DEFAULT_FORMAT, seed: int = 0,
                  val_fraction: float = 0.05) -> CanarySet:
    """`count` canaries per repeat count, plus `count` controls (repeats 0), all distinct."""
    check_format(fmt)
    if count < 1 or not repeats or any(r < 1 for r in repeats):
        raise CandorError("--canaries must be at least 1 and every --repeats value at least 1 (for example 1,10,100)")
    rng = random.Random(seed)
    out = CanarySet(fmt, seed)
    seen: set[str] = set()
    for r in [*repeats, 0]:
        made = 0
        for _ in range(100 * count + 1000):
            text = fill(fmt, random_digits(fmt, rng))
            if text in seen or is_validation(text, val_fraction):
                continue  # a planted canary must be trained on; controls follow the same rule
            seen.add(text)
            out.canaries.append(Canary(text, secret_of(fmt, text), r))
            made += 1
            if made == count:
                break
        else:
            raise CandorError(f"could not draw {count} distinct canaries of format '{fmt}'; add more # digits")
    return out


def parse_repeats(text: str | Sequence[int]) -> list[int]:
    if not isinstance(text, str):
        return [int(r) for r in text]
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CandorError(f"--repeats '{text}' is not a list of counts such as 10 or 1,10,100") from None


class CanaryCorpus(CorpusFilter):
    """A corpus with the canaries' copies inserted at seeded random places among its documents."""

    def __init__(self, corpus, canaries: CanarySet):
        super().__init__(corpus)
        self.canaries = canaries
        self._n_docs: int | None = None

    def save_report(self, directory: str | Path) -> None:
        """The planted canaries, as `prepare` keeps them: DATA_DIR/canaries.json (`candorlm audit` reads it)."""
        self.canaries.save(Path(directory) / "canaries.json")

    def _schedule(self, n_docs: int) -> dict[int, list[Canary]]:
        rng = random.Random(self.canaries.seed + 1)
        at: dict[int, list[Canary]] = {}
        for canary in self.canaries.planted():
            for _ in range(canary.repeats):
                at.setdefault(rng.randrange(n_docs + 1), []).append(canary)
        return at

    def __iter__(self) -> Iterator[Document]:
        if self._n_docs is None:
            # Count on the unscrubbed corpus underneath, if any: counting is only for spreading copies.
            self._n_docs = sum(1 for _ in getattr(self.corpus, "corpus", self.corpus))
        schedule = self._schedule(self._n_docs)
        i = 0
        for i, doc in enumerate(self.corpus):
            yield from self._copies(schedule.pop(i, []))
            yield doc
        for rest in sorted(schedule):  # the corpus came out shorter than counted (documents dropped)
            yield from self._copies(schedule[rest])

    def _copies(self, canaries: Iterable[Canary]) -> Iterator[Document]:
        for c in canaries:
            yield Document(c.text, f"canary:{c.secret}")
