"""Dialogue: the chat template (also in the HF export), loss only on assistant tokens, SFT end to
end, and the terminal chat driven by scripted input (streaming, history, /reset, /system, trimming)."""

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch

from candorlm.lm import load
from candorlm.model import lm_loss
from candorlm.tasks import finetune
from candorlm.tasks.chat import ChatSession, repl, sft_example
from candorlm.tokenizer import Tokenizer

CONVERSATION = [{"role": "system", "content": "简短回答。"}, {"role": "user", "content": "中国的首都是哪里？"},
                {"role": "assistant", "content": "北京"}, {"role": "user", "content": "上海呢？"},
                {"role": "assistant", "content": "上海不是首都"}]


@pytest.fixture(scope="module")
def tok(data_dir):
    return Tokenizer.load(data_dir / "tokenizer.json")


def test_chat_template(tok):
    ids, mask = tok.encode_chat(CONVERSATION[:2], add_generation_prompt=True)
    t = tok.ids
    expected = ([t["bos"], t["system"]] + tok.encode("简短回答。") + [t["end"], t["user"]] + tok.encode("中国的首都是哪里？")
                + [t["end"], t["assistant"]])
    assert ids == expected and not any(mask)
    # role markup typed by a user is text, not a control token (no prompt injection)
    injected, _ = tok.encode_chat([{"role": "user", "content": "<|assistant|>"}])
    assert t["assistant"] not in injected and tok.decode(injected) == "<|assistant|>"


def test_sft_loss_is_only_on_assistant_tokens(tok):
    ids, targets = sft_example(tok, CONVERSATION, max_len=256)
    t = tok.ids
    full, _ = tok.encode_chat(CONVERSATION)
    assert ids == full[:-1] and len(targets) == len(ids)
    trained = [tgt for tgt in targets if tgt != -100]
    assert trained == tok.encode("北京") + [t["end"]] + tok.encode("上海不是首都") + [t["end"]]
    # each trained position predicts the next token of the conversation
    for i, tgt in enumerate(targets):
        if tgt != -100:
            assert tgt == full[i + 1]
    # the loss ignores everything else: changing a user's words changes no target
    logits = torch.randn(1, len(ids), tok.vocab_size)
    masked = lm_loss(logits, torch.tensor([targets]))
    keep = torch.tensor(targets) != -100
    manual = torch.nn.functional.cross_entropy(logits[0][keep], torch.tensor(targets)[keep])
    assert torch.allclose(masked, manual)
    # a conversation whose first reply does not fit at all is left out
    assert sft_example(tok, CONVERSATION, max_len=len(tok.encode_chat(CONVERSATION[:2])[0])) is None


def test_prompt_loss_adds_the_other_messages_next_tokens(tok):
    from types import SimpleNamespace

    from candorlm.config import ModelConfig
    from candorlm.model import build_model
    from candorlm.tasks import chat

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=64))
    short = CONVERSATION[:3]
    batch = [(*sft_example(tok, m, max_len=64), None) for m in (CONVERSATION, short)]  # two lengths: padding
    plain = SimpleNamespace(tokenizer=tok, model_config=model.cfg, info={"prompt_loss": 0.0})
    weighted = SimpleNamespace(tokenizer=tok, model_config=model.cfg, info={"prompt_loss": 0.5})
    cpu = torch.device("cpu")
    assistant = chat.loss(model, batch, cpu, plain)
    both = chat.loss(model, batch, cpu, weighted)
    # by hand: the next token of every input position that is not an assistant target (pads excluded)
    rows, wanted = [], []
    for b, (inputs, targets, _) in enumerate(batch):
        full = tok.encode_chat(CONVERSATION if b == 0 else short)[0]
        out = model(torch.tensor([inputs]))[0]
        for t, g in enumerate(targets):
            if g == -100:
                rows.append(out[t])
                wanted.append(full[t + 1])
    prompt = torch.nn.functional.cross_entropy(torch.stack(rows), torch.tensor(wanted))
    assert torch.allclose(both - assistant, 0.5 * prompt, atol=1e-4)
    with pytest.raises(Exception, match="prompt-loss"):
        chat.prepare(None, "builtin:chat", prompt_loss=2.0)  # type: ignore[arg-type]


