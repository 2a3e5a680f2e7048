"""Translation as tagging (`finetune --task translate --head tag`): for aligned pairs such as
builtin:pinyin (one space-separated source token per target character), an encoder reads the
whole source and a linear head picks each position's character (candorlm.model.TokenTagger), as
BERT tags tokens.

Why: an input method's output has exactly the source's length, so nothing has to be generated
in order. Every position sees the whole sentence in both directions (the context that settles a
homophone), training is one cross-entropy per character with no alignment to learn, and decoding
is one forward pass (no beam).

    input    <|bos|> zhong guo ren min yin hang <|eos|>
    labels      -     中    国  人  民  银  行     -

Vocabularies, both from the training split only:
- source (source_tokenizer.json): one word-level token per space-separated source token: the
  toneless syllables, and the other characters as they are;
- target (tokenizer.json): one class per character of the training targets. A test character
  never seen in training cannot be output, so it is scored wrong.

A dictionary (task.json's "lexicon"): for each source token, the characters it stood for in the
training split, as an input method's dictionary lists a syllable's candidates. Training and
decoding score only those candidates, so the model spends itself on choosing among homophones,
not on learning which characters a syllable can be. A source token the dictionary lacks may be
any character, except that one of a single character is copied as it is (punctuation, digits or
Latin letters the training split never had).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from torch import nn

from candorlm.beam import pad_training_batch, right_pad
from candorlm.errors import CandorError
from candorlm.model import TokenTagger
from candorlm.progress import batched
from candorlm.tasks.base import Base, Prepared
from candorlm.tasks.data import Record
from candorlm.tokenizer import SPECIAL_TOKENS, UNK, Tokenizer


class Example(NamedTuple):
    ids: list[int]  # <|bos|> source tokens <|eos|>
    labels: list[int]  # a target class per source token, -100 at <|bos|>, <|eos|> and unseen characters
    record: Record


def vocabulary(tokens: Iterable[str], *, characters: bool) -> Tokenizer:
    """A word-level vocabulary of every token seen (most frequent first, candorlm's special tokens
    first): source tokens split at whitespace, or (characters=True) one token per character."""
    counts = Counter(tokens)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for token, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        vocab.setdefault(token, len(vocab))
    hf = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    hf.pre_tokenizer = (pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated") if characters
                        else pre_tokenizers.WhitespaceSplit())
    hf.decoder = decoders.Fuse() if characters else decoders.WordPiece()  # WordPiece: tokens joined by spaces
    hf.add_special_tokens(SPECIAL_TOKENS)
    return Tokenizer(hf)


def check_aligned(records: Sequence[Record], what: str) -> None:
    """Refuse pairs whose source token count differs from the target's character count."""
    for r in records:
        n, m = len(r["source"].split()), len(r["target"])
        if n != m:
            raise CandorError(f"{r.where}: --head tag needs aligned pairs (one space-separated source token per "
                              f"target character, like builtin:pinyin); this {what} pair has {n} source tokens "
                              f"and {m} target characters. Use --head generate (seq2seq) for such data")


def make_lexicon(records: Iterable[Record]) -> dict[str, str]:
    """Each source token -> the characters it stood for, most frequent first."""
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        for token, ch in zip(r["source"].split(), r["target"]):
            seen[token][ch] += 1
    return {t: "".join(ch for ch, _ in c.most_common()) for t, c in sorted(seen.items())}


def encode(src: Tokenizer, tokens: Sequence[str]) -> list[int]:
    """<|bos|> token ids <|eos|>; a token outside the vocabulary is <|unk|>."""
    ids = [src.hf.token_to_id(t) for t in tokens]
    return [src.bos_id] + [src.unk_id if i is None else i for i in ids] + [src.eos_id]  # type: ignore[list-item]


def prepare(base: Base, splits: dict[str, list[Record]], info: dict[str, Any]) -> Prepared:
    if base.arch != "encoder":
        raise CandorError(f"{base.run or 'a ' + base.arch + ' model'}: --head tag tags with an encoder "
                          f"(--arch encoder, or an encoder run), not a {base.arch}")
    if base.tokenizer is not None:  # a pretrained encoder reads its own vocabulary: refuse, never misread
        raise CandorError(f"{base.run}: --head tag trains from scratch (its source vocabulary is the data's "
                          f"tokens); omit the run")
    for split in ("train", "dev", "test"):
        check_aligned(splits[split], split)
    train = splits["train"]
    tgt = vocabulary((ch for r in train for ch in r["target"]), characters=True)
    src = vocabulary((t for r in train for t in r["source"].split()), characters=False)
    longest = max(len(r["target"]) for s in splits.values() for r in s) + 2
    cfg = base.config.model.model_copy(update={"arch": "encoder", "vocab_size": src.vocab_size, "src_vocab_size": 0,
                                               "max_seq_len": max(base.config.model.max_seq_len, longest)})
    base.config = base.config.model_copy(update={"model": cfg})
    lexicon = make_lexicon(train)
    model = TokenTagger(base.build(), tgt.vocab_size)

    def examples(split: str) -> list[Example]:
        out = []
        for r in splits[split]:
            labels = [tgt.hf.token_to_id(ch) for ch in r["target"]]
            out.append(Example(encode(src, r["source"].split()), [-100] + [-100 if y is None else y for y in labels]
                               + [-100], r))
        return out

    info = {**info, "head": "tag", "tags": tgt.vocab_size, "source_tokenizer": "word (space-separated tokens)",
            "target_tokenizer": "char (one class per character)", "lexicon": lexicon}
    return Prepared(model, cfg, tgt, src, examples("train"), examples("dev"), info, splits)


