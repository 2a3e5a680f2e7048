"""Transformer models: pure PyTorch modules, importing nothing from the rest of candorlm but config."""

from candorlm.config import ModelConfig
from candorlm.model.cache import KVCache
from candorlm.model.decoder import DecoderLM
from candorlm.model.encoder import EncoderLM
from candorlm.model.heads import SequenceClassifier, SpanReader, TokenTagger, best_spans
from candorlm.model.loss import lm_loss
from candorlm.model.seq2seq import Seq2SeqLM
from candorlm.model.trunk import Trunk

__all__ = ["DecoderLM", "EncoderLM", "KVCache", "ModelConfig", "Seq2SeqLM", "SequenceClassifier", "SpanReader",
           "TokenTagger", "Trunk", "best_spans", "build_model", "lm_loss"]

_ARCHS = {"decoder": DecoderLM, "encoder": EncoderLM, "seq2seq": Seq2SeqLM}

def build_model(cfg: ModelConfig) -> Trunk:
    """The model family named by `cfg.arch`: DecoderLM (GPT), EncoderLM (BERT) or Seq2SeqLM (Transformer)."""
    return _ARCHS[cfg.arch](cfg)
