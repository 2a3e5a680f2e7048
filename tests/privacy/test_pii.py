"""Personal data: detection on a labelled set and on People's Daily, the operators, `scrub`, `prepare --scrub`."""

import json
import random
import re

import pytest

from candorlm.corpus import Document
from candorlm.errors import CandorError
from candorlm.privacy import pii_testset, zh_names, zh_names_fit, zh_spans
from candorlm.privacy.anonymize import Anonymizer, Pseudonymizer, mask
from candorlm.privacy.fakes import FAKERS
from candorlm.privacy.pii import (STRUCTURED_TYPES, PIIDetector, fold, id_check_digit, luhn_ok, valid_card,
                                  valid_cn_id)
from candorlm.privacy.scrub import ScrubbedCorpus, scrub
from tests.conftest import run_cli


def test_checksums_and_validity():
    assert valid_cn_id("11010519491231002X") and valid_cn_id("11010519491231002x")
    assert not valid_cn_id("110105194912310021")  # wrong check digit
    assert not valid_cn_id("11010519490231002X")  # 31 February
    assert not valid_cn_id("99010519491231002X")  # no province 99
    assert id_check_digit("11010519491231002") == "X"
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert valid_card("6222 0212 3456 7890") is luhn_ok("6222021234567890")
    assert not valid_card("2024011512345678")  # Luhn aside, no card network starts 2024


def test_structured_types_meet_the_bar_on_the_labelled_set():
    samples = pii_testset.build(seed=11, per_type=80, lookalikes=400)
    result = pii_testset.score(PIIDetector([t for t in pii_testset.ENTITY_TYPES if t != "PERSON"]), samples)
    for t in STRUCTURED_TYPES:
        assert result[t]["planted"] >= 80
        assert result[t]["recall"] >= 0.98, (t, result[t])
        assert result[t]["precision"] >= 0.95, (t, result[t])
    assert result["lookalikes"]["survival_rate"] >= 0.99, result["lookalikes"]


def test_known_misses_are_misses():
    # The limits we document: spelled-out numbers and e-mails, pinyin names.
    result = pii_testset.score(PIIDetector(), pii_testset.build_known_misses(per_kind=5))
    assert result["PHONE"]["recall"] < 0.5 and result["EMAIL"]["recall"] == 0


def test_chinese_neighbours_full_width_digits_and_offsets():
    text = "邮箱zhangwei@example.com，手机１３８－１２３４－５６７８，IP:fe80::1ff:fe23:4567:890a。"
    found = {(e.type, e.text) for e in PIIDetector().detect(text)}
    assert ("EMAIL", "zhangwei@example.com") in found
    assert ("PHONE", "１３８－１２３４－５６７８") in found  # the original full-width text, at its own offsets
    assert ("IP_ADDRESS", "fe80::1ff:fe23:4567:890a") in found
    assert fold("１２月") == "12月" and len(fold("ｗｏｒｌｄ①")) == 6


def test_lookalikes_in_context_survive():
    text = ("订单号2024011512345678901，日期2024-01-15 12:30:45，版本10.0.19041.1，MAC 00:1A:2B:3C:4D:5E，"
            "std::vector，@张三，user@localhost，G1234次，身份证号110105194912310021。")
    assert [e for e in PIIDetector(STRUCTURED_TYPES).detect(text)] == []


def test_names_on_held_out_peoples_daily():
    # Articles of split 4 were never seen in fitting or in choosing the threshold.
    model = zh_names.default_model()
    gold_n = covered = 0
    for i, article in enumerate(zh_names_fit.articles("test")):
        if i == 120:
            break
        for text, gold in article:
            pred = model.find(text)
            gold_n += len(gold)
            covered += zh_names_fit._covered(gold, pred)
    assert gold_n > 400
    assert covered / gold_n >= 0.85


def test_name_scores_equal_their_features():
    # The fast per-position scoring must equal the plain sum over each span's features.
    model = zh_names.default_model()
    spans, ctx = zh_spans.candidate_spans(zh_spans.char_ids("国家主席江泽民会见了克林顿总统和欧阳修先生。"), with_features=True)
    fast = model.scores(spans, ctx)
    plain = model.weights[spans.features].sum(1)
    assert abs(fast - plain).max() < 1e-4
    found = {(s, e) for s, e in model.find("国家主席江泽民会见了克林顿总统。")}
    assert (4, 7) in found and (10, 13) in found


def test_batched_detection_equals_one_call_each():
    docs = [d.text for _, d in zip(range(30), __import__("candorlm.corpus").corpus.peoples_daily_documents())]
    docs += ["", "abc", "王小明", "电话13812345678，张伟"]
    detector = PIIDetector()
    assert detector.detect_many(docs) == [detector.detect(d) for d in docs]


def test_mask_and_placeholder():
    text = "王小明的电话是13812345678。"
    assert Anonymizer("placeholder").anonymize(text).text == "<PERSON>的电话是<PHONE>。"
    assert Anonymizer("mask", types=["PHONE"]).anonymize(text).text == "王小明的电话是***********。"
    assert mask("138-1234-5678") == "***-****-****"
    assert Anonymizer("drop").anonymize(text).text is None
    assert Anonymizer("drop").anonymize("今天天气很好。").text == "今天天气很好。"


