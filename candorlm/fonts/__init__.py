"""The font candorlm draws and embeds Chinese with, found without any system font.

Noto Sans CJK (Regular, SIL Open Font License 1.1) comes from PyPI in the
`noto-cjk-sans-jp-regular` package, a dependency, so a server, a container or CI renders
Chinese the same as a desktop. That file is the Japanese-default edition of the pan-CJK font:
it covers every Chinese character the Simplified Chinese edition does, and its own `locl`
feature for Simplified Chinese (OpenType language ZHS) names the glyph a Chinese reader expects
where the forms differ (骨, 直, 关, ...). We apply that substitution ourselves: matplotlib
through `text.language` (figures.py), the pages through the cmap of their embedded subset
(web.py). No Simplified Chinese edition is published as a pip package; the one that is (a
variable TrueType collection) draws its default instance, Thin, in matplotlib, and instancing
it at Regular takes fontTools over ten minutes.

CANDORLM_CJK_FONT=/path/font.otf uses another font file instead.
"""

from candorlm.fonts.figures import use_cjk_font
from candorlm.fonts.files import cjk_font_path, covers, zhs_cmap
from candorlm.fonts.web import CSS_FAMILY, embed_cjk_font, font_face_css

__all__ = ["CSS_FAMILY", "cjk_font_path", "covers", "embed_cjk_font", "font_face_css", "use_cjk_font", "zhs_cmap"]
