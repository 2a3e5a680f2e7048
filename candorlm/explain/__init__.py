"""Why the model said what it said: attention maps, logit lens, attribution, activation
patching, and a faithfulness test of the attributions. Every tool reads the model through the
named hook points of `candorlm.model.hooks`, so it works on any candorlm model, including
those imported from the Hugging Face Llama format.

    from candorlm.explain import explain
    explain("runs/demo", prompt="我爱", target="编程", out="explain-out")
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# matplotlib (imported by the plots and by captum) writes a font cache under the home directory
# unless told otherwise; keep it in the temporary directory instead.
if "MPLCONFIGDIR" not in os.environ:
    _mpl_dir = Path(tempfile.gettempdir()) / f"candorlm-matplotlib-{os.getuid() if hasattr(os, 'getuid') else 0}"
    _mpl_dir.mkdir(parents=True, exist_ok=True)
    os.environ["MPLCONFIGDIR"] = str(_mpl_dir)

__all__ = ["explain"]


def __getattr__(name: str) -> object:
    # Imported on first use: the report pulls in matplotlib and captum.
    if name == "explain":
        from candorlm.explain.report import explain

        return explain
    raise AttributeError(f"module 'candorlm.explain' has no attribute {name!r}")