_CANDIDATES: dict[int, tuple[dict[str, str], torch.Tensor]] = {}


def candidates(lexicon: dict[str, str], src: Tokenizer, tgt: Tokenizer) -> torch.Tensor:
    """(source vocab, target vocab) bool: the classes each source token may take (see the module doc).
    Cached for the lexicon in use (the loss needs it at every step)."""
    hit = _CANDIDATES.get(id(lexicon))
    if hit is not None and hit[0] is lexicon:
        return hit[1]
    allowed = torch.zeros(src.vocab_size, tgt.vocab_size, dtype=torch.bool)
    allowed[:, len(SPECIAL_TOKENS):] = True  # a token the dictionary lacks: any character
    for token, chars in lexicon.items():
        row = src.hf.token_to_id(token)
        if row is None:
            continue
        allowed[row] = False
        for ch in chars:
            col = tgt.hf.token_to_id(ch)
            if col is not None:
                allowed[row, col] = True
    _CANDIDATES.clear()
    _CANDIDATES[id(lexicon)] = (lexicon, allowed)
    return allowed


def _scores(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Logits with every class outside a position's candidates pushed out of reach."""
    logits = model(ids, mask)
    return logits.masked_fill(~allowed.to(logits.device)[ids], -1e4)


def loss(model: nn.Module, batch: Sequence[Example], device: torch.device, prepared: Prepared) -> torch.Tensor:
    src, tgt = prepared.source_tokenizer, prepared.tokenizer
    allowed = candidates(prepared.info["lexicon"], src, tgt)  # type: ignore[arg-type]
    limit = prepared.model_config.max_seq_len
    ids, mask = pad_training_batch([e.ids for e in batch], src.pad_id, limit)  # type: ignore[union-attr]
    labels, _ = pad_training_batch([e.labels for e in batch], -100, limit)
    logits = _scores(model, ids.to(device), mask.to(device), allowed)
    return F.cross_entropy(logits.flatten(0, 1), labels.to(device).flatten(), ignore_index=-100)


class Piece(NamedTuple):
    source: int  # which source text
    at: int  # the offset of its first token in that text
    tokens: list[str]


def scored_pieces(model: nn.Module, src: Tokenizer, sources: Sequence[str], allowed: torch.Tensor,
                  batch_size: int = 128) -> Iterator[tuple[list[Piece], list[list[int]], torch.Tensor]]:
    """The source texts (space-separated tokens) cut into pieces the model reads whole, in batches
    of like length: each batch's pieces, their encoded rows and the tagger's logits over each
    position's candidates (B, T, classes). The model is in eval mode meanwhile."""
    room = model.cfg.max_seq_len - 2
    pieces = [Piece(i, at, tokens[at:at + room]) for i, tokens in enumerate(text.split() for text in sources)
              for at in range(0, len(tokens), room)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for idx in batched(sorted(range(len(pieces)), key=lambda j: len(pieces[j].tokens)), batch_size):
            rows = [encode(src, pieces[j].tokens) for j in idx]
            ids, mask = right_pad(rows, src.pad_id)
            yield [pieces[j] for j in idx], rows, _scores(model, ids.to(device), mask.to(device), allowed)
    finally:
        model.train(was_training)


@torch.no_grad()
def tag(model: nn.Module, src: Tokenizer, tgt: Tokenizer, sources: Sequence[str], lexicon: dict[str, str],
        batch_size: int = 128) -> list[str]:
    """The characters for each source text (space-separated tokens): one per token. A text longer
    than the model reads is tagged in consecutive pieces."""
    parts: list[dict[int, str]] = [{} for _ in sources]  # per text: piece offset -> its characters
    for pieces, rows, logits in scored_pieces(model, src, sources, candidates(lexicon, src, tgt), batch_size):
        for piece, row, classes in zip(pieces, rows, logits.argmax(-1).tolist()):
            chars = []
            for token, tid, c in zip(piece.tokens, row[1:-1], classes[1:]):
                copy = tid == src.unk_id and len(token) == 1  # an unseen character: as it is
                chars.append(token if copy else tgt.hf.id_to_token(c))
            parts[piece.source][piece.at] = "".join(chars)
    return ["".join(text[at] for at in sorted(text)) for text in parts]


def tag_dev(model: nn.Module, prepared: Prepared) -> tuple[list[str], list[str]]:
    """Outputs and references on the whole dev split (tagging is one forward pass: it is cheap)."""
    records = [e.record for e in prepared.dev]
    hyps = tag(model, prepared.source_tokenizer, prepared.tokenizer, [r["source"] for r in records],  # type: ignore[arg-type]
               prepared.info["lexicon"])
    return hyps, [r["target"] for r in records]
