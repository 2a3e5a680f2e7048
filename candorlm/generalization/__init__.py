"""Generalization: bits-per-byte in the training domain and outside it, the gap with bootstrap
intervals over documents, and robustness probes (`candorlm eval RUN --domains ...`).

    from candorlm.generalization import evaluate_domains
    evaluate_domains("runs/demo", ["builtin:reviews", "builtin:python-docs"])
"""

from __future__ import annotations

from typing import Any

from candorlm.generalization.domains import evaluate_domains

__all__ = ["evaluate_domains", "print_domains"]


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def print_domains(result: dict[str, Any]) -> None:
    """The domain, probe and context tables of a domains.json, on the console."""
    from rich.table import Table

    from candorlm.progress import console

    ind = result["in_domain"]
    table = Table(title="bits per byte by domain (95% bootstrap intervals over documents)")
    table.add_column("set", no_wrap=True)
    for col in ("docs", "bits/byte", "interval", "gap", "gap interval", "uniform guess"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_row("in-domain", str(ind["documents"]), f"{ind['bpb']:.3f}", _ci(ind["ci"]), "", "",
                  f"{ind.get('uniform_bpb', 0):.3f}")
    for r in result["domains"]:
        if "bpb" not in r:
            table.add_row(r["name"], "0", "", "", "", "", "")
            continue
        table.add_row(r["name"], str(r["documents"]), f"{r['bpb']:.3f}", _ci(r["ci"]), f"{r['gap']:+.3f}",
                      _ci(r["gap_ci"]), f"{r.get('uniform_bpb', 0):.3f}")
    console.print(table)
    if result["probes"]:
        probes = Table(title="robustness probes (in-domain set, perturbed)")
        probes.add_column("probe", no_wrap=True)
        for col in ("bits/byte", "change", "change interval"):
            probes.add_column(col, justify="right")
        for p in result["probes"]:
            if "bpb" not in p:
                probes.add_row(p["name"], p["description"], "", "")
                continue
            probes.add_row(p["name"], f"{p['bpb']:.3f}", f"{p['delta']:+.3f}", _ci(p["delta_ci"]))
        for c in result["context"]:
            beyond = c.get("bpb_beyond_train_length")
            probes.add_row(f"{c['name']} ({c['context']} tokens)", f"{c['bpb']:.3f}" if c.get("bpb") else "",
                           f"beyond trained length: {beyond:.3f}" if beyond else "", _ci(c.get("ci_beyond_train_length")))
        console.print(probes)
