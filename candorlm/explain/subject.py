"""What is explained, for each architecture: load any run, turn a prompt and a target into an
`Example`, and run the model on it. The explain tools pick their path from the run's
`model.arch`:

- decoder (and runs imported from the Hugging Face Llama format): the target is the
  continuation of the prompt (default: the model's own most likely next token).
- encoder (masked LM): the target is the prediction at masked positions. Mark them in the
  prompt with the tokenizer's mask token, `<|mask|>` ("我爱<|mask|>京"); the target's tokens
  fill the last len(target) masks, in order (default: the model's own most likely token at the
  last mask). A prompt without `<|mask|>` gets one appended per target token (one without a
  target): "what comes here". Attention is bidirectional; the logit lens reads every position's
  residual stream through the final norm and the masked-LM head.
- encoder-decoder: the prompt is the source, the target the decoder's output (default: its own
  greedy output up to <|eos|>, at most 32 tokens). The source is framed as the run was trained:
  <|bos|> + text for a pretrained (denoising) run, text + <|eos|> for a fine-tuned one
  (translate, qa). Attributions and deletion vary the source; the decoder is teacher-forced
  with <|bos|> + target[:-1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from candorlm.checkpoint.run import load_run
from candorlm.errors import CandorError
from candorlm.explain.tokens import Example, encode_example, token_labels
from candorlm.tokenizer import MASK, Tokenizer

MAX_OUTPUT = 32  # tokens of an encoder-decoder's own output explained when no target is given


def model_inputs(ids: torch.Tensor, example: Example) -> tuple[torch.Tensor, ...]:
    """The positional arguments of `model(...)` for a batch of varied inputs `ids` (B, T)."""
    if not example.decoder_ids:
        return (ids,)
    dec = torch.tensor([example.decoder_ids], device=ids.device).expand(ids.shape[0], -1)
    return ids, dec


def embed_point(example: Example) -> str:
    """The hook point whose output is the embedding of `example.ids`."""
    return "encoder.hook_embed" if example.decoder_ids else "hook_embed"


def _best(logits: torch.Tensor, banned: set[int] | frozenset[int]) -> int:
    logits = logits.float().clone()
    if banned:
        logits[sorted(banned)] = float("-inf")
    return int(logits.argmax())


@dataclass
class Subject:
    """A model and the tokenizers that read its prompt (`source`) and write its target (`target`)."""

    model: nn.Module
    target: Tokenizer
    source: Tokenizer
    arch: str
    finetuned: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def pad_id(self) -> int:
        """The token whose embedding is the integrated-gradients baseline of the prompt."""
        return self.source.pad_id

    def logits(self, ids: torch.Tensor, example: Example) -> torch.Tensor:
        """The model's logits (B, T', V) for varied inputs `ids` (B, T); T' is the decoder's length
        for an encoder-decoder."""
        return self.model(*model_inputs(ids, example))

    def example(self, prompt: str, target: str | None = None, target_ids: list[int] | None = None) -> Example:
        """The prompt and target (text, or ids; neither: the model's own prediction) as an Example
        for this architecture."""
        if target is not None:
            target_ids = self.target.encode(target)
            if not target_ids:
                raise CandorError(f"the target {target!r} encodes to no tokens: give a non-empty --target")
        if self.arch == "encoder":
            ex = self._masked(prompt, target_ids)
        elif self.arch == "seq2seq":
            ex = self._seq2seq(prompt, target_ids)
        else:
            ex = self._decoder(prompt, target_ids)
        longest = max(len(ex.ids), len(ex.decoder_ids))
        if longest > self.model.cfg.max_seq_len:
            raise CandorError(f"the explained input is {longest} tokens; the model reads at most "
                              f"{self.model.cfg.max_seq_len}. Shorten the prompt or the target")
        return ex

    def _decoder(self, prompt: str, target_ids: list[int] | None) -> Example:
        if target_ids is not None:
            return encode_example(self.target, prompt, target_ids=target_ids)
        probe = encode_example(self.target, prompt)
        with torch.no_grad():
            logits = self.model(torch.tensor([probe.ids], device=self.device))[0, -1]
        return encode_example(self.target, prompt, target_ids=[_best(logits, self.target.special_ids)])

    def _encode_with_masks(self, tok: Tokenizer, text: str) -> list[int]:
        """Text with literal `<|mask|>` markers -> ids, each marker one mask token (whatever the
        tokenizer would make of the marker's characters)."""
        pieces = text.split(MASK)
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k:
                ids.append(tok.mask_id)
            ids.extend(tok.encode(piece) if piece else [])
        return ids

    def _masked(self, prompt: str, target_ids: list[int] | None) -> Example:
        tok = self.target
        if tok.mask_id is None:
            raise CandorError("this encoder's tokenizer has no <|mask|> token, so no position can be marked for "
                              "prediction; explain a run trained by candorlm (its tokenizer reserves <|mask|>)")
        need = len(target_ids) if target_ids else 1
        bos = [tok.bos_id] if tok.bos_id is not None else []
        body = self._encode_with_masks(tok, prompt)
        if tok.mask_id not in body:
            body += [tok.mask_id] * need
        ids = bos + body
        masks = [i for i, t in enumerate(ids) if t == tok.mask_id]
        if len(masks) < need:
            raise CandorError(f"the target {tok.decode(target_ids or [])!r} is {need} tokens but the prompt marks "
                              f"{len(masks)} position(s) with {MASK}; put one {MASK} per target token where the "
                              f"target goes")
        chosen = tuple(masks[-need:])
        if target_ids is None:
            with torch.no_grad():
                logits = self.model(torch.tensor([ids], device=self.device))[0, chosen[0]]
            target_ids = [_best(logits, tok.special_ids)]
        frame = tuple(sorted(set(range(len(bos))) | set(masks)))
        return Example(ids, token_labels(tok, ids), len(ids), target_ids, frame=frame, masked=chosen)

    def _seq2seq(self, prompt: str, target_ids: list[int] | None) -> Example:
        src, tgt = self.source, self.target
        text = self._encode_with_masks(src, prompt) if src.mask_id is not None else src.encode(prompt)
        if not text:
            raise CandorError("the prompt (the source) is empty: give --prompt some text")
        if self.finetuned:
            ids, frame = text + [src.eos_id], {len(text)}
        else:
            ids, frame = [src.bos_id] + text, {0}
        frame |= {i for i, t in enumerate(ids) if t == src.mask_id}
        target_ids = list(target_ids) if target_ids is not None else self._greedy(ids)
        decoder_ids = [tgt.bos_id] + target_ids[:-1]
        return Example(ids, token_labels(src, ids), len(ids), target_ids, frame=tuple(sorted(frame)),
                       decoder_ids=tuple(decoder_ids), decoder_labels=tuple(token_labels(tgt, decoder_ids)))

    @torch.no_grad()
    def _greedy(self, source: list[int]) -> list[int]:
        """The decoder's own greedy output for `source`, without specials, up to <|eos|>."""
        tgt = self.target
        src = torch.tensor([source], device=self.device)
        out: list[int] = []
        banned = set(tgt.special_ids) - {tgt.eos_id}
        for _ in range(min(MAX_OUTPUT, self.model.cfg.max_seq_len)):
            dec = torch.tensor([[tgt.bos_id] + out], device=self.device)
            token = _best(self.model(src, dec)[0, -1], banned | (set() if out else {tgt.eos_id}))
            if token == tgt.eos_id:
                break
            out.append(token)
        return out

    def corrupted(self, prompt: str, clean: Example) -> Example:
        """The corrupted prompt of activation patching, framed like `clean` and explaining the same target."""
        if self.arch == "decoder":
            return encode_example(self.target, prompt)
        bad = self.example(prompt, target_ids=clean.target_ids)
        if len(bad.ids) == len(clean.ids) and bad.masked != clean.masked:
            raise CandorError(f"--corrupt must mark the same position(s) with {MASK} as --prompt "
                              f"(positions {list(clean.masked)}; {prompt!r} has {list(bad.masked)})")
        return bad


def load_subject(run: str | Path, device: str = "cpu", verify: bool | None = None) -> Subject:
    """A run of any architecture (its final weights, or its newest checkpoint while it trains),
    opened by `load_run` (checked against its manifest unless verify=False)."""
    loaded = load_run(run, verify=verify)
    info = loaded.info
    if info.get("task") == "sentiment":
        raise CandorError(f"{loaded.path} holds a sentiment classifier, which predicts a label, not tokens; explain "
                          f"the pretrained run it started from ({info.get('base_run') or 'see its task.json'})")
    if info.get("head") == "tag":
        raise CandorError(f"{loaded.path} holds a tagger (finetune --head tag), which labels each source token, not "
                          f"a model that writes tokens; explain reads language models and seq2seq translators")
    model = loaded.build_model(device)
    source = loaded.source_tokenizer or loaded.tokenizer
    return Subject(model, loaded.tokenizer, source, loaded.config.model.arch, finetuned=bool(info))
