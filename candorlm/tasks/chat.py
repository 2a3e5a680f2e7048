"""Dialogue: supervised fine-tuning on conversations, and the terminal chat.

Data: JSONL, one conversation per line, in the format people already use:
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}
Roles are system, user and assistant; every conversation needs at least one assistant turn.
Conversations are rendered with the tokenizer's chat template (`Tokenizer.encode_chat`):
    <|bos|><|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>
and the loss is taken on the assistant's tokens only (each reply and its closing <|end|>):
the model learns to answer, not to imitate users. A conversation longer than the model's
context is cut at the context length; one whose first reply is cut off entirely is left out,
and the count is reported in task.json.

builtin:chat is built from the same sources as the other tasks, so it runs offline: reading
conversations about a People's Daily paragraph (the builtin:qa rule: a question, and a
follow-up question when the paragraph has a second span), and questions about whether a
product review is positive (好评) or negative (差评). Conversations keep their sources'
splits (by article, by review text), so no test paragraph or review is trained on; every
other conversation has a system message.

Metrics on the test conversations (candorlm/tasks/chat_eval.py): the assistant tokens' mean
loss, and per kind of turn the share of right replies (sentiment: the label; reading: exact
match and char-F1), with and without a system message, and the share of degenerate replies;
the starting run and the single-task models are the baselines.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from candorlm.beam import pad_training_batch
from candorlm.corpus import document_hash, review_records
from candorlm.errors import CandorError
from candorlm.io.files import write_json
from candorlm.model import lm_loss
from candorlm.tasks.base import Base, Prepared, eval_path, load_task_run, require_tokens
from candorlm.tasks.chat_eval import MAX_REPLY_TOKENS, NO_REPEAT_NGRAM, replies, score_turns, turns
from candorlm.tasks.data import Record, check_messages, read_jsonl_records, split_of
from candorlm.tokenizer import Tokenizer, train_tokenizer

default_arch = "decoder"
BUILTIN = "builtin:chat"
SYSTEM_PROMPT = "你是一个认真的助手，回答简短准确。"
CHAT_TOKENS = ("bos", "eos", "system", "user", "assistant", "end")
SENTIMENT_QUESTION = "这条商品评论是好评还是差评？\n"
READING_QUESTION = "阅读下面这段话，回答问题。\n"
# Which of builtin:reviews' training reviews builtin:chat trains on: "all" (the 14,859 the
# sentiment classifier learns from) or "third" (every third, as many conversations as the reading ones)
TRAIN_REVIEWS = "third"


# ---------------------------------------------------------------- data


def builtin_conversations() -> dict[str, list[Record]]:
    """builtin:chat by split (see the module doc)."""
    from candorlm.tasks.qa import qa_items

    splits: dict[str, list[Record]] = {"train": [], "dev": [], "test": []}
    for i, (article, qs) in enumerate(qa_items()):
        first = qs[0]
        messages = [{"role": "user", "content": f"{READING_QUESTION}{first['context']}\n问：{first['question']}"},
                    {"role": "assistant", "content": first["answer"]}]
        if len(qs) > 1:
            messages += [{"role": "user", "content": f"再问：{qs[1]['question']}"},
                         {"role": "assistant", "content": qs[1]["answer"]}]
        sources = [{"context": q["context"], "question": q["question"]} for q in qs[:2]]
        splits[split_of(article)].append(_record(messages, "reading", f"{BUILTIN}#qa{i}", first["context"], sources))
    _drop_seen_paragraphs(splits)
    for i, (text, label) in enumerate(review_records()):
        if i % 3 and (TRAIN_REVIEWS == "third" or split_of(text) != "train"):
            continue  # every third review (TRAIN_REVIEWS "all": every training one), about as many as the reading turns
        messages = [{"role": "user", "content": SENTIMENT_QUESTION + text},
                    {"role": "assistant", "content": "好评" if label == "pos" else "差评"}]
        splits[split_of(text)].append(_record(messages, "sentiment", f"{BUILTIN}#review{i}", text, [{"text": text}]))
    return splits


def _drop_seen_paragraphs(splits: dict[str, list[Record]]) -> None:
    """builtin:qa's dedupe: a held-out reading conversation whose paragraph is also in train (the
    same paragraph printed in two articles) or earlier in its own split is dropped, so reading
    turns are scored on unseen paragraphs only and on the same paragraphs as builtin:qa's test."""
    seen = {r["sources"][0]["context"] for r in splits["train"] if r["kind"] == "reading"}
    for name in ("dev", "test"):
        kept = []
        for r in splits[name]:
            if r["kind"] == "reading":
                if r["sources"][0]["context"] in seen:
                    continue
                seen.add(r["sources"][0]["context"])
            kept.append(r)
        splits[name] = kept