def test_pseudonyms_are_consistent_keyed_and_valid():
    key = b"k" * 32
    p1, p2 = Pseudonymizer(key), Pseudonymizer(key)
    assert p1("PHONE", "138-1234-5678") == p2("PHONE", "138-1234-5678")
    same = p1("PHONE", "13812345678")
    assert re.sub(r"\D", "", p1("PHONE", "138-1234-5678")) == same  # one number, one fake, either format
    assert Pseudonymizer(b"j" * 32)("PHONE", "13812345678") != same
    fake_id = p1("CN_ID", "11010519491231002X")
    assert valid_cn_id(fake_id) and fake_id != "11010519491231002X"
    assert valid_card(p1("BANK_CARD", "6222021234567890128"))
    detector = PIIDetector()
    rng = random.Random(0)
    for t, make in FAKERS.items():
        hits = 0
        for _ in range(20):
            value = make(rng)
            text = f"记录：https://{value}@db.example.com/ 。" if t == "URL_CREDENTIALS" else f"联系人{value}，记录。"
            hits += any(e.type == t and e.text == value for e in detector.detect(text))
        assert hits >= (16 if t == "PERSON" else 20), (t, hits)  # names: the model's recall, not a format check
    anon = Anonymizer("pseudonym", key=key)
    a = anon.anonymize("张伟说：请打13812345678。").text
    b = anon.anonymize("张伟说：已经打了13812345678。").text
    assert a.split("说")[0] in b and re.search(r"1\d{10}", a).group() in b


@pytest.mark.slow
def test_scrub_command_writes_clean_output_and_masked_report(tmp_path):
    src = tmp_path / "notes.txt"
    secret = ["13812345678", "zhangwei@example.com", "11010519491231002X", "6222021234567890128"]
    src.write_text("第一份记录：手机13812345678，邮箱zhangwei@example.com。\n\n"
                   "第二份：身份证11010519491231002X，卡号6222021234567890128。\n\n今天没有个人信息。\n",
                   encoding="utf-8")
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    proc = run_cli("scrub", src, "-o", out, "--report", report, "--workers", "1")
    assert "3 documents" in proc.stdout + proc.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 3 and "<PHONE>" in records[0]["text"] and "<CN_ID>" in records[1]["text"]
    rep_text = report.read_text(encoding="utf-8")
    assert not any(s in rep_text for s in secret)  # examples only masked
    rep = json.loads(rep_text)
    assert rep["counts"]["PHONE"] == 1 and rep["counts"]["BANK_CARD"] == 1 and rep["documents_changed"] == 2
    assert rep["examples"]["PHONE"][0]["masked"] == "***********"
    dropped = run_cli("scrub", src, "-o", tmp_path / "kept.txt", "--operator", "drop", "--workers", "1")
    assert (tmp_path / "kept.txt").read_text(encoding="utf-8").strip() == "今天没有个人信息。"
    assert "2 dropped" in dropped.stdout + dropped.stderr


def test_scrub_workers_match_one_process(tmp_path, corpus_file):
    one = scrub([str(corpus_file)], tmp_path / "one.jsonl", workers=1, types=["PERSON", "PHONE"])
    two = scrub([str(corpus_file)], tmp_path / "two.jsonl", workers=2, types=["PERSON", "PHONE"])
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    assert one.counts == two.counts and one.counts["PERSON"] > 100


def test_bad_operator_and_type_are_clear_errors(tmp_path):
    with pytest.raises(CandorError, match="unknown operator"):
        Anonymizer("shred")
    with pytest.raises(CandorError, match="Valid: URL_CREDENTIALS"):
        PIIDetector(["SSN"])


def test_prepare_scrub_keeps_planted_values_out_of_the_shards(tmp_path, corpus_file):
    from candorlm.prepare import prepare
    from candorlm.privacy.prepare_filters import prepare_filters
    from candorlm.shards import ShardSet

    src = tmp_path / "c.txt"
    src.write_text(corpus_file.read_text(encoding="utf-8") + "\n\n联系电话13812345678，邮箱zhangwei@example.com。\n",
                   encoding="utf-8")
    out = tmp_path / "data"
    prepare([str(src)], out, tokenizer="char", vocab_size=3000, val_fraction=0.1,
            filters=prepare_filters(scrub=True, workers=1))
    shards = ShardSet(out)
    text = "".join(shards.tokenizer.decode(a.tolist()) for s in ("train", "val") for a in shards.arrays(s))
    assert "13812345678" not in text and "zhangwei" not in text and "<PHONE>" in text
    report = json.loads((out / "scrub_report.json").read_text(encoding="utf-8"))
    assert report["counts"]["PHONE"] == 1 and report["counts"]["EMAIL"] == 1


def test_scrubbed_corpus_wraps_documents():
    class Tiny:
        sources = ["x"]
        report = None

        def __iter__(self):
            yield Document("电话13812345678", "x:1")
            yield Document("无", "x:2")

    docs = list(ScrubbedCorpus(Tiny(), "placeholder", workers=1))
    assert [d.text for d in docs] == ["电话<PHONE>", "无"]
