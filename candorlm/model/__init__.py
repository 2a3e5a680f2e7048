"""Transformer models: pure PyTorch modules, importing nothing from the rest of candorlm but config."""

from candorlm.config import ModelConfig
from candorlm.model.cache import KVCache
from candorlm.model.decoder import DecoderLM, lm_loss

__all__ = ["DecoderLM", "KVCache", "ModelConfig", "lm_loss"]
