"""Translation with the encoder-decoder: teacher-forced training on sentence pairs, beam search
with a length penalty at test time, chrF and BLEU (sacrebleu) and character accuracy.

Data: a TSV file (source<TAB>target per line), a JSONL file ({"source", "target"}), or the
built-in `builtin:pinyin`, an input method: toneless pinyin in, Chinese characters out.

builtin:pinyin is built from People's Daily (builtin:peoples-daily), deterministically:
- each article's text is NFKC-normalised and cut into sentences after 。！？；(and at line
  ends); a sentence longer than 64 characters is cut after its last ，(or hard-cut) to fit;
  sentences without Chinese characters are dropped;
- the source is one token per character, separated by spaces: the toneless pinyin of each
  Chinese character (pypinyin, Style.NORMAL, with its phrase dictionary for polyphones; ü is
  written v, as people type it) and any other character as itself;
- the split is by article (a blake2b hash of the article text): 10% of the articles are the
  test split, 5% of the rest the dev split, so no sentence of a test article is trained on.

Metrics on the test split:
- character accuracy = 1 - (total edit distance between output and reference) / (total
  reference characters), a character error rate turned around; for outputs of the reference's
  length with substitutions only, it is the share of positions right;
- Chinese-character accuracy: the same over the reference's Chinese characters only (under a
  minimum-edit alignment), leaving out punctuation and digits, which any method copies;
- chrF (character 6-grams) and BLEU (sacrebleu's `zh` tokenisation, one token per Chinese character).
The baseline (for aligned pairs like pinyin: as many source tokens as target characters) maps
each source token to the character it most often stands for in the training split; for other
pairs it copies the source.
"""

from __future__ import annotations

import math
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from candorlm.beam import Seq2SeqSession, beam_search, greedy_search, pad_training_batch
from candorlm.corpus import peoples_daily_documents
from candorlm.errors import CandorError
from candorlm.io.files import write_json
from candorlm.model import lm_loss
from candorlm.tasks.base import Base, Prepared, eval_path, load_task_run, require_tokens
from candorlm.tasks import translate_lm, translate_tag
from candorlm.tasks.data import Record, read_pairs, split_of, split_records
from candorlm.tasks.translate_metrics import _is_han, aligned, baseline, char_accuracy, scores  # noqa: F401 (re-exported)
from candorlm.tokenizer import Tokenizer, train_tokenizer
from candorlm.progress import batched

default_arch = "seq2seq"
BUILTIN = "builtin:pinyin"
MAX_CHARS = 64
_BREAKS = "。！？；"
BEAM_SIZE = 4  # an encoder-decoder's beam width at test and predict time
LENGTH_PENALTY = 1.0


# ---------------------------------------------------------------- builtin:pinyin


