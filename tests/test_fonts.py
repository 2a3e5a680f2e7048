"""Chinese renders from the bundled font, never from a system one: the font file is the pip
package's; matplotlib draws real glyphs (no 'Glyph ... missing' warning, no .notdef box) in their
Simplified Chinese forms; a page's embedded subset holds exactly the glyphs it needs."""

import io
import warnings
from pathlib import Path

import numpy as np
import pytest

import candorlm.explain  # noqa: F401  (sets MPLCONFIGDIR before matplotlib loads)
from candorlm.errors import CandorError
from candorlm.explain import plots
from candorlm.fonts import cjk_font_path, covers, embed_cjk_font, use_cjk_font, zhs_cmap
from candorlm.fonts.files import PACKAGE
from candorlm.fonts.web import subset_font

CHARS = "我爱编程"
MISSING = chr(0x10FFFD)  # a private-use code point no font has: drawn as the .notdef box
SC_FORM = "骨"  # one of the characters whose Simplified Chinese form differs from the Japanese one


@pytest.fixture(scope="module")
def font_path():
    return cjk_font_path()


def test_the_font_comes_from_the_pip_package_not_the_system(font_path, monkeypatch):
    import importlib.util

    package_dir = Path(next(iter(importlib.util.find_spec(PACKAGE).submodule_search_locations)))
    assert font_path.parent == package_dir and font_path.suffix == ".otf"
    assert covers(font_path, "我爱编程中国经济人民日报，。？：“”") and not covers(font_path, MISSING)
    license_text = next(package_dir.parent.glob("noto_cjk_sans_jp_regular-*.dist-info")).joinpath(
        "licenses", "LICENSE").read_text(encoding="utf-8")
    assert "SIL Open Font License" in license_text


def test_a_bad_override_fails_loudly(tmp_path, monkeypatch):
    fake = tmp_path / "font.ttf"
    fake.write_bytes(b"not a font")
    monkeypatch.setenv("CANDORLM_CJK_FONT", str(fake))
    with pytest.raises(CandorError, match="CANDORLM_CJK_FONT"):
        cjk_font_path()
    monkeypatch.setenv("CANDORLM_CJK_FONT", str(tmp_path / "absent.otf"))
    with pytest.raises(CandorError, match="not a font file"):
        cjk_font_path()


def render_text(text: str, family: list[str] | None, language: str | None = None) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1), dpi=100)
    FigureCanvasAgg(fig)
    extra = {"family": family} if family else {}
    if language:
        extra["language"] = language
    fig.text(0.1, 0.3, text, fontsize=28, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DejaVu alone warns about the glyphs it lacks, on purpose
        fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., 0].copy()


def test_matplotlib_draws_real_glyphs_with_the_bundled_font(font_path, tmp_path):
    family = use_cjk_font()
    assert family == "Noto Sans CJK JP"
    ours = [render_text(ch, None) for ch in CHARS]  # the default family list after use_cjk_font()
    boxes = [render_text(ch, ["DejaVu Sans"]) for ch in CHARS]  # DejaVu alone: .notdef boxes
    assert all(np.array_equal(boxes[0], b) for b in boxes[1:]), "DejaVu should draw every CJK character as one box"
    notdef = render_text(MISSING, None)  # what our family list draws for a character no font has
    assert len({o.tobytes() for o in ours}) == len(CHARS), "two Chinese labels rendered identically: boxes?"
    assert all(not np.array_equal(o, boxes[0]) and not np.array_equal(o, notdef) and (o < 128).sum() > 50
               for o in ours)
    # The real plot: no glyph is reported missing while the Chinese tick labels are drawn.
    patterns = np.tril(np.ones((2, 5, 5))) / np.arange(1, 6)[:, None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.attention_png(patterns, ["<|bos|>", "我", "爱", "编程", "·爱"], 0, tmp_path / "a.png")
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not missing, missing
    assert (tmp_path / "a.png").stat().st_size > 5000


def test_matplotlib_uses_the_simplified_chinese_forms(font_path):
    import matplotlib

    if "text.language" not in matplotlib.rcParams:
        pytest.skip("matplotlib < 3.11 does not shape text: figures show the font's default (Japanese) forms")
    use_cjk_font()
    ours = render_text(SC_FORM, None)
    assert np.array_equal(ours, render_text(SC_FORM, None, language="zh-Hans"))
    assert not np.array_equal(ours, render_text(SC_FORM, None, language="ja"))


def test_page_subset_holds_the_page_glyphs_in_chinese_forms(font_path):
    from fontTools.ttLib import TTFont

    page = "<html><head></head><body>报告卡 骨 report</body></html>"
    data = subset_font(page)
    font = TTFont(io.BytesIO(data))
    assert data[:4] == b"wOFF" and len(data) < 40_000  # the whole font is 16 MB
    cmap = font.getBestCmap()
    assert {ord(c) for c in "报告卡骨report"} <= cmap.keys()
    assert ord("经") not in cmap and ord("济") not in cmap  # only what the page uses (and ASCII)
    assert cmap[ord(SC_FORM)] == zhs_cmap(font_path)[ord(SC_FORM)] != TTFont(str(font_path), lazy=True).getBestCmap()[ord(SC_FORM)]
    assert ".notdef" in font.getGlyphOrder()
    html = embed_cjk_font(page)
    assert html.index("@font-face") < html.index("</head>") and "Open Font License" in html
    with pytest.raises(ValueError):
        embed_cjk_font("<p>no head</p>")
