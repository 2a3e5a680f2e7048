"""`candorlm report RUN`: collect the sections, draw the report's own figures, validate
report.json against its schema, write report.html, report.json and report.md into RUN."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from candorlm.io.files import atomic_write_text, write_json
from candorlm.io.sealedtree import refuse_plain_output_in_sealed_tree
from candorlm.report import collect
from candorlm.report.figures import domains_png, loss_curve_png
from candorlm.report.render import render_html, render_markdown
from candorlm.report.schema import validate
from candorlm.rundir import open_run
from candorlm.tokenizer import Tokenizer


def _model_info(run, config) -> dict[str, Any]:
    from candorlm.io.files import read_json

    params = None
    if run.ledger.is_file():
        params = read_json(run.ledger).get("train", {}).get("total", {}).get("parameters", {}).get("value")
    if params is None and run.weights.is_file():
        from safetensors import safe_open

        with safe_open(str(run.weights), "pt") as f:
            params = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    tok = Tokenizer.load(run.tokenizer) if run.tokenizer.is_file() else None
    m = config.model
    return {"arch": m.arch, "parameters": params, "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads,
            "vocab_size": m.vocab_size, "seq_len": config.seq_len, "tokenizer": tok.kind if tok else "unknown"}


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def report(run_dir: str | Path) -> dict[str, Any]:
    """Write RUN/report.html, report.json and report.md; returns report.json's content.

    Args:
        run_dir: Run directory.
    """
    refuse_plain_output_in_sealed_tree(run_dir, "report.html, report.json, report.md and report/")
    run = open_run(run_dir)
    config = run.read_config()
    sections = collect.sections(run, config)
    folder = run.path / "report"
    folder.mkdir(exist_ok=True)
    images: dict[tuple[str, str], Path] = {}
    for s in sections:
        for im in s["images"]:
            if im["key"] == "loss_curve":
                im["path"] = str(loss_curve_png(collect.read_curve(run.metrics), folder / "loss.png"))
            elif im["key"] == "domains":
                im["path"] = str(domains_png(s["data"]["domains"], folder / "domains.png"))
            images[(s["id"], im["key"])] = Path(im["path"])
    doc = {"schema_version": 1, "run": str(run.path), "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": f"candorlm report {run.path}", "model": _model_info(run, config), "sections": sections}
    validate(doc)
    write_json(run.path / "report.json", doc)
    atomic_write_text(run.path / "report.html", render_html(doc, images))
    atomic_write_text(run.path / "report.md", render_markdown(doc, images, run.path))
    return doc
