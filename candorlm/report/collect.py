"""Read what the other commands wrote into a run directory and turn it into report sections.

A section is a dict: id, title, status ("ok", "partial" or "missing"), a one-line summary,
figures (name, value, unit, source file), tables, images (PNG paths, embedded later), and
`missing`: what is absent and the command that produces it. Nothing is computed here that a
command did not measure, except the GPU-profile estimate of the Cost section (the ledger's own
`estimate`, labelled as an estimate).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from candorlm.config import RunConfig
from candorlm.errors import CandorError
from candorlm.io.files import read_json
from candorlm.rundir import RunDir

log = logging.getLogger("candorlm")
TASKS = ("sentiment", "translate", "qa", "chat")
GPU_PROFILES = ("a100", "h100")


def _section(sid: str, title: str) -> dict[str, Any]:
    return {"id": sid, "title": title, "status": "ok", "summary": "", "figures": [], "tables": [], "images": [],
            "missing": []}


def _fig(name: str, value: Any, unit: str, source: str) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "source": source}


def _missing(section: dict[str, Any], what: str, command: str) -> None:
    section["missing"].append({"what": what, "command": command})


def _finish(section: dict[str, Any]) -> dict[str, Any]:
    has_data = bool(section["figures"] or section["tables"] or section["images"])
    section["status"] = "missing" if not has_data else ("partial" if section["missing"] else "ok")
    if not has_data and not section["summary"]:
        section["summary"] = "no data yet: " + "; ".join(m["what"] for m in section["missing"])
    return section


def _value(entry: dict[str, Any], key: str) -> Any:
    item = entry.get(key)
    return item.get("value") if isinstance(item, dict) else None


def _load(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except CandorError as exc:  # a damaged file must not sink the whole report: it is named as missing
        log.warning("report: cannot read %s (%s)", path, exc)
        return None


# ---------------------------------------------------------------- cost and compute


def cost_section(run: RunDir, config: RunConfig) -> dict[str, Any]:
    s = _section("cost", "Cost")
    ledger = _load(run.ledger)
    train = (ledger or {}).get("train", {}).get("total")
    if not train:
        _missing(s, "ledger.json (the cost of training)", f"candorlm train --out {run.path} ... (training writes it)")
        return _finish(s)
    src = "ledger.json"
    for key, name in (("flops", "training FLOPs"), ("wall_time", "wall time"), ("energy", "energy"),
                      ("cost", "money"), ("co2", "CO2")):
        if key in train:
            s["figures"].append(_fig(name, train[key]["value"], train[key]["unit"], src))
    if "energy" in train:
        s["figures"][-1]["method"] = train.get("co2", {}).get("method", "")
    device = train.get("device", {})
    s["summary"] = (f"{_value(train, 'flops'):.3g} FLOPs in {_value(train, 'wall_time'):,.0f} s on "
                    f"{device.get('value') if isinstance(device, dict) else device or 'this machine'}")
    tokens = _value(train, "tokens")
    rows = [["this run (measured)", _value(train, "wall_time"), _value(train, "energy"), _value(train, "cost"),
             _value(train, "co2"), "ledger.json"]]
    try:
        from candorlm.ledger.estimate import estimate

        for hw in GPU_PROFILES:
            est = estimate(config, tokens=int(tokens), hardware_name=hw)
            rows.append([f"{hw.upper()} profile (estimate)", est.seconds, est.energy_kwh, est.cost, est.co2_kg,
                         f"candorlm estimate --hardware {hw}: {est.mfu_method}"])
    except (CandorError, ValueError) as exc:  # the estimate is an extra: its absence is reported, not fatal
        _missing(s, f"GPU-profile estimate ({exc})", f"candorlm estimate --config {run.config} --hardware h100")
    s["tables"].append({"title": "the same training run, measured here and estimated on GPU profiles",
                        "columns": ["where", "seconds", "energy (kWh)", "money (USD)", "CO2 (kg)", "source"],
                        "rows": rows})
    return _finish(s)


def compute_section(run: RunDir) -> dict[str, Any]:
    s = _section("compute", "Compute")
    ledger = _load(run.ledger)
    train = (ledger or {}).get("train", {}).get("total")
    if train:
        for key, name in (("tokens_per_s", "throughput"), ("mfu", "model FLOPs utilization"),
                          ("peak_memory", "peak memory"), ("achieved_flops_per_s", "achieved FLOP/s"),
                          ("tokens", "tokens trained"), ("parameters", "parameters")):
            if key in train:
                value, unit = train[key]["value"], train[key]["unit"]
                if unit == "bytes":
                    value, unit = round(value / 2**20, 1), "MiB"
                s["figures"].append(_fig(name, value, unit, "ledger.json"))
        mfu = _value(train, "mfu")
        s["summary"] = (f"{_value(train, 'tokens_per_s'):,.0f} tokens/s"
                        + (f", MFU {mfu:.1%}" if mfu is not None else "")
                        + f", peak memory {(_value(train, 'peak_memory') or 0) / 2**20:,.0f} MiB")
    else:
        _missing(s, "ledger.json (throughput, MFU, memory)", f"candorlm train --out {run.path} ...")
    curve = read_curve(run.metrics)
    if curve["train"]:
        s["images"].append({"key": "loss_curve", "title": "training and validation loss", "path": None})
        if curve["val"]:
            last = curve["val"][-1]
            s["figures"].append(_fig("final validation loss", round(last[1], 4), "nats/token", "metrics.jsonl"))
            if last[2] is not None:
                s["figures"].append(_fig("final validation bits/byte", round(last[2], 4), "bits/byte", "metrics.jsonl"))
    else:
        _missing(s, "metrics.jsonl (the loss curve)", f"candorlm train --out {run.path} ...")
    return _finish(s)


def read_curve(path: Path) -> dict[str, list]:
    """(step, loss) for training and (step, val_loss, val_bpb) for validation from metrics.jsonl."""
    out: dict[str, list] = {"train": [], "val": []}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "loss" in rec:
            out["train"].append((rec["step"], rec["loss"]))
        if "val_loss" in rec:
            out["val"].append((rec["step"], rec["val_loss"], rec.get("val_bpb")))
    return out


# ---------------------------------------------------------------- interpretability


_FAITHFULNESS_CMD = ("python -c \"from candorlm.explain.report import faithfulness_report; "
                     "faithfulness_report('{run}', ['中国经济', '人民日报记者', '今天上午，国务院总理'])\"")


def interpretability_section(run: RunDir) -> dict[str, Any]:
    s = _section("interpretability", "Interpretability")
    doc = _load(run.evals / "explain.json")
    cmd = f"candorlm explain {run.path} --prompt \"江泽民主席在北京会见了\""
    if doc:
        s["summary"] = (f"prompt {doc['prompt']!r}: the model predicts {doc['target']!r} "
                        f"with p = {doc['p_target']:.3g}")
        s["figures"].append(_fig("p(target | prompt)", round(doc["p_target"], 4), "probability", "evals/explain.json"))
        heads = doc.get("attention", {}).get("heads", {}).get("heads", {})
        rows = [[kind.replace("_", " "), ", ".join(f"L{h['layer']}H{h['head']} ({h['score']:.2f})" for h in found) or "none"]
                for kind, found in heads.items()]
        if rows:
            s["tables"].append({"title": "attention heads by role (score above 0.5)", "columns": ["role", "heads"],
                                "rows": rows})
        attr = doc.get("attribution")
        if attr:
            ig = attr["integrated_gradients"]
            s["figures"].append(_fig("integrated-gradients completeness error", round(ig["completeness_error"], 4),
                                     "fraction", "evals/explain.json"))
            s["tables"].append({"title": f"attribution of log p({doc['target']!r} | prompt) per token",
                                "columns": ["token", "integrated gradients", "gradient x input"],
                                "rows": [[t, round(a, 4), round(b, 4)] for t, a, b in
                                         zip(doc["tokens"], ig["scores"], attr["gradient_x_input"]["scores"])]})
        folder = run.path / "explain"
        for name in doc.get("files", []):
            if name.endswith(".png") and (name.startswith(("attention-layer-0", "attribution", "lens"))):
                if (folder / name).is_file():
                    s["images"].append({"key": name, "title": name[:-4].replace("-", " "), "path": str(folder / name)})
    else:
        _missing(s, "attention and attribution for a prompt (evals/explain.json)", cmd)
    faith = _load(run.evals / "explain-faithfulness.json")
    if faith:
        comp = faith["completeness"]
        s["figures"].append(_fig("IG completeness, worst prompt", round(comp["max_error"], 4), "fraction",
                                 "evals/explain-faithfulness.json"))
        rows = []
        for name, by_k in faith.get("deletion", {}).items():
            for k, summ in by_k.items():
                if summ.get("prompts"):
                    rows.append([f"{name.replace('_', ' ')}, top-{k}", _short(summ.get("mean_drop_top")),
                                 _short(summ.get("mean_drop_random")), _short(summ.get("difference_ci95")),
                                 summ.get("verdict", "")])
        for k, cmp in faith.get("ig_vs_recency", {}).items():
            if cmp.get("prompts"):
                rows.append([f"IG minus recency, top-{k}", _short(cmp.get("mean_difference")), "",
                             _short(cmp.get("difference_ci95")), f"IG better on {cmp.get('share_a_better', 0):.0%}"])
        s["tables"].append({"title": f"faithfulness over {faith['prompts']} prompts (deletion test)",
                            "columns": ["attribution", "mean drop (top-k removed)", "mean drop (random k)",
                                        "difference interval", "verdict"], "rows": rows})
        s["data"] = {k: faith[k] for k in ("completeness", "deletion", "ig_vs_recency") if k in faith}
    elif doc and doc.get("attribution"):
        dele = doc["attribution"].get("deletion", {})
        rows = [[name, i + 1, _short(r)] for name, runs in dele.items() for i, r in enumerate(runs)]
        if rows:
            s["tables"].append({"title": "deletion test for this prompt (top-k attributed vs random tokens)",
                                "columns": ["method", "k", "result"], "rows": rows})
        _missing(s, "faithfulness over a prompt set (evals/explain-faithfulness.json)", _FAITHFULNESS_CMD.format(run=run.path))
    else:
        _missing(s, "faithfulness over a prompt set (evals/explain-faithfulness.json)", _FAITHFULNESS_CMD.format(run=run.path))
    return _finish(s)


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return json.dumps({k: _short(v) for k, v in value.items() if not isinstance(v, (list, dict))},
                          ensure_ascii=False)[:200]
    if isinstance(value, list):
        return ", ".join(str(_short(v)) for v in value[:4])
    return value


# ---------------------------------------------------------------- privacy


def privacy_section(run: RunDir, config: RunConfig) -> dict[str, Any]:
    s = _section("privacy", "Privacy")
    data_dir = Path(config.data.path) if config.data.path else None
    scrub = _load(data_dir / "scrub_report.json") if data_dir else None
    if scrub:
        counts = {t: n for t, n in scrub.get("counts", {}).items() if n}
        s["figures"].append(_fig("personal data replaced before training", sum(counts.values()), "spans",
                                 f"{data_dir}/scrub_report.json"))
        s["tables"].append({"title": f"scrubbed with operator '{scrub.get('operator')}'",
                            "columns": ["type", "replaced"], "rows": [[t, n] for t, n in counts.items()] or [["none", 0]]})
    else:
        _missing(s, "the training data was not scrubbed (no scrub_report.json in its data directory)",
                 "candorlm prepare CORPUS --out DATA --scrub")
    audit = _load(run.evals / "privacy.json")
    if audit:
        ex, mi, pii = audit["extraction"], audit["membership"], audit["pii_regurgitation"]
        s["figures"] += [
            _fig("extraction rate, training documents", round(ex["train"]["exact_rate"], 4), "fraction",
                 "evals/privacy.json"),
            _fig("extraction rate, held-out documents", round(ex["heldout"]["exact_rate"], 4), "fraction",
                 "evals/privacy.json"),
            _fig("membership-inference AUC", mi["auc"], "AUC (0.5 = no signal)", "evals/privacy.json"),
            _fig("personal data in generations, verbatim from training", pii["in_training_data"], "values",
                 "evals/privacy.json"),
        ]
        if audit.get("canaries"):
            s["tables"].append({"title": "canary exposure (bits; log2 of the candidate space is the maximum)",
                                "columns": ["repeats", "canaries", "mean exposure", "extracted"],
                                "rows": [[r, v["canaries"], v["mean_exposure"], v["extracted"]]
                                         for r, v in audit["canaries"]["by_repeats"].items()]})
        else:
            _missing(s, "canary exposure (no canaries were planted)",
                     "candorlm prepare CORPUS --out DATA --canaries 4 --repeats 1,10,100, then train and audit")
    else:
        _missing(s, "canary exposure, extraction, membership inference (evals/privacy.json)",
                 f"candorlm audit {run.path}")
    dp = _load(run.path / "dp.json")
    if dp:
        s["figures"].append(_fig("DP epsilon spent", dp["epsilon_spent"], f"epsilon (delta {dp['delta']:.2g})", "dp.json"))
    else:
        _missing(s, "differential privacy: trained without DP-SGD, so no epsilon bound",
                 "candorlm train ... --dp-epsilon 8")
    if audit or scrub or dp:
        parts = []
        if audit:
            parts.append(f"membership AUC {audit['membership']['auc']}, extraction "
                         f"{audit['extraction']['train']['exact_rate']:.1%} of training prefixes")
        parts.append(f"DP epsilon {dp['epsilon_spent']}" if dp else "no DP guarantee")
        s["summary"] = "; ".join(parts)
    return _finish(s)


# ---------------------------------------------------------------- generalization


def _task_evals(run: RunDir) -> list[tuple[str, dict[str, Any]]]:
    found = [(str(run.path), run.evals / f"{t}.json") for t in TASKS]
    parent = run.path.resolve().parent
    for task_file in sorted(parent.glob("*/task.json")):
        info = _load(task_file) or {}
        base = info.get("base_run")
        if base and Path(base).resolve() == run.path.resolve() and info.get("task") in TASKS:
            found.append((str(task_file.parent), task_file.parent / "evals" / f"{info['task']}.json"))
    return [(where, doc) for where, path in found if (doc := _load(path))]


def _metrics(d: dict[str, Any]) -> dict[str, float]:
    skip = {"parameters", "epochs", "test_size"}
    return {k: round(v, 4) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in skip}


def generalization_section(run: RunDir) -> dict[str, Any]:
    s = _section("generalization", "Generalization")
    doc = _load(run.evals / "domains.json")
    if doc:
        ind = doc["in_domain"]
        rows = [["in-domain (validation split)", ind["bpb"], ind["ci"], "", "", ind["documents"], ind["perplexity"],
                 ind.get("uniform_bpb")]]
        for r in doc["domains"]:
            if "bpb" in r:
                rows.append([r["name"], r["bpb"], r["ci"], r["gap"], r["gap_ci"], r["documents"], r["perplexity"],
                             r.get("uniform_bpb")])
        caps = doc["settings"]
        s["tables"].append({"title": f"bits per byte by domain (95% bootstrap intervals over documents; at most "
                                     f"{caps['max_docs']} documents of {caps['max_chars']} characters per set)",
                            "columns": ["set", "bits/byte", "interval", "gap", "gap interval", "documents",
                                        "perplexity/token", "uniform guess (bits/byte)"], "rows": rows})
        s["figures"].append(_fig("in-domain bits/byte", ind["bpb"], "bits/byte", "evals/domains.json"))
        gaps = [r for r in doc["domains"] if "gap" in r]
        if gaps:
            worst = max(gaps, key=lambda r: r["gap"])
            s["figures"].append(_fig(f"largest gap ({worst['name']})", worst["gap"], "bits/byte",
                                     "evals/domains.json"))
            s["summary"] = (f"in-domain {ind['bpb']:.3f} bits/byte; out of domain up to +{worst['gap']:.3f} "
                            f"({worst['name']})")
        probe_rows = [[p["name"], p.get("bpb", "not run"), p.get("ci", ""), p.get("delta", ""), p.get("delta_ci", ""),
                       p.get("documents_changed", ""), p["description"]] for p in doc.get("probes", [])]
        if probe_rows:
            s["tables"].append({"title": "robustness probes on the in-domain set (change: paired interval)",
                                "columns": ["probe", "bits/byte", "interval", "change", "change interval",
                                            "documents changed", "what"], "rows": probe_rows})
        ctx = [[c["name"], c["context"], c.get("bpb"), c.get("bpb_within_train_length"),
                c.get("bpb_beyond_train_length"), c.get("ci_beyond_train_length", "")] for c in doc.get("context", [])]
        if ctx:
            s["tables"].append({"title": f"longer contexts than the training length ({doc['model']['train_seq_len']} "
                                         f"tokens; rotary extrapolation)",
                                "columns": ["probe", "window", "bits/byte", "within trained length",
                                            "beyond trained length", "beyond: interval"], "rows": ctx})
        s["images"].append({"key": "domains", "title": "bits per byte by domain", "path": None})
        s["data"] = {"domains": doc}
    else:
        _missing(s, "bits-per-byte by domain, generalization gap, robustness probes (evals/domains.json)",
                 f"candorlm eval {run.path} --domains builtin:reviews builtin:python-docs")
    tasks = _task_evals(run)
    for where, t in tasks:
        models = t.get("models") or ([t["model"]] if isinstance(t.get("model"), dict) else [])
        baselines = t.get("baselines") or ({"baseline": t["baseline"]} if isinstance(t.get("baseline"), dict) else {})
        rows = [[m.get("run", where), json.dumps(_metrics(m))] for m in models]
        rows += [[f"baseline: {name}", json.dumps(_metrics(b))] for name, b in baselines.items() if isinstance(b, dict)]
        s["tables"].append({"title": f"task: {t.get('task')} ({t.get('data')})", "columns": ["model", "test metrics"],
                            "rows": rows})
    if tasks:
        s["figures"].append(_fig("task evaluations found", len(tasks), "tasks", "evals/<task>.json"))
    else:
        _missing(s, "task scores with baselines (evals/<task>.json)",
                 f"candorlm finetune {run.path} --task sentiment --data builtin:reviews --out RUN-sentiment")
    return _finish(s)