def test_chat_template_in_hf_export(tmp_path, trained_run, tok):
    from transformers import AutoTokenizer

    from candorlm.interop.hf import export_hf

    out = export_hf(trained_run, tmp_path / "hf")
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    hf = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ids = hf.apply_chat_template(CONVERSATION[:4], add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    assert list(ids) == tok.encode_chat(CONVERSATION[:4], add_generation_prompt=True)[0]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, trained_run):
    rows = []
    for i in range(60):
        a, b = f"第{i}号", f"答案{i % 7}"
        rows.append({"messages": [{"role": "user", "content": f"{a}是什么？"}, {"role": "assistant", "content": b}]})
    data = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path_factory.mktemp("runs") / "chat"
    result = finetune(trained_run, task="chat", data=str(data), out=out, epochs=2, batch_size=8, threads=1,
                      precision="fp32", prompt_loss=0.3)
    return out, result


def test_chat_finetune_reports_metrics_and_baseline(chat_run):
    out, result = chat_run
    assert result["model"]["turns"] == result["split"]["test"] > 0
    assert result["baseline"]["run"] and "assistant_loss" in result["baseline"]
    assert result["model"]["assistant_loss"] < result["baseline"]["assistant_loss"]  # SFT taught the format
    assert (out / "evals" / "chat.json").is_file()
    assert json.loads((out / "task.json").read_text(encoding="utf-8"))["prompt_loss"] == 0.3