def sentences(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """Sentences of a text: cut after 。！？； and at line ends, long ones cut after a ，."""
    out: list[str] = []
    for line in text.split("\n"):
        buf = ""
        for ch in line:
            buf += ch
            if ch in _BREAKS:
                out.extend(_fit(buf.strip(), max_chars))
                buf = ""
        if buf.strip():
            out.extend(_fit(buf.strip(), max_chars))
    return [s for s in out if any(_is_han(c) for c in s)]


def _fit(sentence: str, max_chars: int) -> list[str]:
    pieces = []
    while len(sentence) > max_chars:
        cut = sentence.rfind("，", 0, max_chars) + 1 or sentence.rfind(",", 0, max_chars) + 1 or max_chars
        pieces.append(sentence[:cut])
        sentence = sentence[cut:]
    return pieces + ([sentence] if sentence else [])


def to_pinyin(sentence: str) -> str:
    """One space-separated token per character: toneless pinyin for Chinese, the character otherwise."""
    from pypinyin import Style, lazy_pinyin

    tokens = lazy_pinyin(sentence, style=Style.NORMAL, errors=lambda chars: list(chars))
    if len(tokens) != len(sentence):  # pypinyin keeps one token per character; check, never misalign
        raise CandorError(f"pypinyin returned {len(tokens)} tokens for {len(sentence)} characters: {sentence!r}")
    return " ".join(t if not t.isspace() else "_" for t in tokens)


@lru_cache(maxsize=1)
def pinyin_records() -> tuple[Record, ...]:
    """builtin:pinyin: (pinyin, characters) pairs of People's Daily, keyed by their article."""
    records = []
    for doc in peoples_daily_documents():
        text = unicodedata.normalize("NFKC", doc.text)
        for j, sent in enumerate(sentences(text)):
            sent = sent.replace(" ", "")
            if sent:
                records.append(Record({"source": to_pinyin(sent), "target": sent, "doc": doc.text},
                                      f"{doc.source}.{j}"))
    return tuple(records)


def load_records(data: str) -> tuple[dict[str, list[Record]], str]:
    """Pairs by split, and the split rule in words."""
    if data == BUILTIN:
        splits: dict[str, list[Record]] = {"train": [], "dev": [], "test": []}
        for rec in pinyin_records():
            splits[split_of(rec["doc"])].append(rec)
        return splits, "by article: blake2b-64(article text) < 10% test; of the rest, a second hash < 5% dev"
    if data.startswith("builtin:"):
        raise CandorError(f"the translate task's built-in data is {BUILTIN}, not {data}")
    return split_records(read_pairs(data), key="source"), "by pair: blake2b-64(source) < 10% test; 5% of the rest dev"


# ---------------------------------------------------------------- model and training


def encode_source(tok: Tokenizer, text: str, max_len: int) -> list[int]:
    return tok.encode(text)[:max_len - 1] + [tok.eos_id]


def _encode_target(tok: Tokenizer, text: str, max_len: int) -> list[int]:
    return tok.encode(text)[:max_len - 1]


def default_arch_for(head: str | None = None, **_: Any) -> str:
    """The architecture a from-scratch run of this head uses: the tagger is an encoder."""
    return "encoder" if head == "tag" else default_arch


def search_settings(beam_size: int | None, length_penalty: float | None) -> tuple[int, float]:
    """The beam size and length penalty to decode with: those given, checked before any work (a bad
    one would otherwise stop a fine-tune at its test evaluation, or score NaNs), else the defaults."""
    if beam_size is not None and beam_size < 1:
        raise CandorError(f"--beam-size must be at least 1 (1 = greedy), got {beam_size}")
    if length_penalty is not None and not math.isfinite(length_penalty):
        raise CandorError(f"--length-penalty must be a finite number, got {length_penalty}")
    return (BEAM_SIZE if beam_size is None else beam_size,
            LENGTH_PENALTY if length_penalty is None else length_penalty)


def refuse_tagger_search(run: str | Path, beam_size: int | None, length_penalty: float | None) -> None:
    """A tagger's decoding is its n-gram LM's beam, chosen on dev: a beam size or length penalty
    given for it would be ignored without a word."""
    if beam_size is not None or length_penalty is not None:
        raise CandorError(f"{run} is a tagger (finetune --head tag): it decodes with its n-gram LM at the beam "
                          f"chosen on dev and takes no beam size or length penalty; leave them out")


def prepare(base: Base, data: str, seed: int = 0, tokenizer: str = "char", vocab_size: int = 8192,
            src_tokenizer: str = "bpe", src_vocab_size: int = 2048, shared_vocab: bool = False,
            head: str = "generate", beam_size: int | None = None, **_: Any) -> Prepared:
    """head: generate (an encoder-decoder writes the translation, beam search at test time) or tag
    (aligned pairs only: an encoder picks one character per source token; candorlm.tasks.translate_tag)."""
    if head not in ("generate", "tag"):
        raise CandorError(f"unknown translate head '{head}'. Valid: generate, tag.")
    if head == "tag":  # before any training, not at the test evaluation
        refuse_tagger_search("the run", beam_size, None)
    search_settings(beam_size, None)
    splits, rule = load_records(data)
    if not splits["train"] or not splits["test"]:
        raise CandorError(f"{data}: too few pairs to split ({sum(map(len, splits.values()))}); "
                          f"the test split takes about 10%")
    if head == "tag":
        return translate_tag.prepare(base, splits, {"split_rule": rule, "test_size": len(splits["test"])})
    if base.tokenizer is not None and base.arch != "seq2seq":
        raise CandorError(f"{base.run} is a {base.arch} run; translation needs a seq2seq run "
                          f"(candorlm train --arch seq2seq), or start from scratch (omit the run)")
    tgt_tok, src_tok = base.tokenizer, base.source_tokenizer
    if tgt_tok is None:  # from scratch, no run: tokenizers of the training pairs only
        train = splits["train"]
        if shared_vocab:
            texts = [t for r in train for t in (r["source"], r["target"])]
            tgt_tok = train_tokenizer(texts, tokenizer, vocab_size)  # type: ignore[arg-type]
        else:
            tgt_tok = train_tokenizer((r["target"] for r in train), tokenizer, vocab_size)  # type: ignore[arg-type]
            src_tok = train_tokenizer((r["source"] for r in train), src_tokenizer, src_vocab_size)  # type: ignore[arg-type]
    require_tokens(tgt_tok, base.tokenizer_file(), ("bos", "eos"), "translate")
    src = src_tok or tgt_tok
    cfg = base.config.model.model_copy(update={"arch": "seq2seq", "vocab_size": tgt_tok.vocab_size,
                                               "src_vocab_size": src_tok.vocab_size if src_tok else 0})
    base.config = base.config.model_copy(update={"model": cfg})
    model = base.build()
    max_len = cfg.max_seq_len

    def examples(split: str) -> list[tuple[list[int], list[int], Record]]:
        return [(encode_source(src, r["source"], max_len), _encode_target(tgt_tok, r["target"], max_len - 1), r)
                for r in splits[split]]

    info = {"split_rule": rule, "test_size": len(splits["test"]), "shared_vocab": src_tok is None,
            "source_tokenizer": src.kind, "target_tokenizer": tgt_tok.kind}
    return Prepared(model, cfg, tgt_tok, src_tok, examples("train"), examples("dev"), info, splits)


def teacher_forced(tgt: Tokenizer, batch: Sequence[tuple[list[int], list[int], Any]], src_pad: int,
                   device: torch.device, limit: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs and targets for a batch of (source ids, target ids): the decoder reads <|bos|> + target
    and predicts target + <|eos|>; padding is masked in the source and ignored in the loss. With
    `limit`, a training batch (beam.pad_training_batch)."""
    bos, eos, pad = tgt.bos_id, tgt.eos_id, tgt.pad_id
    src, src_mask = pad_training_batch([s for s, _, _ in batch], src_pad, limit)
    dec_in, _ = pad_training_batch([[bos] + t for _, t, _ in batch], pad, limit)
    labels, label_mask = pad_training_batch([t + [eos] for _, t, _ in batch], pad, limit)
    labels = labels.masked_fill(label_mask == 0, -100)
    inputs = {"input_ids": src.to(device), "attention_mask": src_mask.to(device), "decoder_input_ids": dec_in.to(device)}
    return inputs, labels.to(device)


def loss(model: nn.Module, batch: Sequence[tuple[list[int], list[int], Any]], device: torch.device,
         prepared: Prepared) -> torch.Tensor:
    if prepared.info.get("head") == "tag":
        return translate_tag.loss(model, batch, device, prepared)  # type: ignore[arg-type]
    src_pad = (prepared.source_tokenizer or prepared.tokenizer).pad_id
    inputs, labels = teacher_forced(prepared.tokenizer, batch, src_pad, device, prepared.model_config.max_seq_len)
    return lm_loss(model(**inputs), labels)


def example_length(example: Any) -> int | None:
    """A tagger's example: its tokens (finetune groups its training batches by length: sentences run
    from 1 to 64 characters, so a batch drawn at random is mostly padding). A seq2seq pair: None, so
    that its epochs keep the plain permutation and its figures stay comparable with earlier runs."""
    return len(example.ids) if isinstance(example, translate_tag.Example) else None


# ---------------------------------------------------------------- decoding and metrics


@torch.no_grad()
def translate(model: nn.Module, tgt: Tokenizer, sources: Sequence[list[int]], *, beam_size: int = BEAM_SIZE,
              length_penalty: float = LENGTH_PENALTY, max_new_tokens: int | None = None, batch_size: int = 64,
              src_pad: int = 0) -> list[str]:
    """Decode each (encoded) source; beam_size 1 is greedy search."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out = [""] * len(sources)
    suppress = sorted(i for i in tgt.special_ids if i != tgt.eos_id)
    try:
        for idx in batched(order, batch_size):
            rows = [sources[i] for i in idx]
            budget = max_new_tokens or min(model.cfg.max_seq_len - 1, 2 * max(len(r) for r in rows) + 8)
            session = Seq2SeqSession(model, rows, bos_id=tgt.bos_id, pad_id=src_pad, max_new_tokens=budget,
                                     expand=beam_size)
            if beam_size == 1:
                hyps = greedy_search(session, eos_id=tgt.eos_id, max_new_tokens=budget, suppress_ids=suppress)
            else:
                hyps = beam_search(session, beam_size=beam_size, eos_id=tgt.eos_id, max_new_tokens=budget,
                                   length_penalty=length_penalty, suppress_ids=suppress)
            for i, ids in zip(idx, hyps):
                out[i] = tgt.decode(ids)
    finally:
        model.train(was_training)
    return out


def dev_metrics(model: nn.Module, prepared: Prepared, device: torch.device) -> dict[str, float]:
    if prepared.info.get("head") == "tag":
        acc = char_accuracy(*translate_tag.tag_dev(model, prepared))
        return {"score": acc, "char_accuracy": acc}
    dev = prepared.dev[:400]  # greedy decoding of a fixed slice: enough to rank epochs, cheap
    src_pad = (prepared.source_tokenizer or prepared.tokenizer).pad_id
    hyps = translate(model, prepared.tokenizer, [s for s, _, _ in dev], beam_size=1, src_pad=src_pad)
    acc = char_accuracy(hyps, [r["target"] for _, _, r in dev])
    return {"score": acc, "char_accuracy": acc}


def evaluate(run: str | Path, data: str | None = None, beam_size: int | None = None,
             length_penalty: float | None = None, limit: int | None = None, **_: Any) -> dict[str, Any]:
    """Test-split chrF, BLEU and character accuracy of `run` (beam search) next to the baseline;
    written to RUN/evals/translate.json.

    Args:
        run: A run fine-tuned with --task translate.
        data: Task data (None: the data it was fine-tuned on).
        beam_size: Beam size of an encoder-decoder (1 = greedy; None: 4). A tagger decodes with its
            n-gram LM at the beam chosen on dev and takes none.
        length_penalty: Hypotheses are ranked by log-prob / length^this (None: 1.0).
        limit: Score only the first N test examples.
    """
    settings = search_settings(beam_size, length_penalty)
    rd, config, info, model, tgt, src = load_task_run(run)
    tagger = info.get("head") == "tag"
    if tagger:
        refuse_tagger_search(rd.path, beam_size, length_penalty)
    beam_size, length_penalty = settings
    if config.model.arch != "seq2seq" and not tagger:
        raise CandorError(f"{rd.path} is a {config.model.arch} run; translation is evaluated on seq2seq runs "
                          f"and on taggers (finetune --head tag)")
    data = data or info.get("data")
    if not data:
        raise CandorError(f"{rd.path} has no task.json naming its data; give --data")
    splits, rule = load_records(data)
    test = splits["test"][:limit] if limit else splits["test"]
    src_tok = src or tgt
    refs = [r["target"] for r in test]
    if tagger:  # one forward pass, then (with the run's LM) a beam search over each position's candidates
        translate_tag.check_aligned(test, "test")
        scored = translate_lm.evaluate_tagger(rd.path, info, model, src_tok, tgt, splits, test,
                                              baseline(splits["train"], test))
        result = {"task": "translate", "data": data, **scored, "split": {"rule": rule, **scored["split"]},
                  "command": f"candorlm eval {rd.path} --task translate --data {data}"
                             + (f" --limit {limit}" if limit else "")}
        write_json(eval_path(rd, "translate"), result)
        return result
    max_len = config.model.max_seq_len
    sources = [encode_source(src_tok, r["source"], max_len) for r in test]
    hyps = translate(model, tgt, sources, beam_size=beam_size, length_penalty=length_penalty,
                     src_pad=src_tok.pad_id)
    greedy = translate(model, tgt, sources, beam_size=1, src_pad=src_tok.pad_id) if beam_size > 1 else hyps
    result = {
        "task": "translate",
        "data": data,
        "split": {"rule": rule, "train": len(splits["train"]), "dev": len(splits["dev"]), "test": len(test)},
        "model": {"run": str(rd.path), "arch": config.model.arch, "head": info.get("head", "generate"),
                  "init": info.get("init"), "base_run": info.get("base_run"),
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "decoding": f"beam search, beam {beam_size}, length penalty {length_penalty}", **scores(hyps, refs)},
        "greedy": scores(greedy, refs),
        "baseline": baseline(splits["train"], test),
        "examples": [{"source": r["source"], "reference": r["target"], "output": h} for r, h in zip(test[:5], hyps)],
        "command": f"candorlm eval {rd.path} --task translate --data {data} --beam-size {beam_size}"
                   + (f" --limit {limit}" if limit else ""),
    }
    write_json(eval_path(rd, "translate"), result)
    return result


def eval_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in ("beam_size", "length_penalty", "limit") if k in options}


