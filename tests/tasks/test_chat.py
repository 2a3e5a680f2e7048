"""Dialogue: the chat template (also in the HF export), loss only on assistant tokens, SFT end to
end, and the terminal chat driven by scripted input (streaming, history, /reset, /system, trimming)."""

import json
import subprocess
import sys

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
                      precision="fp32")
    return out, result


def test_chat_finetune_reports_metrics_and_baseline(chat_run):
    out, result = chat_run
    assert result["model"]["turns"] == result["split"]["test"] > 0
    assert result["baseline"]["run"] and "assistant_loss" in result["baseline"]
    assert result["model"]["assistant_loss"] < result["baseline"]["assistant_loss"]  # SFT taught the format
    assert (out / "evals" / "chat.json").is_file()


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
    ids, _ = session.prompt_ids()
    assert len(ids) <= lm.model.cfg.max_seq_len - session.max_new_tokens
    assert [m["role"] for m in session.history][-2:] == ["user", "assistant"]


def test_chat_command_line(chat_run):
    out, _ = chat_run
    proc = subprocess.run([sys.executable, "-m", "candorlm", "chat", str(out), "--temperature", "0",
                           "--max-new-tokens", "6"], input="第1号是什么？\n/reset\n", capture_output=True, text=True,
                          env={**__import__("os").environ, "CANDORLM_PROGRESS": "0"})
    assert proc.returncode == 0, proc.stderr
    assert "history cleared" in proc.stderr and "Traceback" not in proc.stderr
