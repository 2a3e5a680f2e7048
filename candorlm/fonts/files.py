"""Where the CJK font file is, and what it maps each character to (see the package docstring)."""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from candorlm.errors import CandorError

PACKAGE = "noto_cjk_sans_jp_regular"
PIP_NAME = "noto-cjk-sans-jp-regular"
FILE_NAME = "NotoSansCJKjp-Regular.otf"
SAMPLE = "我爱编程中国经济人民日报"


def cjk_font_path() -> Path:
    """The font file with the Chinese glyphs: $CANDORLM_CJK_FONT, else the bundled Noto Sans CJK."""
    env = os.environ.get("CANDORLM_CJK_FONT")
    if env:
        path = Path(env)
        if not path.is_file() or not covers(path, SAMPLE):
            raise CandorError(f"CANDORLM_CJK_FONT={env} is not a font file with Chinese characters; "
                              f"unset it to use the bundled Noto Sans CJK")
        return path
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CandorError(f"the Chinese font package is not installed: pip install {PIP_NAME} "
                          f"(candorlm depends on it; reinstall candorlm to get it)")
    path = Path(next(iter(spec.submodule_search_locations))) / FILE_NAME
    if not path.is_file():
        raise CandorError(f"{path} is missing: reinstall it with pip install --force-reinstall {PIP_NAME}")
    return path


def open_font(path: Path):  # -> fontTools.ttLib.TTFont
    from fontTools.ttLib import TTFont

    # A collection (.ttc/.otc): its first face. lazy: a CJK font's outlines are tens of MB.
    return TTFont(str(path), lazy=True, fontNumber=0 if path.suffix.lower() in (".ttc", ".otc") else -1)


def zhs_substitutions(font) -> dict[str, str]:  # noqa: ANN001  (a fontTools TTFont)
    """glyph -> glyph: the font's `locl` single substitutions for Simplified Chinese (empty when
    it has none, as a Chinese edition needs none)."""
    if "GSUB" not in font:
        return {}
    gsub = font["GSUB"].table
    lookups: set[int] = set()
    for script in gsub.ScriptList.ScriptRecord:
        for lang in script.Script.LangSysRecord:
            if lang.LangSysTag == "ZHS ":
                for index in lang.LangSys.FeatureIndex:
                    feature = gsub.FeatureList.FeatureRecord[index]
                    if feature.FeatureTag == "locl":
                        lookups.update(feature.Feature.LookupListIndex)
    mapping: dict[str, str] = {}
    for index in sorted(lookups):
        lookup = gsub.LookupList.Lookup[index]
        for sub in lookup.SubTable:
            sub = sub.ExtSubTable if lookup.LookupType == 7 else sub
            if hasattr(sub, "mapping"):  # single substitution (type 1)
                mapping.update(sub.mapping)
    return mapping


@lru_cache(maxsize=4)
def zhs_cmap(path: Path) -> dict[int, str]:
    """code point -> glyph name as a Simplified Chinese reader should see it."""
    font = open_font(path)
    mapping = zhs_substitutions(font)
    return {cp: mapping.get(glyph, glyph) for cp, glyph in font.getBestCmap().items()}


def covers(path: str | Path, text: str) -> bool:
    """Whether the font file has a glyph for every character of `text` (spaces aside)."""
    try:
        cmap = open_font(Path(path)).getBestCmap() or {}
    except Exception:  # noqa: BLE001  (fontTools raises many kinds on a file that is not a font)
        return False
    return all(ord(ch) in cmap for ch in text if not ch.isspace())
