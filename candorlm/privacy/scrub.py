"""Scrubbing a corpus: stream any corpus the trunk reads, replace personal data, write the result
and a report (counts per type, and examples shown only masked).

    candorlm scrub notes/ -o notes.scrubbed.jsonl --operator pseudonym --report scrub.json

The output is JSONL (one {"text": ...} per document) when its name ends in .jsonl, else text
with documents separated by blank lines. `ScrubbedCorpus` does the same on the way into
`candorlm prepare --scrub` (built by `prepare_filters`).
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from candorlm.corpus import Corpus, CorpusFilter, Document, batched
from candorlm.errors import CandorError
from candorlm.io.files import atomic_write_text, temp_path, terminate_cleanly
from candorlm.io.outputs import claim_file, record_file, write_owned_text
from candorlm.privacy.anonymize import Anonymizer, Result, mask
from candorlm.privacy.pii import ENTITY_TYPES, Entity
from candorlm.progress import progress_bar

EXAMPLES_PER_TYPE = 5
REPORT_KIND = "scrub-report"  # the kind of file --report writes (io.outputs)
_CONTEXT = 12
_BATCH = 64


@dataclass
class ScrubReport:
    operator: str
    types: list[str]
    documents: int = 0
    documents_changed: int = 0
    documents_dropped: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {t: 0 for t in ENTITY_TYPES})
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    blank_lines_joined: int = 0
    seconds: float = 0.0

    def add(self, doc: Document, result: Result) -> None:
        self.documents += 1
        self.bytes_in += len(doc.text.encode("utf-8"))
        if result.text is None:
            self.documents_dropped += 1
        else:
            self.bytes_out += len(result.text.encode("utf-8"))
            if result.entities:
                self.documents_changed += 1
        for e in result.entities:
            self.counts[e.type] = self.counts.get(e.type, 0) + 1
            shown = self.examples.setdefault(e.type, [])
            if len(shown) < EXAMPLES_PER_TYPE:
                shown.append({"masked": mask(e.text), "context": _masked_context(doc.text, result.entities, e),
                              "source": doc.source})

    def merge(self, other: "ScrubReport") -> None:
        for name in ("documents", "documents_changed", "documents_dropped", "bytes_in", "bytes_out", "blank_lines_joined"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for t, n in other.counts.items():
            self.counts[t] = self.counts.get(t, 0) + n
        for t, shown in other.examples.items():
            mine = self.examples.setdefault(t, [])
            mine.extend(shown[:EXAMPLES_PER_TYPE - len(mine)])

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["counts"] = {t: n for t, n in self.counts.items() if t in self.types}
        out["mb_per_s"] = round(self.mb_per_s, 3)
        out["seconds"] = round(self.seconds, 3)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())


def _masked_context(text: str, entities: Sequence[Entity], target: Entity) -> str:
    lo, hi = max(0, target.start - _CONTEXT), min(len(text), target.end + _CONTEXT)
    parts, pos = [], lo
    for e in entities:
        if e.end <= lo or e.start >= hi:
            continue
        parts.append(text[pos:max(pos, e.start)])
        parts.append(mask(text[max(e.start, lo):min(e.end, hi)]))
        pos = min(e.end, hi)
    parts.append(text[pos:hi])
    return " ".join("".join(parts).split())


# ---------------------------------------------------------------- workers

_worker: Anonymizer | None = None


def _init_worker(operator: str, types: list[str] | None, key: bytes | None) -> None:
    global _worker
    _worker = Anonymizer(operator, types, key)


def _anonymize_batch(texts: list[str]) -> list[Result]:
    assert _worker is not None
    return _worker.anonymize_many(texts)


def _batched(docs: Iterable[Document], n: int) -> Iterator[list[Document]]:
    return batched(docs, n)  # bounded by characters too: long documents come in small batches


def anonymize_documents(docs: Iterable[Document], anonymizer: Anonymizer, key: bytes | None,
                        workers: int = 1) -> Iterator[tuple[Document, Result]]:
    """(document, result) in corpus order; with workers > 1, batches run in worker processes."""
    if workers <= 1:
        for batch in _batched(docs, _BATCH):
            yield from zip(batch, anonymizer.anonymize_many([d.text for d in batch]))
        return
    types = list(anonymizer.detector.types)
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(anonymizer.operator, types, key)) as pool:
        pending: list = []
        for batch in _batched(docs, _BATCH):
            pending.append((batch, pool.submit(_anonymize_batch, [d.text for d in batch])))
            if len(pending) > 4 * workers:
                batch0, fut = pending.pop(0)
                yield from zip(batch0, fut.result())
        for batch0, fut in pending:
            yield from zip(batch0, fut.result())


# ---------------------------------------------------------------- the command


_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


class _Writer:
    def __init__(self, path: Path):
        self.path = path
        self.jsonl = path.suffix.lower() == ".jsonl"
        self.tmp = temp_path(path, "scrub")  # removed by the next command if this one is killed
        self.f = open(self.tmp, "x", encoding="utf-8")
        self.first = True

    def write(self, doc: Document, text: str) -> bool:
        """Write one document; True when blank lines inside it had to be joined (text output)."""
        if self.jsonl:
            record = {"text": text}
            if doc.label is not None:
                record["label"] = doc.label
            self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
            return False
        joined = _BLANK_LINES.sub("\n", text.strip("\n"))
        self.f.write(("" if self.first else "\n") + joined + "\n")
        self.first = False
        return joined != text.strip("\n")

    def commit(self) -> None:
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def scrub(sources: Sequence[str], out: str | Path, *, operator: str = "placeholder",
          types: Sequence[str] | None = None, key: bytes | None = None, report: str | Path | None = None,
          text_field: str = "text", workers: int | None = None, overwrite: bool = False) -> ScrubReport:
    """Scrub a corpus into `out` (JSONL when it ends in .jsonl, else blank-line separated text).

    Args:
        sources: Corpus: files, directories, JSONL or builtin:NAME.
        out: Scrubbed corpus to write: .jsonl, else blank-line separated text.
        operator: mask, placeholder (<PHONE>), pseudonym (consistent fakes) or drop.
        types: Types to find (None: all): CN_ID, PHONE, EMAIL, BANK_CARD, IP_ADDRESS,
            URL_CREDENTIALS, PASSPORT, ADDRESS, VEHICLE_PLATE, PERSON.
        key: Pseudonym key: the same key gives the same fakes across corpora (None: a random one).
        report: Write counts per type and masked examples to this JSON file.
        text_field: JSONL field that holds the text.
        workers: Worker processes (None: cores, at most 4).
        overwrite: Replace an existing output file (and --report file) that candorlm wrote.
    """
    out = Path(out)
    claim_file(out, "scrubbed", overwrite=overwrite, inputs=sources, walked=True)
    if report is not None:  # checked before the work, as the output is: never a source, never the output
        report = Path(report)
        if report.resolve() == out.resolve():
            raise CandorError(f"--report and -o/--out both name {out}; give the report a file name of its own")
        claim_file(report, REPORT_KIND, overwrite=overwrite, inputs=sources, what="--report", walked=True)
    corpus = Corpus(sources, text_field=text_field)
    anonymizer = Anonymizer(operator, types, key)
    workers = workers or min(4, os.cpu_count() or 1)
    rep = ScrubReport(operator, list(anonymizer.detector.types))
    total = sum(Path(s).stat().st_size if Path(s).is_file() else 0 for s in corpus.sources) or None
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with terminate_cleanly():  # SIGTERM, like Ctrl-C, removes the partial output
        writer = _Writer(out)
        try:
            with progress_bar("scrubbing", total=total, unit="B") as bar:
                for doc, result in anonymize_documents(corpus, anonymizer, anonymizer.pseudonymize.key
                                                       if anonymizer.pseudonymize else None, workers):
                    rep.add(doc, result)
                    if result.text is not None and writer.write(doc, result.text):
                        rep.blank_lines_joined += 1
                    bar.advance(len(doc.text.encode("utf-8")))
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    record_file(out, "scrubbed", "candorlm scrub")
    rep.seconds = time.perf_counter() - start
    if report is not None:
        write_owned_text(report, rep.to_json(), REPORT_KIND, "candorlm scrub")
    return rep


class ScrubbedCorpus(CorpusFilter):
    """A corpus whose documents come out scrubbed (dropped ones left out): `prepare --scrub`."""

    def __init__(self, corpus: Corpus, operator: str = "placeholder", types: Sequence[str] | None = None,
                 key: bytes | None = None, workers: int | None = None):
        super().__init__(corpus)
        self.anonymizer = Anonymizer(operator, types, key)
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.scrub_report = ScrubReport(operator, list(self.anonymizer.detector.types))

    def save_report(self, directory: str | Path) -> None:
        """The report of the last pass, as `prepare` keeps it: DATA_DIR/scrub_report.json."""
        self.scrub_report.save(Path(directory) / "scrub_report.json")

    def __iter__(self) -> Iterator[Document]:
        rep = ScrubReport(self.anonymizer.operator, list(self.anonymizer.detector.types))
        key = self.anonymizer.pseudonymize.key if self.anonymizer.pseudonymize else None
        start = time.perf_counter()
        for doc, result in anonymize_documents(self.corpus, self.anonymizer, key, self.workers):
            rep.add(doc, result)
            if result.text is not None:
                yield Document(result.text, doc.source, doc.label)
        rep.seconds = time.perf_counter() - start
        self.scrub_report = rep
