"""Chinese token labels in the PNGs are real glyphs, not empty boxes."""

import warnings

import numpy as np
import pytest

import candorlm.explain  # noqa: F401  (sets MPLCONFIGDIR before matplotlib loads)
from candorlm.explain import plots
from candorlm.explain.fonts import covers, find_cjk_font, use_cjk_font

CHARS = "我爱编程"
MISSING = chr(0x10FFFD)  # a private-use code point no font has: drawn as the .notdef box


@pytest.fixture(scope="module")
def font_path():
    path = find_cjk_font()
    assert path is not None, ("no font with Chinese characters on this machine: `make test` installs Debian's "
                              "fonts-wqy-zenhei; elsewhere install a CJK font or set CANDORLM_CJK_FONT")
    return path


def glyph_bitmap(path, ch: str) -> np.ndarray:
    from matplotlib.ft2font import FT2Font

    font = FT2Font(str(path))
    font.set_size(48, 72)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matplotlib warns about the missing glyph we ask for on purpose
        font.set_text(ch)
    font.draw_glyphs_to_bitmap()
    return np.asarray(font.get_image())


def test_font_has_real_glyphs_not_the_notdef_box(font_path):
    assert covers(font_path, CHARS) and not covers(font_path, MISSING)
    notdef = glyph_bitmap(font_path, MISSING)
    bitmaps = [glyph_bitmap(font_path, ch) for ch in CHARS]
    for ch, bitmap in zip(CHARS, bitmaps):
        assert (bitmap > 128).sum() > 50, f"{ch} renders empty"
        assert bitmap.shape != notdef.shape or not np.array_equal(bitmap, notdef), f"{ch} renders as the .notdef box"
    # Empty boxes all look alike; real characters do not.
    flat = {bm.tobytes() + bytes(bm.shape) for bm in bitmaps}
    assert len(flat) == len(CHARS)


def render_text(text: str, family: list[str] | None) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1), dpi=100)
    FigureCanvasAgg(fig)
    fig.text(0.1, 0.3, text, fontsize=28, **({"family": family} if family else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., 0].copy()


def test_matplotlib_labels_use_the_cjk_font(font_path, tmp_path):
    family = use_cjk_font()
    assert family
    ours = [render_text(ch, None) for ch in CHARS]  # the default family list after use_cjk_font()
    boxes = [render_text(ch, ["DejaVu Sans"]) for ch in CHARS]  # DejaVu alone: .notdef boxes
    assert all(np.array_equal(boxes[0], b) for b in boxes[1:]), "DejaVu should draw every CJK character as one box"
    assert len({o.tobytes() for o in ours}) == len(CHARS), "two Chinese labels rendered identically: boxes?"
    assert all(not np.array_equal(o, boxes[0]) for o in ours)
    # The real plot: no glyph is reported missing while the Chinese tick labels are drawn.
    patterns = np.tril(np.ones((2, 5, 5))) / np.arange(1, 6)[:, None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.attention_png(patterns, ["<|bos|>", "我", "爱", "编程", "·爱"], 0, tmp_path / "a.png")
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not missing, missing
    assert (tmp_path / "a.png").stat().st_size > 5000
