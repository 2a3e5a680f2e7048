import json
import logging

import pytest

from candorlm.corpus import Corpus, detect_encoding, review_records
from candorlm.errors import CandorError


def test_text_file_documents_split_at_blank_lines(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("第一段。\n还是第一段。\n\n\n第二段。\n", encoding="utf-8")
    docs = list(Corpus([f]))
    assert [d.text for d in docs] == ["第一段。\n还是第一段。", "第二段。"]


def test_gbk_file_is_decoded_and_reported(tmp_path):
    text = "人民日报发表社论，祝贺新年。\n\n中国经济稳步增长。"
    f = tmp_path / "gbk.txt"
    f.write_bytes(text.encode("gbk"))
    assert detect_encoding(f) == "gb18030"
    corpus = Corpus([f])
    assert "\n\n".join(d.text for d in corpus) == text
    assert corpus.report.encodings[str(f)] == "gb18030"


def test_utf8_bom_and_utf16(tmp_path):
    a = tmp_path / "bom.txt"
    a.write_bytes("\ufeff你好，世界".encode("utf-8"))
    b = tmp_path / "u16.txt"
    b.write_text("再见", encoding="utf-16")
    assert [d.text for d in Corpus([a, b])] == ["你好，世界", "再见"]


def test_directory_recursive_skips_binary_with_warning(tmp_path, caplog):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("markdown text", encoding="utf-8")
    (tmp_path / "a.txt").write_text("plain text", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "json text"}) + "\n", encoding="utf-8")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "ignored.bin").write_bytes(b"xx")
    with caplog.at_level(logging.WARNING, logger="candorlm"):
        corpus = Corpus([tmp_path])
        texts = [d.text for d in corpus]
    assert texts == ["plain text", "json text", "markdown text"]
    assert "binary" in caplog.text and str(tmp_path / "blob.txt") in corpus.report.skipped


def test_binary_named_file_is_an_error(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"\x00" * 100)
    with pytest.raises(CandorError, match="binary"):
        list(Corpus([f]))


def test_undecodable_text_is_an_error(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(CandorError, match="neither UTF-8 nor GBK"):
        list(Corpus([f]))


def test_jsonl_field_and_errors(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"body": "one", "label": "pos"}\n\n{"body": "two"}\n', encoding="utf-8")
    docs = list(Corpus([f], text_field="body"))
    assert [(d.text, d.label) for d in docs] == [("one", "pos"), ("two", None)]
    with pytest.raises(CandorError, match=r"d.jsonl:1: no 'text' field \(found: body, label\)"):
        list(Corpus([f]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(CandorError, match="bad.jsonl:2: not valid JSON"):
        list(Corpus([bad]))


def test_missing_path_and_unknown_builtin():
    with pytest.raises(CandorError, match="not found"):
        Corpus(["/no/such/file.txt"])
    with pytest.raises(CandorError, match="builtin:peoples-daily"):
        Corpus(["builtin:wikipedia"])


def test_builtin_peoples_daily_is_article_text_without_tags():
    docs = []
    for doc in Corpus(["builtin:peoples-daily"]):
        docs.append(doc)
        if len(docs) == 50:
            break
    assert docs[0].text.startswith("迈向充满希望的新世纪")
    assert all("/n" not in d.text and "/w" not in d.text for d in docs)
    assert all(not d.text.startswith("（") for d in docs)


def test_builtin_reviews_are_deduplicated_with_labels():
    records = review_records()
    texts = [t for t, _ in records]
    assert len(texts) == len(set(texts)) > 17000
    assert {label for _, label in records} == {"pos", "neg"}


def test_builtin_python_docs_is_english():
    docs = list(Corpus(["builtin:python-docs"]))
    assert len(docs) > 100
    assert sum(len(d.text) for d in docs) > 400_000
    assert any("assignment" in d.text for d in docs)
