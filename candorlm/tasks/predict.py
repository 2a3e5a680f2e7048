"""Use what you fine-tuned: one object per task run, `predict(inputs) -> outputs`.

    import candorlm
    model = candorlm.load_task("runs/sent")
    model.predict(["这个手机很好用"])   # [{"label": "pos", "probability": 0.93, "probabilities": {...}}]

What each task takes and gives (an input is a string, or an object with the fields below):

    sentiment   "text" or {"text"}                  -> {"label", "probability", "probabilities"}
    translate   "source" or {"source"}              -> {"translation"}
    qa          {"context", "question"}             -> {"answer"}
    chat        "user message" or {"messages": [...]} -> {"reply"}

The run is opened by `load_run` (checked against its manifest; an encrypted run with the key
in force, e.g. `candorlm.io.sealed.use_key` or $CANDORLM_KEY). Decoding is the one the task's
evaluation uses, so a prediction is what the test score measured.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from candorlm.config import RunConfig
from candorlm.errors import CandorError
from candorlm.tasks.base import load_task_run
from candorlm.tokenizer import Tokenizer

FIELDS = {"sentiment": "text", "translate": "source"}
PREDICTIONS = "predictions"  # the kind of file `candorlm predict --output` writes


@dataclass
class TaskModel:
    """A fine-tuned run ready to predict (see the module doc for what each task takes)."""

    task: str
    run: Path
    config: RunConfig
    info: dict[str, Any]
    model: nn.Module = field(repr=False)
    tokenizer: Tokenizer = field(repr=False)
    source_tokenizer: Tokenizer | None = field(default=None, repr=False)
    lm: Any = field(default=None, repr=False)  # a pinyin tagger's n-gram LM (candorlm.tasks.ngram), when it has one
    linear: Any = field(default=None, repr=False)  # a sentiment run's NB-LR (candorlm.tasks.nblr), when it has one
    channel: Any = field(default=None, repr=False)  # a pinyin tagger's channel term (translate_lm.Channel), built once

    def predict(self, inputs: Sequence[str | dict[str, Any]], **options: Any) -> list[dict[str, Any]]:
        """One output per input, in order.

        Args:
            inputs: Strings, or objects with the task's fields (qa: context and question; chat: a
                user message, or messages).
            **options: translate: beam_size, length_penalty (a tagger takes none: it decodes with its
                n-gram LM as evaluated); chat: system, max_new_tokens, no_repeat_ngram; qa: max_answer. An
                option the run's task does not read is refused (CandorError), not ignored.
        """
        if isinstance(inputs, (str, dict)):
            raise CandorError("predict takes a list of inputs; wrap a single one in a list")
        method = getattr(self, f"_{self.task}")
        takes = [name for name in inspect.signature(method).parameters if name != "inputs"]
        unknown = sorted(set(options) - set(takes))
        if unknown:  # an option another task reads would be ignored without a word
            raise CandorError(f"a {self.task} run takes no {', '.join(n.replace('_', '-') for n in unknown)} option"
                              + (f"; it takes {', '.join(n.replace('_', '-') for n in takes)}" if takes else ""))
        inputs = list(inputs)
        if not inputs:
            return []
        return method(inputs, **options)

    # ------------------------------------------------------------ per task

    def _sentiment(self, inputs: list[Any]) -> list[dict[str, Any]]:
        from candorlm.tasks.sentiment import encode, probabilities

        labels = list(self.info["labels"])
        texts = [_field(x, "text", i) for i, x in enumerate(inputs)]
        rows = [encode(self.tokenizer, t, self.info.get("max_len", 128)) for t in texts]
        probs = probabilities(self.model, rows, self.tokenizer.pad_id)
        if self.linear is not None:  # the mix the run's evaluation scored (candorlm.tasks.nblr)
            from candorlm.tasks.nblr import mix

            probs = mix(probs, self.linear.probabilities(texts), float(self.info["ensemble"]["weight"]))
        out = []
        for p in probs.tolist():
            best = max(range(len(labels)), key=lambda k: p[k])
            out.append({"label": labels[best], "probability": round(p[best], 4),
                        "probabilities": {lab: round(q, 4) for lab, q in zip(labels, p)}})
        return out

    def _translate(self, inputs: list[Any], beam_size: int | None = None,
                   length_penalty: float | None = None) -> list[dict[str, Any]]:
        from candorlm.tasks.translate import encode_source, refuse_tagger_search, search_settings, translate

        src = self.source_tokenizer or self.tokenizer
        if self.info.get("head") == "tag":  # a tagger: one character per source token, no search to tune
            from candorlm.tasks.translate_lm import tag_with_lm

            refuse_tagger_search(self.run, beam_size, length_penalty)
            texts = [_field(x, "source", i) for i, x in enumerate(inputs)]
            return [{"translation": h} for h in tag_with_lm(self.model, src, self.tokenizer, texts, self.info, self.lm,
                                                                  self.channel)]
        beam_size, length_penalty = search_settings(beam_size, length_penalty)
        sources = [encode_source(src, _field(x, "source", i), self.config.model.max_seq_len)
                   for i, x in enumerate(inputs)]
        hyps = translate(self.model, self.tokenizer, sources, beam_size=beam_size, length_penalty=length_penalty,
                         src_pad=src.pad_id)
        return [{"translation": h} for h in hyps]

    def _qa(self, inputs: list[Any], max_answer: int | None = None) -> list[dict[str, Any]]:
        from candorlm.tasks.qa import predict_answers

        pairs = []
        for i, x in enumerate(inputs):
            if not isinstance(x, dict) or not all(isinstance(x.get(k), str) and x[k].strip()
                                                  for k in ("context", "question")):
                raise CandorError(f"input {i + 1}: a qa run takes objects with 'context' and 'question', "
                                  f"like {{\"context\": \"...\", \"question\": \"...\"}}; got {_short(x)}")
            pairs.append((x["context"], x["question"]))
        return [{"answer": a} for a in predict_answers(self.model, self.tokenizer, self.config, self.info, pairs,
                                                        max_answer=max_answer)]

    def _chat(self, inputs: list[Any], system: str | None = None, max_new_tokens: int | None = None,
              no_repeat_ngram: int | None = None) -> list[dict[str, Any]]:
        from candorlm.tasks.chat_eval import MAX_REPLY_TOKENS, NO_REPEAT_NGRAM, replies
        from candorlm.tasks.data import Record, check_messages

        budget = max_new_tokens or MAX_REPLY_TOKENS
        room = self.config.model.max_seq_len - budget
        prompts = []
        for i, x in enumerate(inputs):
            if isinstance(x, dict) and "messages" in x:
                messages = check_messages(Record(x, f"input {i + 1}"), training=False)
            else:
                messages = [{"role": "user", "content": _field(x, "text", i)}]
            if system and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": system}] + messages
            ids, _ = self.tokenizer.encode_chat(messages, add_generation_prompt=True)
            if len(ids) > room:
                raise CandorError(f"input {i + 1}: {len(ids)} tokens, but this model reads at most {room} before "
                                  f"a reply of {budget} tokens; shorten it")
            prompts.append(ids)
        texts = replies(self.model, self.tokenizer, prompts, max_new_tokens=budget,
                        no_repeat_ngram=NO_REPEAT_NGRAM if no_repeat_ngram is None else no_repeat_ngram)
        return [{"reply": t} for t in texts]


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(x: Any, name: str, i: int) -> str:
    """A string input as is, or the field `name` of an object input."""
    if isinstance(x, str) and x.strip():
        return x
    if isinstance(x, dict) and isinstance(x.get(name), str) and x[name].strip():
        return x[name]
    raise CandorError(f"input {i + 1}: expected a non-empty string or an object with a '{name}' string, got {_short(x)}")


def load_task(run: str | Path, verify: bool | None = None) -> TaskModel:
    """A fine-tuned run (sentiment, translate, qa or chat) ready to `predict`.

    Args:
        run: A run directory written by `candorlm finetune`.
        verify: Check its files against its SHA256SUMS (None: yes).
    """
    rd, config, info, model, tok, source = load_task_run(run, verify=verify)
    task = info.get("task")
    if task not in ("sentiment", "translate", "qa", "chat"):
        raise CandorError(f"{rd.path} is not a fine-tuned task run (no task in its task.json); for a language "
                          f"model use `candorlm generate` or candorlm.load")
    lm = linear = channel = None
    if task == "translate" and info.get("lm"):  # loaded now: a missing or damaged file fails here, not mid-request
        from candorlm.tasks.translate_lm import load_lm, run_channel

        lm = load_lm(rd.path, info, verify=verify is not False)
        channel = run_channel(info, tok)
    if task == "sentiment" and info.get("ensemble"):  # the same: a bad NB-LR fails at loading
        from candorlm.tasks.nblr import NBLR

        linear = NBLR.load(rd.path, verify=verify is not False)
    return TaskModel(task, rd.path, config, info, model.eval(), tok, source, lm, linear, channel)


def read_inputs(spec: str) -> list[str | dict[str, Any]]:
    """Inputs from `spec`: a file (.jsonl: one JSON string or object per line; otherwise one text
    per line), or else the text itself (a JSON object when it starts with '{')."""
    import json

    from candorlm.io.sealed import read_text

    path = Path(spec)
    if path.is_file():
        try:
            text = read_text(path)
        except UnicodeDecodeError as exc:
            raise CandorError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); convert it to UTF-8 "
                              f"(for example with iconv) and try again") from None
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if not lines:
            raise CandorError(f"{path} holds no inputs (it is empty or blank)")
        if path.suffix.lower() != ".jsonl":
            return [line for _, line in lines]
        out: list[str | dict[str, Any]] = []
        for n, line in lines:
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CandorError(f"{path}:{n}: not valid JSON ({exc.msg}); each line is one string or object") from None
            if not isinstance(value, (str, dict)):
                raise CandorError(f"{path}:{n}: expected a JSON string or object, got {type(value).__name__}")
            out.append(value)
        return out
    if spec.lstrip().startswith("{"):
        try:
            value = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise CandorError(f"--input looks like a JSON object but is not valid JSON ({exc.msg})") from None
        return [value]
    if not spec.strip():
        raise CandorError("--input is empty")
    return [spec]


def claim_output(run: str | Path, output: str | Path, specs: Sequence[str], *, overwrite: bool = False) -> None:
    """Raise CandorError, before any work, unless `candorlm predict` may write `output`: a new file,
    or with `overwrite` one an earlier predict wrote and nobody changed since; never one of the
    inputs (the run, an --input file), nor plain text inside an encrypted run."""
    from candorlm.io.outputs import claim_file
    from candorlm.io.sealedtree import refuse_plain_output_in_sealed_tree

    refuse_plain_output_in_sealed_tree(run, "the predictions", out=output, option="--output FILE")
    claim_file(Path(output), PREDICTIONS, overwrite=overwrite, inputs=[run, *(s for s in specs if Path(s).is_file())],
               what="--output")


def write_predictions(output: str | Path, lines: Sequence[str]) -> None:
    """The JSON lines to `output`, whole or not at all, recorded as candorlm's (see `claim_output`)."""
    from candorlm.io.outputs import write_owned_text

    write_owned_text(Path(output), "".join(line + "\n" for line in lines), PREDICTIONS, "candorlm predict")


def predict_lines(run: str | Path, inputs: Sequence[str | dict[str, Any]], **options: Any) -> list[str]:
    """JSON lines {"input": ..., <prediction>} for `inputs` (what `candorlm predict` prints);
    `options` as `TaskModel.predict` takes them (refused when the run's task does not read them)."""
    import json

    model = load_task(run)
    return [json.dumps({"input": x, **y}, ensure_ascii=False) for x, y in zip(inputs, model.predict(inputs, **options))]
