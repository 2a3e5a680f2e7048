"""LanguageModel: a trained model with its tokenizer, ready to generate text.

    lm = candorlm.load("runs/demo")
    print(lm.generate("今天", max_new_tokens=40, temperature=0.8, top_k=50, seed=0))
    for piece in lm.stream("今天"):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol, Sequence

import torch

from candorlm.checkpoint.run import load_run
from candorlm.config import RunConfig
from candorlm.errors import CandorError
from candorlm.generate import SamplingConfig, stream_ids
from candorlm.io.sealed import Key
from candorlm.model import DecoderLM
from candorlm.tokenizer import Tokenizer


class UsageCounter(Protocol):
    """Counts what a model generates, one call per sequence (`candorlm.ledger.usage` sets one
    while it meters generation; inference does not depend on the ledger)."""

    def add(self, prompt_len: int, new_tokens: int) -> None: ...


class LanguageModel:
    """A trained model with its tokenizer, ready to generate: `candorlm.load(RUN)` makes one."""

    def __init__(self, model: DecoderLM, tokenizer: Tokenizer, config: RunConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or RunConfig(model=model.cfg)
        self.usage: UsageCounter | None = None  # set while candorlm.ledger.usage meters generation

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", key: Key | None = None,
             verify: bool | None = None) -> "LanguageModel":
        """Load a run's final weights (or, while it trains, its newest checkpoint), checked against
        the run's manifest first (`candorlm.checkpoint.run.load_run`; verify=False skips that). An
        encrypted run (`candorlm encrypt`) is read with `key`, or the key in CANDORLM_KEY / CANDORLM_KEY_FILE."""
        run = load_run(run_dir, key=key, verify=verify)
        config = run.config
        kind = "sentiment classifier" if run.task == "sentiment" else f"{config.model.arch} model"
        if config.model.arch != "decoder" or run.task == "sentiment":
            use = (f"Use it with `candorlm predict {run.path} --input TEXT` (Python: candorlm.load_task), "
                   f"score it with `candorlm eval {run.path} --task {run.task}`." if run.task else
                   f"Fine-tune it for a task (`candorlm finetune {run.path} --task ...`).")
            raise CandorError(f"{run.path} holds a {run.task + ' ' if run.task and run.task != 'sentiment' else ''}"
                              f"{kind}; text generation needs a decoder language model. {use}")
        return cls(run.build_model(device), run.tokenizer, config)

    def encode_prompt(self, text: str) -> list[int]:
        bos = [self.tokenizer.bos_id] if self.tokenizer.bos_id is not None else []
        return bos + self.tokenizer.encode(text)

    def _suppressed(self) -> list[int]:
        # Never emit padding, a new document start or other markers in plain text generation.
        return [i for i in self.tokenizer.special_ids if i != self.tokenizer.eos_id]

    def stream_batch(self, prompts: Sequence[str], *, stop: Sequence[str] = (), use_cache: bool = True,
                     compile: bool | None = None, **sampling: object) -> Iterator[list[str]]:
        """Yield, per decoding step, the new text of each prompt ('' while a character is incomplete).
        `compile`: the compiled decode step (generate.py: None where it pays, True now, False never)."""
        yield from self.stream_batch_ids([self.encode_prompt(p) for p in prompts], stop=stop, use_cache=use_cache,
                                         compile=compile, **sampling)

    def stream_batch_ids(self, prompts: Sequence[Sequence[int]], *, stop: Sequence[str] = (),
                         stop_ids: Sequence[int] | None = None, suppress_ids: Sequence[int] | None = None,
                         use_cache: bool = True, compile: bool | None = None,
                         **sampling: object) -> Iterator[list[str]]:
        """`stream_batch` for prompts given as token ids (a chat template builds them); generation
        ends at a token in `stop_ids` (default <|eos|>) and never emits `suppress_ids`."""
        cfg = SamplingConfig(**sampling)  # type: ignore[arg-type]
        rows = [TextRow(self.tokenizer, stop) for _ in prompts]
        if stop_ids is None:
            stop_ids = [self.tokenizer.eos_id] if self.tokenizer.eos_id is not None else []
        suppress = self._suppressed() if suppress_ids is None else suppress_ids
        steps = stream_ids(self.model, prompts, cfg, stop_ids=stop_ids,
                           suppress_ids=suppress, pad_id=self.tokenizer.pad_id, use_cache=use_cache,
                           compile=compile)
        produced = [0] * len(rows)  # tokens each sequence was fed through the model for
        try:
            for tokens, finished in steps:
                for i, row in enumerate(rows):
                    produced[i] += not row.done
                deltas = [row.push(t, f) for row, t, f in zip(rows, tokens.tolist(), finished.tolist())]
                yield deltas
                if all(row.done for row in rows):
                    break
            tails = [row.flush() for row in rows]
            if any(tails):
                yield tails
        finally:
            if self.usage is not None:
                for prompt, n in zip(prompts, produced):
                    self.usage.add(len(prompt), n)

    def generate(self, prompt: str | Sequence[str], *, stop: Sequence[str] = (), use_cache: bool = True,
                 compile: bool | None = None,
                 max_new_tokens: int = 64, greedy: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                 no_repeat_ngram: int = 0, seed: int | None = None) -> str | list[str]:
        """Continue one prompt (returns a string) or several at once (returns a list)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = [""] * len(prompts)
        for deltas in self.stream_batch(prompts, stop=stop, use_cache=use_cache, compile=compile,
                                        max_new_tokens=max_new_tokens,
                                        greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                                        repetition_penalty=repetition_penalty, no_repeat_ngram=no_repeat_ngram,
                                        seed=seed):
            texts = [t + d for t, d in zip(texts, deltas)]
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, prompt: str, **kwargs: object) -> Iterator[str]:
        """Yield the continuation of one prompt piece by piece, as it is generated."""
        for deltas in self.stream_batch([prompt], **kwargs):  # type: ignore[arg-type]
            if deltas[0]:
                yield deltas[0]

    @torch.no_grad()
    def logits(self, text: str) -> torch.Tensor:
        ids = torch.tensor([self.encode_prompt(text)], device=next(self.model.parameters()).device)
        return self.model(ids)[0]


class TextRow:
    """Turns one sequence's new tokens into text deltas: waits out incomplete UTF-8 characters,
    holds back text that may be the start of a stop string, and cuts at the first stop string.
    One per generated sequence (`LanguageModel.stream_batch`, the serving engine)."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.emitted = 0
        self.done = False
        self.text = ""

    def push(self, token: int, finished: bool) -> str:
        """Take the next token (finished: the sequence's last); return the text now safe to show."""
        if self.done:
            return ""
        if finished and token == self.tokenizer.eos_id:
            self.done = True
            return self.flush()
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.done = True
            return self.flush()
        if finished:
            self.done = True
            return self.flush()
        if self.text.endswith("\ufffd"):
            return ""
        safe = max(self.emitted, len(self.text) - self.holdback)
        delta, self.emitted = self.text[self.emitted:safe], safe
        return delta

    def flush(self) -> str:
        """The text not yet returned."""
        delta, self.emitted = self.text[self.emitted:], len(self.text)
        return delta


def load(run_dir: str | Path, device: str = "auto", key: Key | None = None, verify: bool | None = None) -> LanguageModel:
    """Load a trained run: `candorlm.load("runs/demo").generate("今天")` (checked against its manifest
    unless verify=False)."""
    return LanguageModel.load(run_dir, device, key, verify)
