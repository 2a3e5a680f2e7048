"""A self-contained page carries its own Chinese font: a subset of the bundled CJK font holding
only the characters the page uses, inline as a WOFF data URI in an @font-face rule, so the page
reads the same on a machine without any CJK font and stays small (a few hundred characters make
tens of kB, where the whole font is 16 MB)."""

from __future__ import annotations

import base64
import io
import string
from pathlib import Path

from candorlm.fonts.files import open_font, cjk_font_path, zhs_cmap

CSS_FAMILY = "candorlm CJK"
# Always kept: text a page's script may write that its source does not spell out (numbers).
_ALWAYS = string.printable + "–—·×→−…“”‘’"
# No URL: a self-contained page names nothing to fetch (the explain tests check).
_LICENSE = ("Noto Sans CJK, subset: Copyright 2014-2021 Adobe, with Reserved Font Name 'Source'; "
            "licensed under the SIL Open Font License, Version 1.1 (openfontlicense.org)")


def subset_font(text: str, path: Path | None = None) -> bytes:
    """A WOFF font with the glyphs of `text`'s characters (those the font has) and .notdef, each
    mapped to its Simplified Chinese form; layout tables dropped (nothing on our pages needs them)."""
    from fontTools import subset

    path = path or cjk_font_path()
    cmap = zhs_cmap(path)
    wanted = sorted({ord(ch) for ch in text + _ALWAYS} & cmap.keys())
    font = open_font(path)
    for table in font["cmap"].tables:  # the Chinese forms in place of the font's default ones
        table.cmap = {cp: cmap.get(cp, glyph) for cp, glyph in table.cmap.items()}
    options = subset.Options()
    options.layout_features = []
    options.notdef_outline = True  # a character the subset lacks still shows as a box, not nothing
    options.name_IDs = [0, 1, 2, 3, 4, 5, 6, 13, 14]  # names, copyright and the licence
    options.drop_tables += ["DSIG"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=wanted)
    subsetter.subset(font)
    font.flavor = "woff"  # zlib; WOFF2 would need the brotli package for ~30% less
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()


def font_face_css(text: str) -> str:
    """An @font-face rule for CSS_FAMILY holding the glyphs of `text`."""
    data = base64.b64encode(subset_font(text)).decode("ascii")
    return (f"/* {_LICENSE} */\n@font-face {{ font-family: \"{CSS_FAMILY}\"; font-style: normal; font-weight: 400; "
            f"src: url(data:font/woff;base64,{data}) format(\"woff\"); }}")


def embed_cjk_font(html: str) -> str:
    """The page with a <style> before </head> that embeds the font subset for its characters."""
    head_end = html.find("</head>")
    if head_end < 0:
        raise ValueError("the page has no </head> to put its font in")
    style = f"<style>\n{font_face_css(html)}\n</style>\n"
    return html[:head_end] + style + html[head_end:]