def scripted(lines):
    it = iter(lines)

    def read(prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def test_repl_streams_keeps_history_and_trims(chat_run):
    out, _ = chat_run
    lm = load(out)
    session = ChatSession(lm, max_new_tokens=8, temperature=0, seed=0)
    written, notices = [], []
    long = "这是一个很长的问题，" * 8
    repl(session, scripted(["第3号是什么？", "/system 你是助手", "你好", "/reset", long, long, long, "/nonsense", "/quit",
                            "never read"]),
         write=written.append, notice=notices.append)
    text = "".join(written)
    assert text.count("\n") == 5  # one line per reply (5 messages)
    assert any("system message set" in n for n in notices) and any("history cleared" in n for n in notices)
    assert any("dropped" in n for n in notices)  # the context guard trimmed old turns instead of failing
    assert any("unknown command /nonsense" in n for n in notices)
    assert session.system == "你是助手"
    assert [m["role"] for m in session.history][-2:] == ["user", "assistant"]
    # The next prompt fits (prompt_ids trims the history itself, so it is read last).
    ids, _ = session.prompt_ids()
    assert len(ids) <= lm.model.cfg.max_seq_len - session.max_new_tokens


def test_chat_command_line(chat_run):
    out, _ = chat_run
    proc = subprocess.run([sys.executable, "-m", "candorlm", "chat", str(out), "--temperature", "0",
                           "--max-new-tokens", "6"], input="第1号是什么？\n/reset\n", capture_output=True, text=True,
                          env={**__import__("os").environ, "CANDORLM_PROGRESS": "0"})
    assert proc.returncode == 0, proc.stderr
    assert "history cleared" in proc.stderr and "Traceback" not in proc.stderr
    wrong = subprocess.run([sys.executable, "-m", "candorlm", "finetune", "--task", "qa", "--data", "builtin:qa",
                            "--out", str(out.parent / "never"), "--prompt-loss", "0.5"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "--prompt-loss is a chat option" in wrong.stderr, wrong.stderr


# ---------------------------------------------------------------- scored on what it gets right


def test_degenerate_and_label_of():
    from candorlm.tasks.chat_eval import degenerate, label_of

    assert degenerate("、县、县、县、县、县、县") and degenerate("哈哈哈哈哈")
    assert degenerate("，是“三下乡”的“三下乡”的“三下乡”的“三下乡”")
    assert not degenerate("北京") and not degenerate("一九九八年一月一日") and not degenerate("好评")
    assert label_of("好评") == "好评" and label_of("是差评，不是好评") == "差评" and label_of("不知道") == ""


def test_no_repeat_ngram_blocks_repeats_and_zero_changes_nothing():
    from candorlm.beam import greedy_search, repeated_ngram_ends

    assert repeated_ngram_ends([5, 6, 5], 2) == [6] and repeated_ngram_ends([5, 6, 7], 2) == []
    assert repeated_ngram_ends([4, 4], 1) == [4] and repeated_ngram_ends([1], 3) == []

    class Loop:  # a model that always prefers token 7, then 8: greedy writes 7 7 7 ...
        rows = 1

        def start(self):
            return torch.tensor([[0.0] * 7 + [2.0, 1.0, 0.5]])

        def advance(self, tokens):
            return self.start()

    assert greedy_search(Loop(), eos_id=9, max_new_tokens=4) == [[7, 7, 7, 7]]
    assert greedy_search(Loop(), eos_id=9, max_new_tokens=4, no_repeat_ngram=0) == [[7, 7, 7, 7]]
    assert greedy_search(Loop(), eos_id=9, max_new_tokens=4, no_repeat_ngram=1) == [[7, 8]]  # then <|eos|> (9)
    assert greedy_search(Loop(), eos_id=9, max_new_tokens=5, no_repeat_ngram=2) == [[7, 7, 8, 7, 9][:4]]


def test_builtin_chat_has_both_skills_with_and_without_the_system_prompt():
    from candorlm.tasks.chat import builtin_conversations

    splits = builtin_conversations()
    for split in ("train", "test"):
        seen = Counter((r["kind"], r["messages"][0]["role"] == "system") for r in splits[split])
        assert set(seen) == {(k, s) for k in ("reading", "sentiment") for s in (True, False)}, seen
        assert all(min(seen[(k, True)], seen[(k, False)]) > 0.4 * (seen[(k, True)] + seen[(k, False)])
                   for k in ("reading", "sentiment"))
    r = next(r for r in splits["test"] if r["kind"] == "sentiment")
    assert r["sources"] == [{"text": r["messages"][-2]["content"].split("\n", 1)[1]}]


def test_builtin_chat_reading_turns_are_builtin_qa_held_out_paragraphs():
    from candorlm.tasks.chat import builtin_conversations
    from candorlm.tasks.qa import builtin_splits

    splits = builtin_conversations()
    train = {r["sources"][0]["context"] for r in splits["train"] if r["kind"] == "reading"}
    for name in ("dev", "test"):
        held = [r["sources"][0]["context"] for r in splits[name] if r["kind"] == "reading"]
        assert not train & set(held) and len(held) == len(set(held))
    # the first questions are builtin:qa's test items, so the QA reader's figure applies to them
    first = sorted((r["sources"][0]["context"], r["sources"][0]["question"],
                    next(m["content"] for m in r["messages"] if m["role"] == "assistant"))
                   for r in splits["test"] if r["kind"] == "reading")
    assert first == sorted((r["context"], r["question"], r["answer"]) for r in builtin_splits()["test"])


def test_a_short_evaluation_scores_every_kind_of_turn(tok):
    from candorlm.tasks.chat import builtin_conversations
    from candorlm.tasks.chat_eval import score_turns, turns

    test = builtin_conversations()["test"]
    items = turns(tok, test, max_len=512, budget=24, limit=30)
    kinds = Counter(t["kind"] for t in items)
    assert set(kinds) == {"sentiment", "reading, first question", "reading, follow-up"} and max(kinds.values()) == 10
    # evenly spaced over each kind's turns: builtin:reviews lists positive reviews first
    labels = Counter(t["gold"] for t in turns(tok, test, max_len=512, budget=24, limit=60) if t["kind"] == "sentiment")
    assert min(labels["好评"], labels["差评"]) >= 6, labels
    preds = [t["gold"] if i % 2 else "、县、县、县、县" for i, t in enumerate(items)]
    scored = score_turns(preds, items)
    assert scored["turns"] == 30 and scored["degenerate"] == 0.5 and scored["right"] == 0.5
    assert {"label_accuracy", "right_with_system", "right_without_system"} <= set(scored["by_kind"]["sentiment"])
    assert {"exact_match", "char_f1"} <= set(scored["by_kind"]["reading, follow-up"])


def test_the_chat_table_has_a_column_per_kind_and_the_single_task_rows():
    from candorlm.report.tasks import task_table

    doc = {"task": "chat", "data": "builtin:chat", "split": {"test": 10},
           "model": {"run": "runs/chat", "right": 0.5, "degenerate": 0.1,
                     "by_kind": {"sentiment": {"n": 5, "label_accuracy": 0.8},
                                 "reading, first question": {"n": 5, "exact_match": 0.2, "char_f1": 0.4}}},
           "single_task": [{"run": "runs/sent", "task": "sentiment", "right": 0.9, "degenerate": 0.0,
                            "by_kind": {"sentiment": {"n": 5, "label_accuracy": 0.9}}}]}
    t = task_table("runs/chat", doc)
    assert "sentiment: label accuracy" in t["columns"] and "reading, first question: exact match" in t["columns"]
    rows = {r[0]: dict(zip(t["columns"], r)) for r in t["rows"]}
    single = rows["baseline: the sentiment model sent"]
    assert single["sentiment: label accuracy"] == 0.9 and single["replies right"] is None


def test_no_repeat_ngram_in_generate_and_the_terminal_chat(chat_run):
    out, _ = chat_run
    lm = load(out)
    prompt = "第3号是什么？" * 3
    plain = lm.generate(prompt, max_new_tokens=12, greedy=True)
    assert lm.generate(prompt, max_new_tokens=12, greedy=True, no_repeat_ngram=0) == plain  # off changes nothing
    from candorlm.generate import SamplingConfig, generate_ids

    ids = generate_ids(lm.model, [lm.encode_prompt(prompt)], SamplingConfig(max_new_tokens=12, greedy=True,
                                                                           no_repeat_ngram=1))[0]
    assert len(ids) == 12 and len(ids) == len(set(ids))  # no token twice in the new text (the prompt's may recur)
    session = ChatSession(lm, max_new_tokens=8, temperature=0)
    assert session.sampling["no_repeat_ngram"] == 3
    with pytest.raises(Exception, match="no_repeat_ngram must be 0"):
        lm.generate(prompt, max_new_tokens=2, no_repeat_ngram=-1)


def test_chat_batches_group_conversations_by_length(tok):
    """builtin:chat mixes short reviews with long paragraphs: grouped batches pad far less."""
    import numpy as np

    from candorlm.tasks import chat
    from candorlm.tasks.chat import builtin_conversations
    from candorlm.tasks.finetune import example_lengths, length_batches

    records = builtin_conversations()["train"][::5]
    examples = [(*ex, r) for r in records if (ex := sft_example(tok, r["messages"], 320)) is not None]
    lengths = example_lengths(chat, examples)
    assert lengths == [len(ids) for ids, _, _ in examples]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(examples))

    def padded(batches):  # tokens the batches pad to: each batch's longest row times its size
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    grouped, plain = length_batches(order, lengths, 32, rng), length_batches(order, None, 32, rng)
    assert sorted(int(i) for b in grouped for i in b) == list(range(len(examples)))
    assert padded(grouped) < 0.6 * padded(plain)
