"""The demo: People's Daily in, a small Chinese language model out, in a few minutes on a CPU.

It prepares `builtin:peoples-daily`, trains the `tiny` preset, prints continuations of a few
prompts, and compares the model's validation bits-per-byte with character unigram and bigram
models computed on the same split. Then it measures generalization (a quick domain evaluation
with the robustness probes), explains one prediction (attention, attribution, and a small
faithfulness check), runs a small privacy audit, and ends by writing the report card. A second run reuses the prepared
data and the trained model when their settings have not changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from candorlm.config import resolve
from candorlm.corpus import Corpus
from candorlm.errors import CandorError
from candorlm.evaluate import char_ngram_bpb, evaluate_bpb
from candorlm.lm import LanguageModel
from candorlm.prepare import prepare
from candorlm.progress import console
from candorlm.rundir import RunDir
from candorlm.shards import ShardSet, is_validation
from candorlm.pretrain import train

CORPUS = "builtin:peoples-daily"
VOCAB_SIZE = 8192
PROMPTS = ["中国", "今天", "经济", "北京市", "我们要"]
# The tiny preset for a time budget: the schedule is sized to what the machine does in it.
DEMO_TIME = "5m"  # what the step-count demo trained before (295 s): the same minutes, a better schedule
DEMO_TRAIN = {"batch_size": 8, "eval_every": 300, "save_every": 300}


def _ensure_data(data: Path) -> ShardSet:
    meta_file = data / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("sources") == [CORPUS] and meta.get("vocab_size") == VOCAB_SIZE:
            console.print(f"[dim]reusing prepared data in {data}[/dim]")
            return ShardSet(data)
        if meta.get("sources") != [CORPUS]:
            raise CandorError(f"{data} holds other prepared data; pass --data with another directory")
    console.print(f"[bold]1. Preparing[/bold] {CORPUS} (People's Daily, January 1998) into {data}")
    prepare([CORPUS], data, tokenizer="bpe", vocab_size=VOCAB_SIZE, overwrite=True)
    return ShardSet(data)


def _ensure_model(out: Path, data: Path, time: str, max_steps: int | None) -> LanguageModel:
    budget = {"max_steps": max_steps} if max_steps else {"time": time}
    config = resolve("tiny", data={"path": str(data)}, train=dict(DEMO_TRAIN, **budget))
    run = RunDir(out)
    if run.weights.is_file() and run.exists():
        previous = run.read_config()
        same = previous.train == config.train and previous.model.model_dump(exclude={"vocab_size"}) == \
            config.model.model_dump(exclude={"vocab_size"})
        if same:
            console.print(f"[dim]reusing the trained model in {out} (delete it to train again)[/dim]")
            return LanguageModel.load(out)
    how_long = f"{max_steps} steps" if max_steps else time
    console.print(f"[bold]2. Training[/bold] the tiny preset for {how_long} on the CPU (Ctrl-C saves and stops)")
    result = train(out, config=config, overwrite=run.exists())
    if result.interrupted:
        raise CandorError(f"training stopped at step {result.steps}; run `make demo` again to start over, or "
                          f"`candorlm train --data {data} --preset tiny --out {out} --resume` to continue")
    console.print(f"   {result.steps} steps in {result.wall_s:.0f} s, {result.tokens_per_s:,.0f} tokens/s")
    return LanguageModel.load(out)


def run_demo(out: Path = Path("runs/demo"), data: Path = Path("data/peoples-daily"), time: str = DEMO_TIME,
             max_steps: int | None = None) -> dict[str, float | str]:
    """Run the whole demo; returns the bits-per-byte figures it printed and the report card's path.

    Args:
        out: Run directory for the demo model.
        data: Data directory (prepared if missing).
        time: Training time budget (90s, 5m, 1h): the schedule is sized to it.
        max_steps: Train for this many steps instead of a time budget.
    """
    shards = _ensure_data(data)
    lm = _ensure_model(out, data, time, max_steps)

    console.print("[bold]3. Samples[/bold] (temperature 0.8, top-k 40, seed 0)")
    for prompt in PROMPTS:
        text = lm.generate(prompt, max_new_tokens=48, temperature=0.8, top_k=40, seed=0)
        console.print(f"   [cyan]{prompt}[/cyan]{text}", highlight=False)

    console.print("[bold]4. Validation bits per byte[/bold] (lower is better; same held-out articles)")
    val = shards.windows("val", lm.config.seq_len)
    model_bpb = evaluate_bpb(lm.model, val, lm.tokenizer.token_byte_lengths(), max_tokens=0)["bpb"]
    train_texts, val_texts = [], []
    for doc in Corpus([CORPUS]):
        (val_texts if is_validation(doc.text, shards.meta.val_fraction) else train_texts).append(doc.text)
    figures = {
        "model_bpb": model_bpb,
        "bigram_bpb": char_ngram_bpb(train_texts, val_texts, order=2),
        "unigram_bpb": char_ngram_bpb(train_texts, val_texts, order=1),
    }
    table = Table(show_header=True, header_style="bold")
    table.add_column("model")
    table.add_column("bits/byte", justify="right")
    table.add_row(f"candorlm tiny ({lm.model.num_params() / 1e6:.1f}M parameters)", f"{figures['model_bpb']:.3f}")
    table.add_row("character bigram (Witten-Bell)", f"{figures['bigram_bpb']:.3f}")
    table.add_row("character unigram (add-one)", f"{figures['unigram_bpb']:.3f}")
    console.print(table)
    gain = 1 - figures["model_bpb"] / figures["bigram_bpb"]
    verdict = "below" if gain > 0 else "NOT below"
    console.print(f"The model is {abs(gain):.0%} {verdict} the bigram baseline. Run directory: {out}")
    figures["report"] = _limits(out)
    return figures


# The demo's domain evaluation is capped (documents per set, characters per document) to stay
# under a minute on 2 cores; `candorlm eval RUN --domains` without caps measures more.
DEMO_DOMAINS = ["builtin:reviews", "builtin:python-docs"]
EXPLAIN_PROMPT = "江泽民主席在北京会见了"
FAITHFULNESS_PROMPTS = ["中国经济", "今天上午，国务院总理", "人民日报记者"]


def _limits(out: Path) -> str:
    """Generalization, interpretability, a small privacy audit, then the report card; returns
    report.html's path."""
    from candorlm.explain import explain
    from candorlm.explain.report import faithfulness_report
    from candorlm.generalization import evaluate_domains, print_domains
    from candorlm.privacy.audit import audit
    from candorlm.report import report

    console.print("[bold]5. Generalization[/bold]: bits per byte in and out of the training domain, and under "
                  "perturbations")
    print_domains(evaluate_domains(out, DEMO_DOMAINS, max_docs=100, max_chars=1000))
    console.print(f"[bold]6. Explaining[/bold] the next token after {EXPLAIN_PROMPT!r}")
    doc = explain(out, EXPLAIN_PROMPT, method="attention,ig")
    console.print(f"   predicts {doc['target']!r} with p = {doc['p_target']:.3f}; integrated-gradients completeness "
                  f"error {doc['attribution']['integrated_gradients']['completeness_error']:.2%}", highlight=False)
    faithfulness_report(out, FAITHFULNESS_PROMPTS, draws=50, ig_steps=16)
    console.print("[bold]7. Privacy audit[/bold] (small: 50 training and 50 held-out articles, 10 generations; "
                  "`candorlm audit RUN` measures more)")
    leak = audit(out, samples=50, candidates=200, generations=10)
    pii = leak["pii_regurgitation"]
    console.print(f"   membership AUC {leak['membership']['auc']}, extraction {leak['extraction']['train']['exact_rate']:.1%} "
                  f"of training prefixes; personal data in generations: {pii['detected']} found, "
                  f"{pii['in_training_data']} verbatim in training", highlight=False)
    card = report(out)
    console.print("[bold]8. Report card[/bold]")
    for s in card["sections"]:
        missing = f" (missing: {'; '.join(m['command'] for m in s['missing'])})" if s["missing"] else ""
        console.print(f"   {s['title']:<17} {s['status']:<8} {s['summary']}{missing}", highlight=False)
    path = out / "report.html"
    console.print(f"Report card: {path.resolve()}")
    return str(path)
