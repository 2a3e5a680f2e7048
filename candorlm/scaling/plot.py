"""sweep.png: validation loss against training FLOPs (left) and non-embedding parameters (right),
the measured points, each size's validation curve, the fitted power law, and its extrapolation
drawn dashed and labelled as such."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from candorlm.scaling.fit import PowerLaw


def _law(d: dict[str, Any]) -> PowerLaw:
    return PowerLaw(a=d["a"], alpha=d["alpha"], points=d["points"], r2=d["r2"],
                    log_residual_std=d["log_residual_std"] or float("nan"))


def sweep_png(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    from candorlm.fonts import use_cjk_font

    use_cjk_font()
    rows = doc["sizes"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (("flops", "training FLOPs", doc["fit"]["loss_vs_flops"], axes[0]),
              ("non_embedding_parameters", "parameters (without embeddings)",
               doc["fit"]["loss_vs_non_embedding_parameters"], axes[1]))
    for key, label, fit, ax in panels:
        law = _law(fit)
        xs = np.array([r[key] for r in rows], dtype=float)
        ys = np.array([r["val_loss"] for r in rows])
        if key == "flops":
            for r in rows:  # each size's validation curve: FLOPs spent so far at each evaluation
                per_step = r["flops"] / doc["steps"]  # every step trains the same number of tokens
                pts = [(p["step"] * per_step, p["val_loss"]) for p in r["curve"]]
                if pts:
                    ax.plot(*zip(*pts), "-", alpha=0.6, lw=1.2, label=f"{r['preset']}: validation during training")
        ax.scatter(xs, ys, zorder=3, color="C3")
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(r["preset"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
        fitted = np.geomspace(xs.min(), xs.max(), 50)
        ax.plot(fitted, law(fitted), "k-", lw=1.5,
                label=f"fit: L = {law.a:.3g} · x^(−{law.alpha:.3f}), R² {law.r2:.3f}")
        ahead = np.geomspace(xs.max(), xs.max() * 100, 50)
        ax.plot(ahead, law(ahead), "k--", lw=1.2, label="extrapolation ×100 (not measured)")
        ax.axvspan(xs.max(), xs.max() * 100, color="0.92", zorder=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.relim()
        ax.autoscale_view()
        ax.text(xs.max() * 1.3, ax.get_ylim()[1], "extrapolation\n外推 (未测量)", va="top", fontsize=9, color="0.3")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss (nats/token)")
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"scaling sweep: {', '.join(r['preset'] for r in rows)}; {doc['steps']} steps each, same data and seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