# ---------------------------------------------------------------- the tagger and its n-gram LM


def finish(prepared: Prepared, model: nn.Module, out: Path, splits: dict[str, list[Record]] | None = None) -> None:
    """At the end of a tagger's fine-tuning: its n-gram LM into `out`, the weight and beam chosen
    on dev into task.json's "lm" (translate_lm.fit). Nothing for the seq2seq."""
    if prepared.info.get("head") != "tag":
        return
    train = splits["train"] if splits else [e.record for e in prepared.train]
    dev = splits["dev"] if splits else [e.record for e in prepared.dev]
    prepared.info["lm"] = translate_lm.fit(model, prepared.source_tokenizer, prepared.tokenizer,  # type: ignore[arg-type]
                                           prepared.info["lexicon"], train, dev, out, char_accuracy)


def attach_lm(run: str | Path, order: int = translate_lm.ORDER) -> dict[str, Any]:
    """Give a tagger run fine-tuned without an n-gram LM one: counted on its data's training split,
    weight and beam chosen on dev with the run's tagger, written into the run (ngram.safetensors,
    task.json's "lm", SHA256SUMS updated). Returns the "lm" entry; `evaluate` then scores the fusion.

        from candorlm.tasks.translate import attach_lm, evaluate
        attach_lm("runs/pinyin-tag"); evaluate("runs/pinyin-tag")
    """
    from candorlm.io.manifest import update_manifest
    from candorlm.io.sealed import is_encrypted

    rd, _, info, model, tgt, src = load_task_run(run)
    if info.get("task") != "translate" or info.get("head") != "tag":
        raise CandorError(f"{rd.path} is not a tagger run (finetune --task translate --head tag); only a tagger takes an LM")
    task_file = rd.path / "task.json"
    if is_encrypted(task_file):
        raise CandorError(f"{rd.path} is encrypted; attach the LM to the plain run, then encrypt it again")
    splits, _ = load_records(info["data"])
    entry = translate_lm.fit(model, src or tgt, tgt, info["lexicon"], splits["train"], splits["dev"], rd.path,
                             char_accuracy, order=order)
    write_json(task_file, {**info, "lm": entry})
    update_manifest(rd.path, [task_file, rd.path / entry["file"]])
    return entry
