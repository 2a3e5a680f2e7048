"""A font that has Chinese characters, for the PNG plots' token labels.

matplotlib's bundled DejaVu Sans has no CJK glyphs, so Chinese labels would come out as empty
boxes. We look for a system font that covers them (fontconfig's `fc-list :lang=zh`, then
matplotlib's own list of system fonts), or the file named by CANDORLM_CJK_FONT, and add it as a
fallback behind DejaVu Sans. `make test` installs Debian's fonts-wqy-zenhei where none is found.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("candorlm")

SAMPLE = "我爱编程中国经济人民日报"
# Family names to try first when fontconfig is absent (macOS, Windows, other distributions).
KNOWN = ("wqy", "notosanscjk", "notoserifcjk", "sourcehan", "droidsansfallback", "simhei", "simsun",
         "msyh", "pingfang", "hiragino", "heiti", "songti", "arphic", "uming", "ukai")


def covers(path: str | Path, text: str) -> bool:
    """Whether the font file has a glyph for every character of `text`."""
    from matplotlib.ft2font import FT2Font

    try:
        font = FT2Font(str(path))
    except (OSError, RuntimeError, ValueError):
        return False
    return all(font.get_char_index(ord(ch)) != 0 for ch in text if not ch.isspace())


def _candidates() -> list[str]:
    env = os.environ.get("CANDORLM_CJK_FONT")
    if env:
        return [env]
    found: list[str] = []
    if shutil.which("fc-list"):
        out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=30)
        found += sorted(line.split(":")[0].strip() for line in out.stdout.splitlines() if line.strip())
    from matplotlib import font_manager

    system = font_manager.findSystemFonts()
    found += sorted(p for p in system if any(k in Path(p).name.lower().replace("-", "").replace("_", "")
                                             for k in KNOWN))
    return found


@lru_cache(maxsize=1)
def find_cjk_font() -> Path | None:
    """The first font file that covers common Chinese characters, or None."""
    for path in _candidates():
        if Path(path).is_file() and covers(path, SAMPLE):
            return Path(path)
    if os.environ.get("CANDORLM_CJK_FONT"):
        log.warning("CANDORLM_CJK_FONT=%s is not a font with Chinese characters", os.environ["CANDORLM_CJK_FONT"])
    return None


@lru_cache(maxsize=1)
def use_cjk_font() -> str | None:
    """Make matplotlib fall back to a CJK font for characters DejaVu Sans lacks; returns its
    family name, or None (with a warning saying how to fix it) when there is none."""
    import matplotlib
    from matplotlib import font_manager

    path = find_cjk_font()
    if path is None:
        log.warning("no font with Chinese characters found: Chinese token labels in PNGs will show as boxes. "
                    "Install one (Debian: apt-get install fonts-wqy-zenhei) or set CANDORLM_CJK_FONT=/path/font.ttf")
        return None
    # wqy-zenhei's only weight is "medium"; matplotlib's fuzzy match uses it and would log a warning
    # on every plot that asks for "normal".
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    font_manager.fontManager.addfont(str(path))
    family = font_manager.FontProperties(fname=str(path)).get_name()
    # A list in font.family (not font.sans-serif) is what makes matplotlib fall back glyph by glyph.
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", family]
    return family
