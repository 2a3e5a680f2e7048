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
import sys
import types
from typing import Any, Iterable

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
    "train": "candorlm.pretrain",
    "load_task": "candorlm.tasks.predict",
    "TaskModel": "candorlm.tasks.predict",
}

__all__ = [*_EXPORTS, "__version__"]


class _Package(types.ModuleType):
    """A package whose exported functions keep their names when a submodule has the same one
    (`candorlm.prepare` the function, candorlm/prepare.py the module). Importing a submodule
    sets it as an attribute of its package, which would replace the function by the module;
    that one assignment is skipped (the module stays in sys.modules and `from ... import` works)."""

    _functions: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        if (name in self._functions and isinstance(value, types.ModuleType)
                and value.__name__ == f"{self.__name__}.{name}"):
            return
        super().__setattr__(name, value)


def keep_functions(module_name: str, names: Iterable[str]) -> None:
    """Protect the functions `names` of package `module_name` from submodules of the same name."""
    module = sys.modules[module_name]
    module.__class__ = _Package
    object.__setattr__(module, "_functions", frozenset(names))


keep_functions(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'candorlm' has no attribute {name!r}")
