"""PNG figures: heatmaps with the tokens on the axes (Chinese labels through a CJK font)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from candorlm.fonts import use_cjk_font


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.figure import Figure

    use_cjk_font()
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _title(ax, text: str) -> None:  # noqa: ANN001
    width_in = ax.figure.get_figwidth()
    ax.set_title("\n".join(textwrap.wrap(text, max(30, int(width_in * 11)))), fontsize=9)


def _token_axes(ax, labels: list[str], x: bool = True, y: bool = True) -> None:  # noqa: ANN001
    n = len(labels)
    if x:
        ax.set_xticks(range(n), labels, rotation=90 if max(map(len, labels), default=0) > 2 else 0, fontsize=8)
    if y:
        ax.set_yticks(range(n), labels, fontsize=8)


def attention_png(patterns: np.ndarray, labels: list[str], layer: int, path: Path, keys: list[str] | None = None,
                  title: str = "") -> Path:
    """One layer's heads side by side: rows are queries (`labels`), columns are keys (`keys`,
    default the same tokens; cross-attention: the source's). `title` names the kind of attention."""
    keys = labels if keys is None else keys
    heads, T = patterns.shape[0], max(patterns.shape[-2:])
    cols = min(heads, 4)
    rows = (heads + cols - 1) // cols
    side = max(2.6, 0.28 * T + 1.2)
    fig = _figure(side * cols, side * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= heads:
            ax.axis("off")
            continue
        im = ax.imshow(patterns[h], cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(keys)), keys, rotation=90 if max(map(len, keys), default=0) > 2 else 0, fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(f"{title + ' ' if title else ''}layer {layer} head {h}", fontsize=9)
        ax.set_xlabel("key (attended to)", fontsize=8)
        if h % cols == 0:
            ax.set_ylabel("query", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight")
    fig.savefig(path)
    return path


def head_scores_png(summary: dict[str, list[list[float]]], path: Path) -> Path:
    kinds = list(summary)
    fig = _figure(3.2 * len(kinds), 2.8)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        scores = np.array(summary[kind])
        im = ax.imshow(scores, cmap="magma", vmin=0, vmax=1)
        ax.set_title(kind.replace("_", "-") + " score", fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(scores.shape[1]))
        ax.set_yticks(range(scores.shape[0]))
        for (i, j), v in np.ndenumerate(scores):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.savefig(path)
    return path


def lens_png(values: np.ndarray, rows: list[str], labels: list[str], top1: list[list[str]] | None,
             title: str, path: Path) -> Path:
    """Layers (rows) x positions; each cell annotated with the layer's top-1 guess when it fits."""
    n_rows, T = values.shape
    fig = _figure(max(5.5, 0.62 * T + 2), max(3.0, 0.42 * n_rows + 1.8))
    ax = fig.subplots()
    # Small models give small probabilities: the colour scale stops at the largest one shown.
    vmax = max(0.05, float(np.nanmax(values))) if np.isfinite(values).any() else 1.0
    im = ax.imshow(np.nan_to_num(values, nan=0.0), cmap="Blues", vmin=0, vmax=vmax, aspect="auto")
    _token_axes(ax, labels, y=False)
    ax.set_yticks(range(n_rows), rows, fontsize=8)
    ax.set_xlabel("position (input token)")
    _title(ax, title)
    if top1 is not None and T <= 32:
        for i in range(n_rows):
            for j in range(T):
                ax.text(j, i, top1[i][j], ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] > 0.55 * vmax else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="probability")
    fig.savefig(path)
    return path


def attribution_png(methods: dict[str, list[float]], labels: list[str], title: str, path: Path) -> Path:
    fig = _figure(max(5.5, 0.5 * len(labels) + 2), 1.9 * len(methods) + 0.9)
    axes = fig.subplots(len(methods), 1, squeeze=False)[:, 0]
    for ax, (name, scores) in zip(axes, methods.items()):
        s = np.array(scores)
        ax.bar(range(len(s)), s, color=["#c0392b" if v > 0 else "#2c7fb8" for v in s])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(labels)), labels, fontsize=9)
        ax.set_ylabel(name.replace("_", " "), fontsize=8)
    _title(axes[0], title)
    fig.savefig(path)
    return path


def patching_png(effect: np.ndarray, rows: list[str], columns: list[str], title: str, xlabel: str,
                 path: Path) -> Path:
    n_rows, n_cols = effect.shape
    fig = _figure(max(5.5, 0.55 * n_cols + 2), max(3.0, 0.42 * n_rows + 1.8))
    ax = fig.subplots()
    lim = max(1.0, float(np.nanmax(np.abs(effect))))
    im = ax.imshow(effect, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(n_cols), columns, fontsize=8, rotation=90 if max(map(len, columns)) > 2 else 0)
    ax.set_yticks(range(n_rows), rows, fontsize=8)
    ax.set_xlabel(xlabel)
    _title(ax, title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share restored")
    fig.savefig(path)
    return path
