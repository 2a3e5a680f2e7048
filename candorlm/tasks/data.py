"""Task data formats, shared by every task: JSONL records, TSV pairs, deterministic splits.

    sentiment   JSONL  {"text": "...", "label": "pos"}
    translate   TSV    source<TAB>target          or JSONL {"source": "...", "target": "..."}
    qa          JSONL  {"context": "...", "question": "...", "answer": "..."}
    chat        JSONL  {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

Every record keeps where it came from (`file:line`), so a bad record is reported by file and
line. A whole file is read and checked before anything is trained or written: bad input
stops the command with nothing half-written.

Splits are by a stable hash of a key (the text, or the document a sentence came from), so the
same example always lands in the same split, whatever the file order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from candorlm.corpus import detect_encoding, document_hash
from candorlm.errors import CandorError
from candorlm.tokenizer import CHAT_ROLES

TEST_FRACTION = 0.1  # of all examples: the fixed test split
DEV_FRACTION = 0.05  # of the training examples: held out to pick the best epoch


@dataclass(frozen=True)
class Record:
    """One example: its fields and where it came from ("path:line" or "builtin:NAME#i")."""

    fields: dict[str, Any]
    where: str

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


def split_of(key: str, test_fraction: float = TEST_FRACTION, dev_fraction: float = DEV_FRACTION) -> str:
    """'test', 'dev' or 'train' for an example keyed by `key` (a text, or a document id).

    test: hash(key) below test_fraction of the range; dev: a second, independent hash of the
    remaining keys below dev_fraction. Same key, same split, on every machine and run.
    """
    if document_hash(key) < test_fraction * 2**64:
        return "test"
    if document_hash("dev\x00" + key) < dev_fraction * 2**64:
        return "dev"
    return "train"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise CandorError(f"data file not found: {path}")
    encoding = detect_encoding(path)
    lineno = 0
    try:
        with open(path, encoding=encoding, errors="strict") as f:
            for lineno, line in enumerate(f, 1):
                yield lineno, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise CandorError(f"{path}:{lineno + 1}: not valid {encoding} ({exc.reason}); convert the file to UTF-8") from None


def read_jsonl_records(path: str | Path, required: dict[str, type], example: str) -> list[Record]:
    """Records of a JSONL file; each must be an object with the `required` fields of those types
    (strings must not be blank). `example` is a valid line, shown in error messages."""
    path = Path(path)
    records = []
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CandorError(f"{where}: not valid JSON ({exc.msg}). Each line must be one object, like {example}") from None
        if not isinstance(obj, dict):
            raise CandorError(f"{where}: expected a JSON object like {example}, got {type(obj).__name__}")
        for key, kind in required.items():
            if key not in obj:
                raise CandorError(f"{where}: no '{key}' field (found: {', '.join(obj) or 'none'}). Expected {example}")
            if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
                raise CandorError(f"{where}: field '{key}' is {type(obj[key]).__name__}, expected {kind.__name__}")
            if isinstance(obj[key], str) and not obj[key].strip():
                raise CandorError(f"{where}: field '{key}' is empty")
        records.append(Record(obj, where))
    if not records:
        raise CandorError(f"{path} holds no records; expected JSON lines like {example}")
    return records


def read_pairs(path: str | Path) -> list[Record]:
    """Sentence pairs from a TSV file (source<TAB>target per line) or a JSONL file
    ({"source", "target"}); blank lines are skipped, anything else malformed is an error."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return read_jsonl_records(path, {"source": str, "target": str}, '{"source": "ni hao", "target": "你好"}')
    records = []
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        cols = line.split("\t")
        if len(cols) != 2:
            raise CandorError(f"{where}: expected 2 tab-separated columns (source<TAB>target), found {len(cols)}")
        source, target = (c.strip() for c in cols)
        if not source or not target:
            raise CandorError(f"{where}: the {'source' if not source else 'target'} is empty; "
                              f"every line needs both a source and a target")
        records.append(Record({"source": source, "target": target}, where))
    if not records:
        raise CandorError(f"{path} holds no sentence pairs; expected lines like 'ni hao<TAB>你好'")
    return records


def split_records(records: list[Record], key: str | None = None) -> dict[str, list[Record]]:
    """Records by split ('train', 'dev', 'test'), keyed by the field `key` (or the whole record)."""
    out: dict[str, list[Record]] = {"train": [], "dev": [], "test": []}
    for rec in records:
        k = rec[key] if key else json.dumps(rec.fields, ensure_ascii=False, sort_keys=True)
        out[split_of(str(k))].append(rec)
    return out


def spread(records: list[Record], limit: int | None) -> list[Record]:
    """`limit` records evenly spaced over `records` (all of them when `limit` is None or larger): a
    data file may be sorted (by label, by source), so its first N would not be a fair sample."""
    if not limit or limit >= len(records):
        return records
    step = len(records) / limit
    return [records[int(i * step)] for i in range(limit)]


def check_messages(rec: Record, training: bool = True) -> list[dict[str, str]]:
    """The messages of a conversation record, checked: a list of {role, content} with known roles
    and string contents, and at least one assistant turn (training) or a last user turn (a
    conversation to reply to)."""
    messages = rec["messages"]
    if not isinstance(messages, list) or not messages:
        raise CandorError(f"{rec.where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise CandorError(f"{rec.where}: message {i} must be an object with 'role' and 'content', got {m!r}")
        if m["role"] not in CHAT_ROLES:
            raise CandorError(f"{rec.where}: message {i} has the unknown role {m['role']!r}; "
                              f"roles are {', '.join(CHAT_ROLES)}")
        if not isinstance(m["content"], str):
            raise CandorError(f"{rec.where}: message {i} has content of type {type(m['content']).__name__}, "
                              f"expected a string")
    if not training and messages[-1]["role"] != "user":
        raise CandorError(f"{rec.where}: the last message is the {messages[-1]['role']}'s; a reply follows a user message")
    if training and not any(m["role"] == "assistant" for m in messages):
        raise CandorError(f"{rec.where}: the conversation has no assistant turn, so there is nothing to learn from it")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
