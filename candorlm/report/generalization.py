"""The Generalization section: bits per byte in and out of the training domain, robustness
probes, longer contexts (evals/domains.json), and the task scores against their baselines."""

from __future__ import annotations

from typing import Any

from candorlm.report.section import fig, finish, load, missing, new_section, table
from candorlm.report.tasks import task_evals, task_table
from candorlm.report.units import sig
from candorlm.rundir import RunDir


def generalization_section(run: RunDir) -> dict[str, Any]:
    s = new_section("generalization", "Generalization")
    doc = load(run.evals / "domains.json")
    if doc:
        _domains_part(s, doc)
    else:
        missing(s, "bits-per-byte by domain, generalization gap, robustness probes (evals/domains.json)",
                f"candorlm eval {run.path} --domains builtin:reviews builtin:python-docs")
    tasks = task_evals(run)
    for where, t in tasks:
        s["tables"].append(task_table(where, t))
    if not tasks:
        missing(s, "task scores with baselines (evals/<task>.json)",
                f"candorlm finetune {run.path} --task sentiment --data builtin:reviews --out RUN-sentiment")
    return finish(s)


def _domains_part(s: dict[str, Any], doc: dict[str, Any]) -> None:
    ind = doc["in_domain"]
    rows = [["in-domain (validation split)", ind["bpb"], ind["ci"], "", "", ind["documents"], ind["perplexity"],
             ind.get("uniform_bpb")]]
    for r in doc["domains"]:
        if "bpb" in r:
            rows.append([r["name"], r["bpb"], r["ci"], r["gap"], r["gap_ci"], r["documents"], r["perplexity"],
                         r.get("uniform_bpb")])
    caps = doc["settings"]
    s["tables"].append(table(
        f"bits per byte by domain (95% bootstrap intervals over documents; at most {caps['max_docs']} documents of "
        f"{caps['max_chars']} characters per set)",
        ["set", "bits/byte", "interval", "gap", "gap interval", "documents", "perplexity/token",
         "uniform guess (bits/byte)"], rows,
        note="Bits per byte: how many bits the model needs per byte of text, lower is better; the gap is how much "
             "more a domain costs than held-out text of the training kind. 'Uniform guess' is what a model that "
             "learned nothing would pay."))
    s["figures"].append(fig("in-domain bits per byte", ind["bpb"], "bits/byte", "evals/domains.json",
                            note="on held-out text of the training kind"))
    gaps = [r for r in doc["domains"] if "gap" in r]
    if gaps:
        worst = max(gaps, key=lambda r: r["gap"])
        s["figures"].append(fig(f"largest gap ({worst['name']})", worst["gap"], "bits/byte", "evals/domains.json",
                                note="how much more that domain costs than in-domain text"))
        s["summary"] = (f"Held-out text of the training kind costs {ind['bpb']:.3f} bits per byte; other domains cost "
                        f"up to {worst['gap']:+.3f} more ({worst['name']}).")
    probe_rows = [[p["name"], p.get("bpb", "not run"), p.get("ci", ""), p.get("delta", ""), p.get("delta_ci", ""),
                   p.get("documents_changed", ""), p["description"]] for p in doc.get("probes", [])]
    if probe_rows:
        s["tables"].append(table(
            "robustness probes on the in-domain set (change: paired interval)",
            ["probe", "bits/byte", "interval", "change", "change interval", "documents changed", "what"], probe_rows,
            note="The same documents, perturbed as described: a change whose interval excludes 0 is a real "
                 "sensitivity of the model to that kind of variation."))
    ctx = [[c["name"], c["context"], c.get("bpb"), c.get("bpb_within_train_length"), c.get("bpb_beyond_train_length"),
            c.get("ci_beyond_train_length", "")] for c in doc.get("context", [])]
    if ctx:
        s["tables"].append(table(
            f"longer contexts than the training length ({doc['model']['train_seq_len']} tokens; rotary "
            f"extrapolation)", ["probe", "window", "bits/byte", "within trained length", "beyond trained length",
                                "beyond: interval"], ctx,
            note="If 'beyond' is close to 'within', the model reads past its training length without getting "
                 "worse; if it is much higher, keep inputs within the trained length."))
    s["images"].append({"key": "domains", "title": "bits per byte by domain", "path": None,
                        "caption": domains_caption(doc)})
    s["data"] = {"domains": doc}


def domains_caption(doc: dict[str, Any]) -> str:
    ind = doc["in_domain"]
    text = (f"Bits per byte with 95% intervals (shorter bars are better): held-out text of the training kind "
            f"(blue, {sig(ind['bpb'])}), other domains (red) and perturbed copies of the in-domain text (green).")
    beyond = [r["name"] for r in doc["domains"] if "bpb" in r and r.get("uniform_bpb") and r["bpb"] >= r["uniform_bpb"]]
    if beyond:
        text += (f" {', '.join(beyond)} cost{'s' if len(beyond) == 1 else ''} as much as a uniform guess or more: "
                 f"nothing the model learned carries over; train on such text if it matters to you.")
    hurt = [p for p in doc.get("probes", []) if p.get("delta_ci") and p["delta_ci"][0] > 0]
    if hurt:
        worst = max(hurt, key=lambda p: p["delta"])
        text += f" Of the perturbations, {worst['name']} hurts most ({worst['delta']:+.3f} bits per byte)."
    return text
