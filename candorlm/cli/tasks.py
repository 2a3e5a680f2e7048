"""Tasks: fine-tune a run for an application, and evaluate it (or a language model's generalization)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, List, Optional

import typer

from candorlm.cli import extras
from candorlm.cli.extras import needs
from candorlm.cli.options import KeyFile, NoVerify, given, options_from, reading_with
from candorlm.errors import CandorError

PANEL = "Tasks and evaluation"


# options only some tasks read: given for another task they would be ignored without a word
TASK_OPTIONS: dict[str, tuple[str, ...]] = {
    "labels": ("sentiment",), "mlm_weight": ("sentiment",), "ensemble": ("sentiment",), "compare": ("sentiment",),
    "head": ("qa", "translate"), "beam_size": ("translate",), "length_penalty": ("translate",),
    "prompt_loss": ("chat",), "baseline_runs": ("chat",), "no_repeat_ngram": ("chat",), "system": ("chat",)}
# eval's options for one of its two kinds of scoring
DOMAINS_ONLY = ("max_docs", "max_chars", "seed", "probes")
TASK_ONLY = ("limit", "compare", "beam_size", "length_penalty", "baseline_runs", "no_repeat_ngram")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def refuse_other_tasks(ctx: typer.Context, task: str, names: Iterable[str]) -> None:
    """One line for an option given to a task that does not read it (an unknown task is left to
    the task registry's own message)."""
    if not any(task in tasks for tasks in TASK_OPTIONS.values()):
        return
    for name in names:
        tasks = TASK_OPTIONS.get(name)
        if tasks is not None and task not in tasks and given(ctx, name):
            raise CandorError(f"{_flag(name)} is a {' and '.join(tasks)} option, not a {task} one")


@needs("tasks")
@options_from("candorlm.tasks.finetune:finetune", flags={"evaluate": "--test/--no-test", "time_budget": "--time"})
@options_from("candorlm.tasks.translate:evaluate", only=("beam_size",), help_prefix="translate: test evaluation's ")
def finetune(
    ctx: typer.Context,
    run: Optional[Path] = typer.Argument(None, help="Pretrained run to start from (omit to start from scratch)."),
    labels: Optional[str] = typer.Option(None, help="sentiment: the label set, comma-separated (default: the labels "
                                         "found in the data)."),
    tokenizer: Optional[str] = typer.Option(None, help="Without RUN: tokenizer kind to train on the task data "
                                            "(bpe or char; translate: the target side; default: the task's)."),
    vocab_size: Optional[int] = typer.Option(None, help="Without RUN: vocabulary size of that tokenizer "
                                             "(default: the task's)."),
    head: Optional[str] = typer.Option(None, help="qa: generate (write the answer; decoder or seq2seq) or span "
                                       "(an extractive reader pointing at it; encoder or decoder). translate: "
                                       "generate (seq2seq) or tag (aligned pairs such as builtin:pinyin: an "
                                       "encoder picks one character per source token). Default: generate."),
    mlm_weight: Optional[float] = typer.Option(None, help="sentiment, an encoder: add this times the masked-LM "
                                               "loss of the (masked) training texts to the classification loss."),
    ensemble: Optional[str] = typer.Option(None, help="sentiment: nblr to mix the classifier with NB-weighted "
                                           "logistic regression on character n-grams, fitted at the end, the weight "
                                           "chosen on dev (eval, predict and serve then use the mix); none: no."),
    prompt_loss: Optional[float] = typer.Option(None, help="chat: weight of a next-token loss on the system and "
                                                "user messages' tokens beside the assistant's (0 to 1; default 0: "
                                                "the assistant's tokens only)."),
    key_file: KeyFile = None, no_verify: NoVerify = False,
    **options: Any,
) -> None:
    """Fine-tune a pretrained run (or a fresh model) for a task; writes a new run directory with
    task.json and evals/<task>.json (test metrics next to baselines).

    Example: candorlm finetune runs/pd --task sentiment --data builtin:reviews --out runs/pd-sentiment

    Example: candorlm finetune --task translate --data builtin:pinyin --arch seq2seq --out runs/pinyin

    Example: candorlm finetune runs/pd --task sentiment --data builtin:reviews --time 5m --eval-limit 500 --out runs/s5

    Example: candorlm finetune --task sentiment --data builtin:reviews --pretrain-mlm 3 --ensemble nblr --out runs/sent-ens

    It says how long it will take before it starts, and shows a bar with the time left.
    """
    from candorlm.progress import console
    from candorlm.tasks.finetune import finetune as run_finetune

    task_options = {k: v for k, v in dict(labels=labels.split(",") if labels else None, tokenizer=tokenizer,
                                          vocab_size=vocab_size, head=head, mlm_weight=mlm_weight,
                                          ensemble=ensemble, prompt_loss=prompt_loss).items()
                    if v is not None}
    refuse_other_tasks(ctx, options["task"], [*task_options, "beam_size"])
    beam_size = options.pop("beam_size")
    if beam_size is not None:
        task_options["beam_size"] = beam_size
    with reading_with(key_file, no_verify):
        result = run_finetune(run, **options, **task_options)
    out = options["out"]
    if not result:
        console.print(f"wrote {out}; no test evaluation (--no-test): score it with `candorlm eval {out} "
                      f"--task {options['task']}`")
        return
    console.print(f"wrote {out}; test results in {out / 'evals' / (options['task'] + '.json')}")
    print_task_result(result, str(out))


@options_from("candorlm.tasks.sentiment:evaluate", only=("compare",), help_prefix="sentiment: ")
@options_from("candorlm.tasks.chat:evaluate", only=("baseline_runs", "no_repeat_ngram"), help_prefix="chat: ")
@options_from("candorlm.tasks.translate:evaluate", only=("beam_size", "length_penalty"), help_prefix="translate: ")
@options_from("candorlm.generalization.domains:evaluate_domains", only=("max_docs", "max_chars", "seed"),
              help_prefix="--domains: ")
def evaluate(
    ctx: typer.Context,
    targets: List[str] = typer.Argument(..., help="Run directory; with --domains, then the held-out sets: "
                                        "builtin:NAME, files or directories (none: the built-in corpora the run "
                                        "did not train on)."),
    task: Optional[str] = typer.Option(None, help="sentiment, translate, qa or chat (a fine-tuned run)."),
    domains: bool = typer.Option(False, "--domains", help="Bits-per-byte in-domain and on other domains, the "
                                 "generalization gap, robustness probes; writes RUN/evals/domains.json."),
    data: Optional[str] = typer.Option(None, help="--task: task data (default: the data the run was fine-tuned "
                                       "on). --domains: the run's data directory, if it has moved."),
    limit: Optional[int] = typer.Option(None, help="Score only the first N test examples."),
    probes: bool = typer.Option(True, help="--domains: also the robustness probes (traditional characters, "
                                "punctuation width, character noise, longer contexts)."),
    key_file: KeyFile = None, no_verify: NoVerify = False,
    **options: Any,
) -> None:
    """Score a fine-tuned run on its task's test split, next to baselines (RUN/evals/<task>.json); or,
    with --domains, measure how a language model generalizes (RUN/evals/domains.json).

    Example: candorlm eval runs/pd-sentiment --task sentiment --compare runs/bert-sentiment

    Example: candorlm eval runs/pd-chat --task chat --baseline-runs runs/sent --baseline-runs runs/qa

    Example: candorlm eval runs/pd --domains builtin:reviews builtin:python-docs notes.txt
    """
    from candorlm.progress import console

    run = Path(targets[0])
    if domains == (task is not None):
        raise CandorError("give either --task NAME (a fine-tuned run) or --domains (a language model), not "
                          + ("both" if domains else "neither"))
    for name in TASK_ONLY if domains else DOMAINS_ONLY:
        if given(ctx, name):
            raise CandorError(f"{_flag(name)} is an option of eval " + ("--task, not of --domains" if domains
                                                                       else "--domains, not of --task"))
    if task is not None:
        refuse_other_tasks(ctx, task, TASK_ONLY)
    if domains:
        from candorlm.generalization import evaluate_domains, print_domains

        with reading_with(key_file, no_verify):
            result = evaluate_domains(run, targets[1:], data=data, max_docs=options["max_docs"],
                                      max_chars=options["max_chars"], probes=probes, context=probes,
                                      seed=options["seed"])
        print_domains(result)
        console.print(f"wrote {run / 'evals' / 'domains.json'}")
        return
    if len(targets) > 1:
        raise CandorError(f"--task takes one run directory; got {len(targets)} arguments ({' '.join(targets)})")
    extras.check(("tasks",), "eval --task")
    from candorlm.tasks import evaluate_task

    with reading_with(key_file, no_verify):
        result = evaluate_task(run, task, data=data, compare=options["compare"], beam_size=options["beam_size"],
                               length_penalty=options["length_penalty"], limit=limit,
                               baseline_runs=options["baseline_runs"], no_repeat_ngram=options["no_repeat_ngram"])
    console.print(f"wrote {run / 'evals' / (task + '.json')}")
    print_task_result(result, str(run))


@needs("tasks")
def predict(
    run: Path = typer.Argument(..., help="A run fine-tuned with `candorlm finetune` (sentiment, translate, qa, chat)."),
    input: List[str] = typer.Option(..., "--input", help="Text to predict on, a JSON object ({\"context\", "
                                    "\"question\"} for qa; {\"messages\"} for chat), or a file: .jsonl with one "
                                    "string or object per line, any other file one text per line. Repeatable."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the JSON lines to this file instead "
                                          "of stdout."),
    system: Optional[str] = typer.Option(None, help="chat: system message for every input."),
    beam_size: Optional[int] = typer.Option(None, help="translate (not a tagger): beam width (1 = greedy; "
                                            "default: 4)."),
    overwrite: bool = typer.Option(False, help="Replace an --output file an earlier `candorlm predict` wrote."),
    key_file: KeyFile = None, no_verify: NoVerify = False,
) -> None:
    """Use a fine-tuned run on new input: one JSON line per input, {"input": ..., and the
    prediction}: sentiment {"label", "probability", "probabilities"}, translate {"translation"},
    qa {"answer"}, chat {"reply"}.

    Example: candorlm predict runs/sent --input 这个手机很好用

    Example: candorlm predict runs/qa --input questions.jsonl --output answers.jsonl
    """
    from candorlm.progress import console
    from candorlm.tasks.predict import claim_output, predict_lines, read_inputs, write_predictions

    if output is not None:
        claim_output(run, output, input, overwrite=overwrite)
    with reading_with(key_file, no_verify):
        inputs = [x for spec in input for x in read_inputs(spec)]
        given_options = {k: v for k, v in dict(system=system, beam_size=beam_size).items() if v is not None}
        lines = predict_lines(run, inputs, **given_options)
    if output is None:
        sys.stdout.write("".join(line + "\n" for line in lines))
    else:
        write_predictions(output, lines)
        console.print(f"wrote {len(inputs)} predictions to {output}")


def print_task_result(result: dict, where: str = "") -> None:
    """The test scores as a small table, the model against its baselines, and one sentence on
    what follows (the full record is in evals/<task>.json)."""
    if not result:
        return
    from rich.table import Table

    from candorlm.progress import stdout_console
    from candorlm.report.tasks import task_table
    from candorlm.report.units import show

    t = task_table(where, result)
    table = Table(title=t["title"])
    units = t.get("units") or [""] * len(t["columns"])
    for i, column in enumerate(t["columns"]):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in t["rows"]:
        table.add_row(*[str(row[0]), *[show(v, u) if v is not None else "–" for v, u in zip(row[1:], units[1:])]])
    console = stdout_console()
    console.print(table)
    if t.get("note"):
        console.print(t["note"], highlight=False)
