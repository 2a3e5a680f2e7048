import json
import logging

import pytest

from candorlm.corpus import MAX_DOC_CHARS, MAX_LINE_CHARS, Corpus, detect_encoding, review_records
from candorlm.errors import CandorError


def test_text_file_documents_split_at_blank_lines(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("第一段。\n还是第一段。\n\n\n第二段。\n", encoding="utf-8")
    docs = list(Corpus([f]))
    assert [d.text for d in docs] == ["第一段。\n还是第一段。", "第二段。"]


def test_a_line_longer_than_a_document_is_cut_while_streaming_and_counted(tmp_path, caplog):
    # One line of 2.5 documents between ordinary ones: cut into full documents, nothing lost,
    # the line counted once, and the reader never asks the file for more than a piece.
    long = "".join(chr(0x4E00 + i % 500) for i in range(int(2.5 * MAX_DOC_CHARS)))
    path = tmp_path / "a.txt"
    path.write_text(f"first\n\n{long}\nsame paragraph\n\n{'x' * (MAX_LINE_CHARS * 3)}\n\nlast", encoding="utf-8")
    corpus = Corpus([path])
    with caplog.at_level(logging.WARNING, logger="candorlm"):
        docs = [d.text for d in corpus]
    assert [len(d) for d in docs] == [5, MAX_DOC_CHARS, MAX_DOC_CHARS, MAX_DOC_CHARS // 2 + len("\nsame paragraph"),
                                      MAX_LINE_CHARS * 3, 4]
    assert "".join(docs[1:4]) == long + "\nsame paragraph"
    assert corpus.report.cut_lines == {str(path): 1}  # the 30k line fits a document: read in pieces, not cut
    assert "1 line longer than 100,000 characters cut" in caplog.text


def test_a_blank_piece_inside_a_long_line_is_not_a_paragraph_break(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a" + " " * (MAX_LINE_CHARS * 2) + "b\n", encoding="utf-8")
    assert [d.text for d in Corpus([path])] == ["a" + " " * (MAX_LINE_CHARS * 2) + "b"]


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


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_without_a_byte_order_mark_are_read_not_called_binary(tmp_path, encoding):
    # As Windows tools and some exporters write it: no BOM. The ASCII in it (newlines, digits,
    # Latin letters) puts NULs on one side of each character; so do characters like 一 (U+4E00).
    text = "人民日报 1998年1月1日\n一九九八年，一开始就很好。\n\nCandor LM: 第二段，一二三。"
    f = tmp_path / "notes.txt"
    f.write_bytes(text.encode(encoding))
    assert detect_encoding(f) == encoding
    corpus = Corpus([f])
    assert "\n\n".join(d.text for d in corpus) == text
    assert corpus.report.encodings[str(f)] == encoding
    (tmp_path / "notes.jsonl").write_bytes((json.dumps({"text": text}, ensure_ascii=False) + "\n").encode(encoding))
    assert [d.text for d in Corpus([tmp_path / "notes.jsonl"])] == [text]


def test_utf32_with_a_byte_order_mark_is_not_taken_for_utf16(tmp_path):
    f = tmp_path / "u32.txt"
    f.write_text("再见，世界", encoding="utf-32")
    assert detect_encoding(f) == "utf-32" and [d.text for d in Corpus([f])] == ["再见，世界"]


@pytest.mark.parametrize("blob", [b"\x00\x01\x02binary", b"\x00" * 100, bytes(range(256)) * 300, b"\x00\xff" * 50,
                                  b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(64)) * 4])
def test_binary_with_nuls_is_still_binary_and_the_message_says_why(tmp_path, blob):
    f = tmp_path / "blob.txt"
    f.write_bytes(blob)
    with pytest.raises(CandorError, match="binary file, not text: it has NUL bytes, and read as UTF-16 or UTF-32"):
        detect_encoding(f)


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
