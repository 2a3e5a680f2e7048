"""Looking into a model: why it predicts what it does, what it costs, and its report card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from candorlm.cli.extras import needs
from candorlm.cli.options import KeyFile, NoVerify, Overrides, options_from, reading_with
from candorlm.errors import CandorError

PANEL = "Insight: explain, cost, report card"


@needs("explain")
@options_from("candorlm.explain.report:explain", flags={"prompt": "--prompt"})
def explain(key_file: KeyFile = None, no_verify: NoVerify = False, **options: Any) -> None:
    """Show why the model predicts what it does: attention maps and head summaries, the logit lens,
    integrated gradients and gradient x input (with a completeness check and a deletion test
    against random deletions), and activation patching against a corrupted prompt. Writes PNGs and
    explain.html to --out and explain.json to --out and RUN/evals/.

    The run's model.arch picks what is explained: a decoder's continuation of the prompt; an
    encoder's prediction at the prompt's <|mask|> positions (one <|mask|> is appended per target
    token when the prompt has none); an encoder-decoder's output (the target) for the prompt as
    its source, with encoder, decoder and cross-attention maps.

    Example: candorlm explain runs/mlm --prompt "人民日<|mask|>记者" --out explain-mlm

    Example: candorlm explain runs/demo --prompt "江泽民主席在北京会见了" --corrupt "李鹏总理在北京会见了" --out explain-out
    """
    from rich.markup import escape

    from candorlm.explain.report import explain as run_explain
    from candorlm.io.sealedtree import encrypted_tree
    from candorlm.progress import console

    with reading_with(key_file, no_verify):
        doc = run_explain(**options)
    console.print(f"target {doc['target']!r} ({doc['target_source']}): p = {doc['p_target']:.3g}", highlight=False)
    for attention in doc.get("attention", {}).get("maps", []):
        where = "" if attention["name"] == "self" else f"{attention['name']} "
        for kind, heads in (attention["heads"] or {}).get("heads", {}).items():
            listed = ", ".join(f"L{h['layer']}H{h['head']} {h['score']:.2f}" for h in heads) or "none above 0.5"
            console.print(f"{where}{kind.replace('_', '-')} heads: {listed}", highlight=False)
    if "attribution" in doc:
        ig = doc["attribution"]["integrated_gradients"]
        console.print(f"integrated gradients: completeness error {ig['completeness_error']:.2%} with "
                      f"{ig['n_steps']} steps", highlight=False)
        scores = "  ".join(f"{t}:{s:+.3f}" for t, s in zip(doc["tokens"], ig["scores"]))
        console.print(f"  {escape(scores)}", highlight=False)
    if "patching" in doc:
        console.print(f"patching metric: {escape(doc['patching']['metric'])}", highlight=False)
    run, out = Path(options["run"]), options["out"]
    out_dir = Path(out) if out is not None else run / "explain"
    copy = "" if encrypted_tree(run) else f"; {run / 'evals' / 'explain.json'}"  # no plain copy in an encrypted run
    console.print(f"wrote {out_dir / 'explain.html'} and {len(doc['files']) - 2} PNGs{copy}", highlight=False)


@options_from("candorlm.ledger.estimate:estimate", skip=("config", "preset", "tokens"),
              flags={"hardware_name": "--hardware", "grid_kg_co2_per_kwh": "--grid"})
def estimate(
    preset: Optional[str] = typer.Option(None, help="Model size preset (default: tiny, unless --config is given)."),
    config: Optional[Path] = typer.Option(None, help="TOML file with [model] and [train] sections."),
    overrides: Overrides = [],
    tokens: Optional[float] = typer.Option(None, help="Training tokens, e.g. 50e6 (default: the config's "
                                           "max_steps)."),
    compute_budget: Optional[float] = typer.Option(None, help="FLOPs to spend: prints the compute-optimal size."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    key_file: KeyFile = None,
    **options: Any,
) -> None:
    """Predict a training run's FLOPs, time, memory (and whether it fits), energy, money and CO2;
    or, with --compute-budget, the compute-optimal model size and token count (Chinchilla).

    Example: candorlm estimate --preset small --tokens 50e6 --hardware cpu

    Example: candorlm estimate --compute-budget 1e21 --hardware h100
    """
    from candorlm.ledger.estimate import estimate as run_estimate
    from candorlm.ledger.estimate import estimate_compute_budget
    from candorlm.ledger.show import print_budget, print_estimate

    if compute_budget is not None:
        result = estimate_compute_budget(compute_budget, options["hardware_name"], mfu=options["mfu"],
                                         price_per_hour=options["price_per_hour"], currency=options["currency"],
                                         grid_kg_co2_per_kwh=options["grid_kg_co2_per_kwh"])
        if json_out:
            print(json.dumps(result))
        else:
            print_budget(result)
        return
    from candorlm.config import resolve

    if options["params"] is not None and (preset or config):
        raise CandorError("give either --params or --preset/--config, not both")
    with reading_with(key_file):
        cfg = None if options["params"] is not None else resolve(preset or (None if config else "tiny"), config,
                                                                 overrides)
    est = run_estimate(cfg, tokens=int(tokens) if tokens is not None else None, **options)
    if json_out:
        print(json.dumps(est.to_dict()))
    else:
        print_estimate(est)


def ledger(
    run: Path = typer.Argument(..., help="Run directory."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show each figure's full method."),
    json_out: bool = typer.Option(False, "--json", help="Print ledger.json as it is."),
) -> None:
    """Print what a run cost (ledger.json) as a table: time, tokens/s, FLOPs, MFU, memory, energy, money, CO2.

    Example: candorlm ledger runs/pd --verbose
    """
    from candorlm.ledger.book import ledger as read_ledger
    from candorlm.ledger.book import ledger_table
    from candorlm.progress import stdout_console

    data = read_ledger(run)
    if json_out:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        stdout_console().print(ledger_table(data, verbose=verbose))


@needs("report")
@options_from("candorlm.report.build:report")
def report(**options: Any) -> None:
    """Write the limitations report card: RUN/report.html (self-contained), report.json and
    report.md, one section per limit (Cost, Compute, Interpretability, Privacy, Generalization); a
    section without data names the command that produces it.

    Example: candorlm report runs/demo
    """
    from candorlm.progress import console
    from candorlm.report.build import report as run_report

    doc = run_report(**options)
    for s in doc["sections"]:
        console.print(f"{s['title']:<17} {s['status']:<8} {s['summary']}", highlight=False)
    console.print(f"wrote {Path(options['run_dir']) / 'report.html'}, report.json and report.md")
