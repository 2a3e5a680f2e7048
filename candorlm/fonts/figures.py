"""matplotlib draws Chinese with the bundled CJK font: DejaVu Sans (matplotlib's own) for what it
has, the CJK font glyph by glyph for the rest."""

from __future__ import annotations

import logging
from functools import lru_cache

from candorlm.fonts.files import cjk_font_path


@lru_cache(maxsize=1)
def use_cjk_font() -> str:
    """Make matplotlib fall back to the CJK font for characters DejaVu Sans lacks; returns the
    font's family name. Raises CandorError when the font is not installed."""
    import matplotlib
    from matplotlib import font_manager

    path = cjk_font_path()
    # A font whose only weight is not "normal" makes matplotlib's fuzzy match log a warning on
    # every plot (CANDORLM_CJK_FONT may name one).
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    font_manager.fontManager.addfont(str(path))
    family = font_manager.FontProperties(fname=str(path)).get_name()
    # A list in font.family (not font.sans-serif) is what makes matplotlib fall back glyph by glyph.
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", family]
    if "text.language" in matplotlib.rcParams:  # matplotlib >= 3.11 shapes text: the font's own
        matplotlib.rcParams["text.language"] = "zh-Hans"  # Simplified Chinese forms (its locl ZHS)
    return family
