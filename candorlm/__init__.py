"""candorlm: train transformer language models from raw text, and be honest about their limits.

    import candorlm
    candorlm.prepare(["builtin:peoples-daily"], "data/pd")
    candorlm.train("runs/pd", data="data/pd", preset="tiny", max_steps=500)
    lm = candorlm.load("runs/pd")
    print(lm.generate("今天", max_new_tokens=40, seed=0))

Names are imported on first use, so `import candorlm` (and `candorlm --help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CandorError": "candorlm.errors",
    "LanguageModel": "candorlm.lm",
    "load": "candorlm.lm",
    "ModelConfig": "candorlm.config",
    "RunConfig": "candorlm.config",
    "TrainConfig": "candorlm.config",
    "resolve": "candorlm.config",
    "prepare": "candorlm.prepare",
    "train_tokenizer_file": "candorlm.prepare",
    "TrainResult": "candorlm.training",
    "train": "candorlm.training",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'candorlm' has no attribute {name!r}")
