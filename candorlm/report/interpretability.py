"""The Interpretability section: what `candorlm explain` found for one prompt, and whether the
attributions pass the deletion test over a prompt set (evals/explain*.json)."""

from __future__ import annotations

from typing import Any

from candorlm.report.section import fig, finish, load, missing, new_section, table
from candorlm.report.units import percent
from candorlm.rundir import RunDir

_FAITHFULNESS_CMD = ("python -c \"from candorlm.explain.report import faithfulness_report; "
                     "faithfulness_report('{run}', ['中国经济', '人民日报记者', '今天上午，国务院总理'])\"")
_CAPTIONS = {
    "attention": ("Where each token looks in layer {layer}: each row is a token being processed, each column an "
                  "earlier token it can attend to, brighter is more weight. {heads}"),
    "attribution": ("How much each prompt token raised (red, up) or lowered (blue, down) log p({target}), by "
                    "integrated gradients and by gradient × input. Where the two disagree, trust neither without "
                    "the deletion test."),
    "lens": ("The logit lens: what each layer would predict if the model stopped there; darker cells give more "
             "probability to the token that really comes next. Layers where it darkens are where the prediction "
             "forms."),
}


def interpretability_section(run: RunDir) -> dict[str, Any]:
    s = new_section("interpretability", "Interpretability")
    doc = load(run.evals / "explain.json")
    if doc:
        _prompt_part(s, doc, run)
    else:
        missing(s, "attention and attribution for a prompt (evals/explain.json)",
                f"candorlm explain {run.path} --prompt \"江泽民主席在北京会见了\"")
    faith = load(run.evals / "explain-faithfulness.json")
    if faith:
        _faithfulness_part(s, faith)
    else:
        missing(s, "faithfulness over a prompt set (evals/explain-faithfulness.json)",
                _FAITHFULNESS_CMD.format(run=run.path))
    return finish(s)


