"""The extractive QA reader (--head span) and builtin:qa-hard: legal spans only, answers cut from
the context's exact characters, a tiny reader that learns, and a hard set string matching fails."""

import json
import re

import pytest
import torch

from candorlm.model import SpanReader, best_spans, build_model
from candorlm.config import ModelConfig
from candorlm.errors import CandorError
from candorlm.tasks import evaluate_task, finetune
from candorlm.tasks.qa import align_and_copy, builtin_splits, hard_splits, scores
from candorlm.tasks.qa_hard import hard_question
from candorlm.tasks.qa_span import encode, encode_with_offsets, question_flags
from candorlm.tokenizer import train_tokenizer

TEXTS = ["江泽民主席在北京会见了美国客人。", "The meeting in Beijing ended at 3pm.", "１９９８年１月１日，李鹏在上海。",
         "新华社记者周确摄", "mixed 中文 and ASCII 文本 text"]


def test_best_spans_are_legal_and_best():
    g = torch.Generator().manual_seed(0)
    start, end = torch.randn(6, 12, generator=g), torch.randn(6, 12, generator=g)
    allowed = torch.zeros(6, 12, dtype=torch.bool)
    for row in range(6):
        allowed[row, 2 + row % 3:10 - row % 2] = True
    allowed[5] = False
    spans = best_spans(start, end, allowed, max_len=3)
    assert spans[5] == (0, -1)  # nothing allowed: the empty answer
    for row, (i, j) in enumerate(spans[:5]):
        assert allowed[row, i] and allowed[row, j] and i <= j < i + 3
        legal = [(a, b) for a in range(12) for b in range(a, min(a + 3, 12)) if allowed[row, a] and allowed[row, b]]
        assert start[row, i] + end[row, j] == max(start[row, a] + end[row, b] for a, b in legal)


@pytest.mark.parametrize("kind", ["char", "bpe", "word"])
def test_offsets_map_to_the_exact_characters(kind):
    tok = train_tokenizer(TEXTS * 20, kind, 600)
    for text in TEXTS:
        ids, spans = encode_with_offsets(tok, text)
        assert ids == tok.encode(text)
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        assert all(a < b for a, b in spans)
        assert {c for a, b in spans for c in range(a, b)} == set(range(len(text)))
    # a gold answer goes to tokens and back to the same characters whenever its edges are token edges
    for context, answer in (("江泽民主席在北京会见了美国客人。", "北京"), ("The meeting in Beijing ended at 3pm.", "Beijing"),
                            ("１９９８年１月１日，李鹏在上海。", "李鹏")):
        ex = encode(tok, context, "问题？", 128, answer)
        s, e = ex.gold
        got = context[ex.spans[s][0]:ex.spans[e][1]]
        assert answer in got
        if kind == "char":
            assert got == answer


def test_question_flags_mark_shared_bigrams():
    assert question_flags("江泽民在北京会见客人。", "谁在北京会见客人？") == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0]


def test_span_reader_reads_a_decoder_and_an_encoder():
    for arch in ("encoder", "decoder"):
        cfg = ModelConfig(arch=arch, vocab_size=50, d_model=16, n_layers=1, n_heads=2, max_seq_len=32)
        reader = SpanReader(build_model(cfg))
        ids = torch.randint(0, 50, (2, 10))
        start, end = reader(ids, torch.ones_like(ids), torch.zeros_like(ids))
        assert start.shape == end.shape == (2, 10)
        assert reader.backbone.hook_embed.fns == []  # the feature hook is removed after the pass


def test_qa_hard_rule_drops_neighbours_and_adds_a_clause():
    line = [("国务院", "nt"), ("总理", "n"), ("李", "nr"), ("鹏", "nr"), ("昨天", "t"), ("会见", "v"), ("了", "u"),
            ("客人", "n"), ("，", "w"), ("双方", "n"), ("交谈", "v"), ("。", "w"), ("会谈", "v"), ("气氛", "n"),
            ("友好", "a"), ("。", "w")]
    q = hard_question(line, "李鹏", "谁")
    assert q == "会谈气氛友好，双方交谈，国务院谁会见了客人？"
    assert align_and_copy("".join(w for w, _ in line), q) != "李鹏"


@pytest.fixture(scope="module")
def splits():
    return builtin_splits(), hard_splits()


def test_builtin_qa_held_out_paragraphs_are_unseen(splits):
    for s in splits:
        train = {r["context"] for r in s["train"]}
        held = [r["context"] for r in s["dev"] + s["test"]]
        assert not train & set(held) and len(held) == len(set(held))


def test_qa_hard_defeats_string_matching_by_construction(splits):
    easy, hard = splits
    assert [r["answer"] for r in hard["test"]] == [r["answer"] for r in easy["test"]]  # same items, other wording
    golds = [r["answer"] for r in hard["test"]]
    assert scores([align_and_copy(r["context"], r["question"]) for r in hard["test"]], golds)["exact_match"] < 0.6
    assert scores([align_and_copy(r["context"], r["question"]) for r in easy["test"]], golds)["exact_match"] > 0.9


def _trivial_rows(n):
    names, places = ["张三", "李四", "王五", "赵六", "钱七", "孙八"], ["北京", "上海", "广州", "深圳", "南京"]
    rows = []
    for i in range(n):
        who, where = names[i % 6], places[(i // 6) % 5]
        ask_who = i % 2 == 0
        rows.append({"context": f"今天{who}在{where}开会。",
                     "question": f"今天谁在{where}开会？" if ask_who else f"今天{who}在哪里开会？",
                     "answer": who if ask_who else where})
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_tiny_reader_learns_a_trivial_set(tmp_path, arch):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _trivial_rows(600)), encoding="utf-8")
    result = finetune(None, task="qa", data=str(data), out=tmp_path / "run", head="span", arch=arch, epochs=4,
                      batch_size=16, lr=3e-3, threads=1, precision="fp32",
                      overrides=["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=48"])
    assert result["model"]["head"] == "span"
    assert result["model"]["exact_match"] >= 0.9, result["model"]
    again = evaluate_task(tmp_path / "run", "qa")  # loads the reader back from the run directory
    assert again["model"] == result["model"]


@pytest.mark.parametrize("head, arch, message", [("bogus", "encoder", "unknown qa head 'bogus'. Valid: generate, span."),
                                                 ("generate", "encoder", "(an encoder reads with --head span)"),
                                                 ("span", "seq2seq", "the span reader needs an encoder or a decoder")])
def test_a_wrong_head_is_one_clear_error_and_writes_nothing(tmp_path, head, arch, message):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _trivial_rows(40)), encoding="utf-8")
    with pytest.raises(CandorError, match=re.escape(message)):
        finetune(None, task="qa", data=str(data), out=tmp_path / "run", head=head, arch=arch)
    assert not (tmp_path / "run").exists()