def _record(messages: list[dict[str, str]], kind: str, where: str, key: str,
            sources: list[dict[str, str]]) -> Record:
    """A conversation; half of them (by a hash of `key`) open with the system message, so the
    model learns to answer both skills with and without it. `sources` are each assistant turn's
    input to the single-task models (the chat evaluation's baselines)."""
    if document_hash(key) % 2:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}] + messages
    return Record({"messages": messages, "kind": kind, "sources": sources}, where)


def load_splits(data: str) -> tuple[dict[str, list[Record]], str]:
    if data == BUILTIN:
        return builtin_conversations(), ("reading: by article, held-out paragraphs also in train dropped (as builtin:qa); "
                                         "sentiment: by review text (10% test, 5% of the rest dev)")
    if data.startswith("builtin:"):
        raise CandorError(f"the chat task's built-in data is {BUILTIN}, not {data}")
    records = read_jsonl_records(data, {"messages": list},
                                 '{"messages": [{"role": "user", "content": "你好"}, '
                                 '{"role": "assistant", "content": "你好！"}]}')
    splits: dict[str, list[Record]] = {"train": [], "dev": [], "test": []}
    for rec in records:
        rec.fields["messages"] = check_messages(rec)
        rec.fields.setdefault("kind", "chat")
        splits[split_of(str(rec["messages"]))].append(rec)
    return splits, "by conversation: blake2b-64(messages) < 10% test; 5% of the rest dev"