def _roles(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    maps = (doc.get("attention") or {}).get("maps") or []
    heads = (maps[0].get("heads") or {}) if maps else {}
    return heads.get("heads") or {}


def _prompt_part(s: dict[str, Any], doc: dict[str, Any], run: RunDir) -> None:
    target = doc["target"]
    s["summary"] = (f"For the prompt {doc['prompt']!r} the model gives the next token {target!r} a probability of "
                    f"{percent(doc['p_target'])}.")
    s["figures"].append(fig("p(target | prompt)", round(doc["p_target"], 6), "probability", "evals/explain.json",
                            note=f"how likely the model finds {target!r} after the prompt"))
    roles = _roles(doc)
    rows = [[kind.replace("_", " "), ", ".join(f"layer {h['layer']} head {h['head']} ({h['score']:.2f})"
                                               for h in found) or "none"] for kind, found in roles.items()]
    if rows:
        s["tables"].append(table("attention heads by role (score above 0.5)", ["role", "heads"], rows,
                                 note="A previous-token head looks at the token just before; a first-token head "
                                      "rests on the first token; an induction head copies what followed an earlier "
                                      "occurrence of the current token (what makes in-context repetition work)."))
    attr = doc.get("attribution")
    if attr:
        ig = attr["integrated_gradients"]
        s["figures"].append(fig("integrated-gradients completeness error", round(ig["completeness_error"], 6),
                                "fraction", "evals/explain.json",
                                note="how far the attributions' sum is from the real change in log p(target); under "
                                     "5% means they add up (a check of the method, not of the model)"))
        s["tables"].append(table(
            f"attribution of log p({target!r} | prompt) to each prompt token", ["token", "integrated gradients",
                                                                                "gradient × input"],
            [[t, round(a, 4), round(b, 4)] for t, a, b in zip(doc["tokens"], ig["scores"],
                                                               attr["gradient_x_input"]["scores"])],
            note="Positive: the token made the target more likely; negative: less likely; near zero: it hardly "
                 "mattered."))
    folder = run.path / "explain"
    heads = "; ".join(f"{kind.replace('_', ' ')} heads: {_head_names(found)}" for kind, found in roles.items()
                      if found) or "No head scores above 0.5 on any role on this prompt."
    for name in doc.get("files", []):
        if name.endswith(".png") and name.startswith(("attention-layer-0", "attribution", "lens")):
            if (folder / name).is_file():
                kind = name.split("-")[0].removesuffix(".png")
                caption = _CAPTIONS.get(kind, "").format(layer=0, heads=heads, target=repr(target))
                s["images"].append({"key": name, "title": name[:-4].replace("-", " "), "path": str(folder / name),
                                    "caption": caption})


def _head_names(found: list[dict[str, Any]]) -> str:
    return ", ".join(f"layer {h['layer']} head {h['head']}" for h in found)


def _faithfulness_part(s: dict[str, Any], faith: dict[str, Any]) -> None:
    comp = faith["completeness"]
    n = faith["prompts"]
    s["figures"].append(fig("IG completeness error, worst prompt", round(comp["max_error"], 6), "fraction",
                            "evals/explain-faithfulness.json", note=f"the largest over {n} prompts; under 5% is good"))
    rows = []
    for name, by_k in faith.get("deletion", {}).items():
        for k, summ in by_k.items():
            if summ.get("prompts"):
                rows.append([name.replace("_", " "), int(k), summ["prompts"], summ.get("mean_drop_top"),
                             summ.get("mean_drop_random"), summ.get("difference_ci95"), summ.get("verdict", "")])
    if rows:
        few = (f" Only {n} prompts: intervals are wide, so read the verdicts as hints and run the test on more "
               f"prompts." if n < 20 else "")
        s["tables"].append(table(
            f"deletion test over {n} prompts: does removing the top-attributed tokens hurt more than removing random "
            f"ones?", ["attribution", "k tokens removed", "prompts", "drop in p(target), top-k removed",
                       "drop, k random removed", "difference, 95% interval", "verdict"], rows,
            units=["", "", "", "probability", "probability", "probability", ""],
            note="A faithful attribution points at the tokens the prediction depends on, so removing its top tokens "
                 "lowers p(target) more than removing as many random ones. 'Recency' is a rule, not a method: it "
                 "always names the last tokens, the baseline an attribution has to beat." + few))
    vs = [(int(k), c) for k, c in faith.get("ig_vs_recency", {}).items() if c.get("prompts")]
    if vs:
        rows = [[k, c["prompts"], c.get("share_a_better", 0.0), c.get("share_equal", 0.0),
                 max(0.0, 1 - c.get("share_a_better", 0.0) - c.get("share_equal", 0.0)), c.get("mean_difference"),
                 c.get("difference_ci95")] for k, c in vs]
        s["tables"].append(table(
            "integrated gradients against the 'last tokens matter' rule (same deletion test)",
            ["k tokens removed", "prompts", "IG hurt p(target) more", "the same", "the rule hurt more",
             "mean difference", "95% interval"], rows,
            units=["", "", "fraction", "fraction", "fraction", "probability", "probability"],
            note=_vs_recency_note(vs)))
    s["data"] = {k: faith[k] for k in ("completeness", "deletion", "ig_vs_recency") if k in faith}


def _vs_recency_note(vs: list[tuple[int, dict[str, Any]]]) -> str:
    better = sum(c["prompts"] * c.get("share_a_better", 0.0) for _, c in vs)
    equal = sum(c["prompts"] * c.get("share_equal", 0.0) for _, c in vs)
    total = sum(c["prompts"] for _, c in vs)
    lo = min((c.get("difference_ci95") or [0, 0])[0] for _, c in vs)
    text = (f"Over {total} prompt-and-k cases, removing integrated gradients' top tokens hurt the prediction more than "
            f"removing the last tokens in {better:.0f}, exactly as much in {equal:.0f}")
    if equal >= total / 2:
        return text + (": mostly both picked the same tokens, so on these prompts IG tells you no more than "
                       "'the last tokens matter'.")
    if better > total / 2 and lo > 0:
        return text + ": IG finds tokens that matter beyond the most recent ones."
    return text + ": IG does not reliably beat the rule here."
