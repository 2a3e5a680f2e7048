"""Task scores as small tables: each fine-tuned model against its baselines on the same held-out
test split (evals/<task>.json of the run and of the runs fine-tuned from it), and one sentence
saying how far the model is from the best baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from candorlm.report.section import load, table
from candorlm.report.units import percent, points
from candorlm.rundir import RunDir

TASKS = ("sentiment", "translate", "qa", "chat")
NAMES = {"sentiment": "Sentiment analysis", "translate": "Translation", "qa": "Question answering",
         "chat": "Dialogue"}
# metric key -> (column label, unit); the first one a task has among PRIMARY is its headline.
METRICS = {
    "accuracy": ("accuracy", "fraction"), "macro_f1": ("macro-F1", "fraction"),
    "exact_match": ("exact match", "fraction"), "char_f1": ("character F1", "fraction"),
    "char_accuracy": ("character accuracy", "fraction"), "han_char_accuracy": ("Chinese-character accuracy", "fraction"),
    "chrf": ("chrF (0-100)", ""), "bleu": ("BLEU (0-100)", ""),
    "reply_exact_match": ("replies exactly right", "fraction"),
    "right": ("replies right", "fraction"), "degenerate": ("degenerate replies", "fraction"),
    "assistant_loss": ("assistant loss (nats/token)", ""), "assistant_perplexity": ("assistant perplexity", ""),
}
PRIMARY = {"sentiment": "accuracy", "qa": "exact_match", "translate": "char_accuracy", "chat": "right"}
LOWER_IS_BETTER = {"assistant_loss", "assistant_perplexity"}
BASELINES = {"majority": "always the most common label",
             "tfidf_char_1_3_logreg": "TF-IDF character 1-3-grams + logistic regression",
             "most_frequent_answer_per_question_word": "the most frequent answer for the question word",
             "align_and_copy": "string matching that inverts the set's rule (align and copy)"}
_NOT_METRICS = {"parameters", "epochs", "test_size", "turns", "unseen_tokens", "features", "n", "score"}
_FRACTION_WORDS = ("accuracy", "match", "f1", "rate", "share", "precision", "recall")


def task_evals(run: RunDir) -> list[tuple[str, dict[str, Any]]]:
    """(where, evals/<task>.json) for the run itself and for every sibling run fine-tuned from it."""
    found = [(str(run.path), run.evals / f"{t}.json") for t in TASKS]
    parent = run.path.resolve().parent
    for task_file in sorted(parent.glob("*/task.json")):
        info = load(task_file) or {}
        base = info.get("base_run")
        if base and Path(base).resolve() == run.path.resolve() and info.get("task") in TASKS:
            found.append((str(task_file.parent), task_file.parent / "evals" / f"{info['task']}.json"))
    return [(where, doc) for where, path in found if isinstance(doc := load(path), dict)]


def _metric(key: str, value: Any) -> tuple[str, str] | None:
    if key in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if key in METRICS:
        return METRICS[key]
    fraction = 0 <= value <= 1 and any(w in key for w in _FRACTION_WORDS)
    return key.replace("_", " "), "fraction" if fraction else ""


def _by_kind(scores: dict[str, Any]) -> dict[str, Any]:
    """Chat scores with one column per kind of turn (sentiment: label accuracy; reading: exact match)."""
    out = dict(scores)
    for kind, s in (scores.get("by_kind") or {}).items():
        for key in ("label_accuracy", "exact_match", "char_f1"):
            if isinstance(s, dict) and key in s:
                out[f"{kind}: {key}"] = s[key]
    return out


def _rows(where: str, doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    models = doc.get("models") or ([doc["model"]] if isinstance(doc.get("model"), dict) else [])
    named = [(m.get("name") or f"{Path(m.get('run', where)).name} (fine-tuned{', ' + m['arch'] if m.get('arch') else ''})",
              _by_kind(m)) for m in models]  # a name: one run decoded two ways (the pinyin tagger with and without its LM)
    baselines = doc.get("baselines") or ({"baseline": doc["baseline"]} if isinstance(doc.get("baseline"), dict) else {})
    for key, b in baselines.items():
        if isinstance(b, dict):
            named.append((f"baseline: {b.get('name') or BASELINES.get(key) or key.replace('_', ' ')}", _by_kind(b)))
    for b in doc.get("single_task") or []:  # chat: the single-task models, compared kind by kind only
        scores = {k: v for k, v in _by_kind(b).items() if k not in ("right", "degenerate")}
        named.append((f"baseline: the {b.get('task')} model {Path(b.get('run', '?')).name}", scores))
    return named


def task_table(where: str, doc: dict[str, Any]) -> dict[str, Any]:
    task = doc.get("task", "?")
    rows = _rows(where, doc)
    keys: dict[str, tuple[str, str]] = {}
    for _, scores in rows:
        for key, v in scores.items():
            if key not in keys and (m := _metric(key, v)):
                keys[key] = m
    test = _scored(doc)
    title = (f"{NAMES.get(task, task)} on {doc.get('data')}"
             + (f": {test:,} held-out test examples" if isinstance(test, int) else ""))
    return table(title, ["model or baseline", *[label for label, _ in keys.values()]],
                 [[name, *[scores.get(k) for k in keys]] for name, scores in rows],
                 units=["", *[unit for _, unit in keys.values()]],
                 note=" ".join(filter(None, [_note(task, rows, keys, test), _overlap_note(where)])))


def _overlap_note(where: str) -> str:
    """A sentence when the run's test examples were in its start run's pretraining text (tasks/overlap.py)."""
    found = (load(Path(where) / "task.json") or {}).get("pretraining_overlap") or {}
    if not found.get("checked") or not found.get("seen"):
        return ""
    return (f"{found['seen']:,} of the {found['test_examples']:,} test examples ({percent(found['share'])}) share a "
            f"{found['window_chars']}-character passage with the text the starting run was pretrained on, so their "
            f"scores may be memory rather than skill.")


def _scored(doc: dict[str, Any]) -> Any:
    """How many test examples the figures stand on: a chat evaluation scores turns (all of its
    test conversations', or --limit of them), the other tasks their (limited) test split."""
    model = doc.get("model")
    turns = model.get("turns") if isinstance(model, dict) else None
    return turns if isinstance(turns, int) else (doc.get("split") or {}).get("test")


def _note(task: str, rows: list[tuple[str, dict[str, Any]]], keys: dict[str, tuple[str, str]], test: Any) -> str:
    key = PRIMARY.get(task) if PRIMARY.get(task) in keys else next(iter(keys), None)
    models = [(n, s) for n, s in rows if not n.startswith("baseline: ") and isinstance(s.get(key), (int, float))]
    bases = [(n, s) for n, s in rows if n.startswith("baseline: ") and isinstance(s.get(key), (int, float))]
    if key is None or not models:
        return ""
    label, unit = keys[key]
    show = percent if unit == "fraction" else (lambda x: f"{x:.4g}")
    name, scores = models[0]
    mine = scores[key]
    on = f"On {test:,} held-out test examples" if isinstance(test, int) else "On the test split"
    text = f"{on} the fine-tuned model's {label} is {show(mine)}"
    if not bases:
        return text + "; there is no baseline to compare it with."
    lower = key in LOWER_IS_BETTER
    best_name, best = (min if lower else max)(bases, key=lambda b: b[1][key])
    diff = (best[key] - mine) if lower else (mine - best[key])
    gap = points(diff) if unit == "fraction" else f"{diff:+.4g}"
    text += f"; the best baseline ({best_name.removeprefix('baseline: ')}) reaches {show(best[key])}"
    if abs(diff) < (0.005 if unit == "fraction" else 1e-9):
        return text + ": the model is on par with it, so it has not yet earned its cost."
    if diff > 0:
        return text + f": the model is ahead by {gap.lstrip('+')}."
    return text + (f": the model is behind by {gap.lstrip('-')}, so the baseline is the better choice until the "
                   f"model is trained longer or larger.")