def sft_example(tok: Tokenizer, messages: list[dict[str, str]], max_len: int) -> tuple[list[int], list[int]] | None:
    """(input ids, targets) for supervised fine-tuning: targets are the next token where it is an
    assistant token, -100 elsewhere. None when no assistant token fits in max_len."""
    ids, mask = tok.encode_chat(messages)
    ids, mask = ids[:max_len + 1], mask[:max_len + 1]
    targets = [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
    if all(t == -100 for t in targets):
        return None
    return ids[:-1], targets


# ---------------------------------------------------------------- training


def example_length(example: tuple[list[int], list[int], Record]) -> int:
    """Training batches group conversations of similar length (finetune.length_batches): builtin:chat
    mixes reviews (a median of 78 characters) with paragraphs (147, a tail to 320), and a random
    batch pads every row to its longest."""
    return len(example[0])


def prepare(base: Base, data: str, seed: int = 0, tokenizer: str = "bpe", vocab_size: int = 4096,
            prompt_loss: float = 0.0, **_: Any) -> Prepared:
    """The chat model and its examples; `prompt_loss` weighs a next-token loss on the other
    messages' tokens (system and user) beside the assistant's (see `loss`)."""
    if not 0.0 <= prompt_loss <= 1.0:
        raise CandorError(f"--prompt-loss must be between 0 and 1, got {prompt_loss}")
    splits, rule = load_splits(data)
    if base.arch != "decoder":
        raise CandorError(f"{base.run}: chat fine-tuning needs a decoder run, not a{'n' if base.arch == 'encoder' else ''} "
                          f"{base.arch} one")
    tok = base.tokenizer
    if tok is None:
        texts = (m["content"] for r in splits["train"] for m in r["messages"])
        tok = train_tokenizer(texts, tokenizer, vocab_size)  # type: ignore[arg-type]
    require_tokens(tok, base.tokenizer_file(), CHAT_TOKENS, "chat")
    cfg = base.config.model.model_copy(update={"vocab_size": tok.vocab_size})
    base.config = base.config.model_copy(update={"model": cfg})
    model = base.build()
    dropped: dict[str, int] = {}

    def examples(split: str) -> list[tuple[list[int], list[int], Record]]:
        out = []
        for r in splits[split]:
            ex = sft_example(tok, r["messages"], cfg.max_seq_len)
            if ex is None:
                dropped[split] = dropped.get(split, 0) + 1
            else:
                out.append((*ex, r))
        return out

    train, dev = examples("train"), examples("dev")
    info = {"split_rule": rule, "test_size": len(splits["test"]), "dropped_too_long": dropped,
            "prompt_loss": prompt_loss}
    return Prepared(model, cfg, tok, None, train, dev, info, splits)


def _batch(batch: Sequence[tuple[list[int], list[int], Any]], pad: int,
           device: torch.device, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """With `limit`, a training batch (beam.pad_training_batch); without, as it is."""
    ids, _ = pad_training_batch([i for i, _, _ in batch], pad, limit)
    targets, mask = pad_training_batch([t for _, t, _ in batch], -100, limit)
    return ids.to(device), targets.masked_fill(mask == 0, -100).to(device)


def loss(model: nn.Module, batch: Sequence[Any], device: torch.device, prepared: Prepared) -> torch.Tensor:
    """Mean loss over the assistant's tokens, plus, with a prompt-loss weight w > 0, w times the
    mean next-token loss over the other messages' tokens. The reading skill is copying a span of
    the paragraph, and a user's question is itself a near-copy of a paragraph sentence, so the
    prompt's tokens train the copying (induction) heads with ten times the assistant's signal,
    from the forward pass the assistant loss already pays for."""
    limit = prepared.model_config.max_seq_len
    ids, targets = _batch(batch, prepared.tokenizer.pad_id, device, limit)
    logits = model(ids)
    value = lm_loss(logits, targets)
    weight = float(prepared.info.get("prompt_loss") or 0.0)
    if weight > 0:
        prompt, _ = pad_training_batch([[i[t + 1] if t + 1 < len(i) and g[t] == -100 else -100 for t in range(len(i))]
                                        for i, g, _ in batch], -100, limit)
        value = value + weight * lm_loss(logits, prompt.to(device))
    return value


@torch.no_grad()
def assistant_loss(model: nn.Module, examples: Sequence[tuple[list[int], list[int], Any]], pad: int,
                   batch_size: int = 32) -> float:
    """Mean loss (nats) per assistant token."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats = count = 0.0
    try:
        for i in range(0, len(examples), batch_size):
            ids, targets = _batch(examples[i:i + batch_size], pad, device)
            nats += float(lm_loss(model(ids), targets, reduction="sum"))
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    return nats / max(count, 1)


def dev_metrics(model: nn.Module, prepared: Prepared, device: torch.device) -> dict[str, float]:
    value = assistant_loss(model, prepared.dev, prepared.tokenizer.pad_id)
    return {"score": -value, "assistant_loss": value}


# ---------------------------------------------------------------- evaluation (scoring: candorlm/tasks/chat_eval.py)


def score_chat_model(model: nn.Module, tok: Tokenizer, test: Sequence[Record], limit: int | None,
                     no_repeat_ngram: int = NO_REPEAT_NGRAM) -> dict[str, Any]:
    max_len = model.cfg.max_seq_len
    examples = [(*ex, r) for r in test if (ex := sft_example(tok, r["messages"], max_len)) is not None]
    value = assistant_loss(model, examples, tok.pad_id)
    items = turns(tok, test, max_len, MAX_REPLY_TOKENS, limit)
    preds = replies(model, tok, [t["prompt"] for t in items], no_repeat_ngram=no_repeat_ngram)
    return {"assistant_loss": round(value, 4), "assistant_perplexity": round(math.exp(min(value, 50.0)), 2),
            **score_turns(preds, items),
            "examples": [{"kind": t["kind"], "system": t["system"], "gold": t["gold"], "reply": p}
                         for t, p in list(zip(items, preds))[:8]]}


def score_single_task(run: str | Path, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A sentiment classifier or a QA reader on the chat turns of its kind (from their sources)."""
    from candorlm.tasks.predict import load_task

    model = load_task(run)
    kinds = {"sentiment": ("sentiment",), "qa": ("reading, first question", "reading, follow-up")}.get(model.task)
    if kinds is None:
        raise CandorError(f"{run}: a chat baseline is a sentiment or a qa run, not a {model.task} one")
    mine = [t for t in items if t["kind"] in kinds and t["source"] is not None]
    if not mine:
        raise CandorError(f"{run}: the test conversations have no {model.task} turns with their source "
                          f"(builtin:chat has them; a JSONL file does not)")
    outputs = model.predict([t["source"] for t in mine])
    preds = [o["label"] if model.task == "sentiment" else o["answer"] for o in outputs]
    if model.task == "sentiment":
        labels = {"pos": "好评", "neg": "差评"}
        preds = [labels.get(p, p) for p in preds]
    return {"run": str(model.run), "task": model.task, **score_turns(preds, mine)}


def evaluate(run: str | Path, data: str | None = None, limit: int | None = None,
             baseline_runs: Sequence[str | Path] = (), no_repeat_ngram: int = NO_REPEAT_NGRAM,
             **_: Any) -> dict[str, Any]:
    """Per kind of turn, the share of right replies (label accuracy for sentiment turns, exact
    match and char-F1 for reading turns), with and without a system message, the degenerate
    share and the assistant-token loss, for the run and the run it started from, and for the
    single-task baselines given; written to RUN/evals/chat.json.

    Args:
        run: A run fine-tuned with --task chat.
        data: Task data (None: the data it was fine-tuned on).
        limit: Score only N turns, taken round-robin by kind of turn.
        baseline_runs: Single-task runs scored on the same turns: a sentiment classifier, a QA reader.
        no_repeat_ngram: Replies never repeat a token n-gram of this size (0: plain greedy).
    """
    rd, config, info, model, tok, _ = load_task_run(run)
    if config.model.arch != "decoder" or info.get("task") not in ("chat", None):
        raise CandorError(f"{rd.path} is not a chat run (task.json: {info.get('task')!r})")
    require_tokens(tok, str(rd.tokenizer), CHAT_TOKENS, "chat")
    data = data or info.get("data")
    if not data:
        raise CandorError(f"{rd.path} has no task.json naming its data; give --data")
    splits, rule = load_splits(data)
    test = splits["test"]
    result: dict[str, Any] = {
        "task": "chat",
        "data": data,
        "split": {"rule": rule, **{k: len(v) for k, v in splits.items()}},
        "decoding": {"search": "greedy", "stop": "<|end|>", "no_repeat_ngram": no_repeat_ngram,
                     "max_new_tokens": MAX_REPLY_TOKENS},
        "model": {"run": str(rd.path), "init": info.get("init"),
                  **score_chat_model(model, tok, test, limit, no_repeat_ngram)},
    }
    base = info.get("base_run")
    if base and Path(base, "config.toml").is_file():
        _, _, _, base_model, base_tok, _ = load_task_run(base)
        result["baseline"] = {"name": "the run fine-tuning started from, with the same chat template",
                              "run": base, **score_chat_model(base_model, base_tok, test, limit, no_repeat_ngram)}
    if baseline_runs:
        items = turns(tok, test, config.model.max_seq_len, MAX_REPLY_TOKENS, limit)
        result["single_task"] = [score_single_task(r, items) for r in baseline_runs]
    result["command"] = " ".join([f"candorlm eval {rd.path} --task chat --data {data}",
                                  *([f"--limit {limit}"] if limit else []),
                                  *[f"--baseline-runs {r}" for r in baseline_runs]])
    write_json(eval_path(rd, "chat"), result)
    return result


def eval_options(options: dict[str, Any]) -> dict[str, Any]:
    return {"limit": options.get("limit", 400)}


# ---------------------------------------------------------------- the terminal chat


class ChatSession:
    """A conversation with a decoder: history, system message, streaming replies, and a context
    guard that drops the oldest turns (never the system message) when the history outgrows the
    model's context.

    Args:
        lm: A loaded decoder (`candorlm.load(RUN)`), best one fine-tuned with --task chat.
        system: System message to start with.
        max_new_tokens: Most tokens per reply.
        temperature: Sampling temperature (0 = greedy).
        top_k: Sample among the k most likely tokens.
        top_p: Sample among the most likely tokens holding probability p.
        no_repeat_ngram: A reply never repeats a token n-gram of this size (0: off); the chat
            evaluation's default, chosen by bench/chat_decoding.py.
        seed: Random seed for sampling.
        **sampling: Other decoding settings (candorlm.generate.SamplingConfig).
    """

    def __init__(self, lm: Any, system: str | None = None, max_new_tokens: int = 128, temperature: float = 0.7,
                 top_k: int | None = 40, top_p: float | None = None, no_repeat_ngram: int = NO_REPEAT_NGRAM,
                 seed: int | None = None, **sampling: Any):
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, no_repeat_ngram=no_repeat_ngram, seed=seed,
                        **sampling)
        self.lm = lm
        self.tok: Tokenizer = lm.tokenizer
        require_tokens(self.tok, "this run's tokenizer.json", CHAT_TOKENS, "chat")
        self.system = system
        self.history: list[dict[str, str]] = []
        self.max_new_tokens = min(max_new_tokens, lm.model.cfg.max_seq_len // 2)
        self.sampling = sampling

    def messages(self) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def reset(self) -> None:
        self.history = []

    def prompt_ids(self) -> tuple[list[int], int]:
        """The prompt for the next reply, and how many old turns were dropped to fit it."""
        room = self.lm.model.cfg.max_seq_len - self.max_new_tokens
        dropped = 0
        while True:
            ids, _ = self.tok.encode_chat(self.messages(), add_generation_prompt=True)
            if len(ids) <= room:
                return ids, dropped
            if len(self.history) > 1:
                # Drop the oldest exchange (a user turn and the reply to it).
                cut = next((i for i in range(1, len(self.history)) if self.history[i]["role"] == "user"),
                           len(self.history) - 1)
                self.history = self.history[cut:]
                dropped += cut
            elif self.history:  # one message that alone is too long: keep its end
                keep = self.tok.decode(self.tok.encode_literal(self.history[0]["content"])[-(room // 2):])
                self.history[0] = dict(self.history[0], content=keep)
                dropped += 1
            else:  # the system message alone is too long
                keep = self.tok.decode(self.tok.encode_literal(self.system or "")[:room // 2])
                self.system = keep
                dropped += 1

    def send(self, text: str) -> tuple[Any, int]:
        """Add a user message; return (a stream of reply pieces, turns dropped to fit)."""
        self.history.append({"role": "user", "content": text})
        ids, dropped = self.prompt_ids()
        return self._stream(ids), dropped

    def _stream(self, ids: list[int]) -> Any:
        stop = [self.tok.ids["end"], self.tok.eos_id]
        suppress = [i for i in self.tok.special_ids if i not in stop]
        reply = ""
        for deltas in self.lm.stream_batch_ids([ids], stop_ids=stop, suppress_ids=suppress,
                                               max_new_tokens=self.max_new_tokens, **self.sampling):
            if deltas[0]:
                reply += deltas[0]
                yield deltas[0]
        self.history.append({"role": "assistant", "content": reply})


def repl(session: ChatSession, input_fn: Callable[[str], str], write: Callable[[str], Any],
         notice: Callable[[str], Any]) -> None:
    """Read a line, stream the reply, repeat; /reset, /system TEXT, /quit. Ends at EOF (Ctrl-D)."""
    notice("chat: /reset clears the history, /system TEXT sets the system message, /quit leaves")
    while True:
        try:
            line = input_fn("> ")
        except EOFError:
            write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            session.reset()
            notice("history cleared")
            continue
        if text == "/system" or text.startswith("/system "):
            session.system = text[len("/system"):].strip() or None
            session.reset()
            notice(f"system message {'set' if session.system else 'cleared'}; history cleared")
            continue
        if text.startswith("/"):
            notice(f"unknown command {text.split()[0]}; commands: /reset, /system TEXT, /quit")
            continue
        stream, dropped = session.send(text)
        if dropped:
            notice(f"(context full: dropped the {dropped} oldest message{'s' if dropped > 1 else ''})")
        for piece in stream:
            write(piece)
        write("\n")
