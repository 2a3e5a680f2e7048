"""The report's own figures: the loss curve and the domain chart (PNG, Chinese labels rendered
through the bundled CJK font, candorlm.fonts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from candorlm.fonts import use_cjk_font

    use_cjk_font()
    return plt


def loss_curve_png(curve: dict[str, list], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    steps, losses = zip(*curve["train"])
    ax.plot(steps, losses, lw=1, alpha=0.7, label="training loss 训练")
    if curve["val"]:
        vs, vl = [v[0] for v in curve["val"]], [v[1] for v in curve["val"]]
        ax.plot(vs, vl, "o-", color="C3", label="validation loss 验证")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("loss curve 损失曲线")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def domains_png(doc: dict[str, Any], path: Path) -> Path:
    """Bits per byte with 95% intervals: in-domain, each domain, each probe."""
    plt = _plt()
    rows = [("领域内 in-domain", doc["in_domain"]["bpb"], doc["in_domain"]["ci"], "C0")]
    rows += [(r["name"], r["bpb"], r["ci"], "C3") for r in doc["domains"] if "bpb" in r]
    rows += [(f"探针 {p['name']}", p["bpb"], p["ci"], "C2") for p in doc.get("probes", []) if "bpb" in p]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for i, (name, bpb, ci, colour) in enumerate(rows):
        ax.barh(i, bpb, color=colour, alpha=0.75)
        ax.errorbar(bpb, i, xerr=[[bpb - ci[0]], [ci[1] - bpb]], color="k", capsize=3)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows])
    ax.invert_yaxis()
    ax.axvline(doc["in_domain"]["bpb"], color="C0", ls=":", lw=1)
    ax.set_xlabel("bits per byte (lower is better), 95% bootstrap interval")
    ax.set_title("generalization 泛化: in-domain, out of domain, perturbed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
