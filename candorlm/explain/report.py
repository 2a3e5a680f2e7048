"""`candorlm explain`: run the chosen methods on one prompt and write PNGs, explain.html and
explain.json (into the output directory, and into the run's evals/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from candorlm.errors import CandorError
from candorlm.explain import attention as attn
from candorlm.explain import attribution, faithfulness, lens, patching, plots
from candorlm.explain.html import render_html
from candorlm.explain.tokens import Example, encode_example, token_labels
from candorlm.rundir import RunDir, write_json

METHODS = ("attention", "lens", "ig", "patching")


def parse_methods(method: str | list[str]) -> list[str]:
    names = [m.strip() for part in ([method] if isinstance(method, str) else method) for m in part.split(",")]
    if "all" in names:
        return list(METHODS)
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise CandorError(f"unknown --method {', '.join(bad) or '(none)'}. Valid: {', '.join(METHODS)}, all "
                          f"(several may be given, comma-separated)")
    return [m for m in METHODS if m in names]


def _own_next_token(model: torch.nn.Module, ids: list[int], banned: frozenset[int]) -> int:
    """The model's greedy next token, never a special token (as generation does)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=device))[0, -1].float()
    if banned:
        logits[list(banned)] = float("-inf")
    return int(logits.argmax())


def explain(run: str | Path, prompt: str, target: str | None = None, method: str | list[str] = "all",
            corrupt: str | None = None, out: str | Path | None = None, top_k: int = 5, ig_steps: int = 32,
            device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Explain the model's prediction of `target` (default: its own next token) after `prompt`.

    Writes attention-layer-N.png, head-scores.png, lens.png, attribution.png, patching-*.png,
    explain.html and explain.json into `out` (default RUN/explain), and RUN/evals/explain.json.
    Returns the JSON document.
    """
    from candorlm.lm import load

    methods = parse_methods(method)
    if "patching" in methods and corrupt is None:
        if "all" not in str(method):  # asked for by name, not just included in "all"
            raise CandorError("--method patching needs --corrupt TEXT: a corrupted prompt with as many tokens as "
                              "the prompt (for example the prompt with one word changed)")
        methods.remove("patching")
    run_dir = RunDir(Path(run))
    lm = load(run, device=device)
    model, tok = lm.model, lm.tokenizer
    out_dir = Path(out) if out is not None else run_dir.path / "explain"
    out_dir.mkdir(parents=True, exist_ok=True)
    has_bos = tok.bos_id is not None
    example = encode_example(tok, prompt, target=target) if target is not None else None
    if example is None:
        probe = encode_example(tok, prompt)
        example = encode_example(tok, prompt, target_ids=[_own_next_token(model, probe.ids, tok.special_ids)])
    if len(example.ids) > model.cfg.max_seq_len:
        raise CandorError(f"prompt and target are {len(example.ids)} tokens; the model reads at most "
                          f"{model.cfg.max_seq_len}. Shorten the prompt")
    ids = torch.tensor([example.ids], device=next(model.parameters()).device)
    labels = example.labels
    target_labels = token_labels(tok, example.target_ids)
    with torch.no_grad():
        p_target = float(torch.exp(attribution.target_log_prob(model, ids, example)))
    doc: dict[str, Any] = {
        "run": str(run_dir.path), "prompt": prompt, "target": tok.decode(example.target_ids),
        "target_source": "given" if target is not None else "the model's own most likely next token",
        "ids": example.ids, "tokens": labels, "n_prompt": example.n_prompt,
        "target_ids": example.target_ids, "target_tokens": target_labels, "p_target": p_target,
        "methods": methods, "files": [],
        "model": {"n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads, "d_model": model.cfg.d_model,
                  "parameters": model.num_params()},
    }
    quantity = f"p({doc['target']!r} | prompt)"

    def wrote(path: Path) -> None:
        doc["files"].append(path.name)

    if "attention" in methods:
        patterns = attn.attention_patterns(model, ids)[:, 0].cpu().numpy()  # (L, H, T, T)
        vocab = [i for i in range(tok.vocab_size) if i not in tok.special_ids]
        summary = attn.head_summary(model, ids, vocab, tok.bos_id, seed=seed)
        doc["attention"] = {"patterns": np.round(patterns, 4).tolist(), "heads": summary.to_json()}
        for layer in range(patterns.shape[0]):
            wrote(plots.attention_png(patterns[layer], labels, layer, out_dir / f"attention-layer-{layer}.png"))
        wrote(plots.head_scores_png(doc["attention"]["heads"]["scores"], out_dir / "head-scores.png"))
    if "lens" in methods:
        following = example.ids[1:] + [example.target_ids[-1]]
        lensed = lens.logit_lens(model, ids, k=top_k, next_ids=following, target_id=example.target_ids[0])
        top_labels = [[[_one(tok, int(t)) for t in pos] for pos in row] for row in lensed.top_ids.tolist()]
        doc["lens"] = {
            "layers": lensed.layers, "next_tokens": token_labels(tok, following), "target_token": target_labels[0],
            "top_tokens": top_labels, "top_probs": np.round(lensed.top_probs.numpy(), 4).tolist(),
            "next_prob": _nan_to_none(np.round(lensed.next_prob.numpy(), 4)),
            "target_prob": np.round(lensed.target_prob.numpy(), 4).tolist(),
        }
        wrote(plots.lens_png(lensed.next_prob.numpy(), lensed.layers, labels,
                             [[pos[0] for pos in row] for row in top_labels],
                             f"logit lens: colour = probability of the next token (last: {target_labels[-1]!r}); "
                             f"text = top guess", out_dir / "lens.png"))
    if "ig" in methods:
        ig = attribution.integrated_gradients(model, example, tok.pad_id, has_bos, n_steps=ig_steps)
        gxi = attribution.gradient_x_input(model, example)
        deletion = {}
        for name, scores in (("integrated_gradients", ig.scores), ("gradient_x_input", gxi.scores)):
            deletion[name] = [faithfulness.to_json(faithfulness.deletion_test(model, example, scores, k, has_bos,
                                                                              seed=seed)) for k in (1, 2)]
        doc["attribution"] = {
            "f": "log p(target | prompt)",
            "baseline": "<|pad|> embedding at every prompt position; <bos> and target tokens kept",
            "integration": "Gauss-Legendre quadrature",
            "integrated_gradients": ig.to_json(), "gradient_x_input": gxi.to_json(),
            "completeness_ok": ig.completeness_error is not None and ig.completeness_error < attribution.TOLERANCE,
            "deletion": deletion,
        }
        wrote(plots.attribution_png({"integrated gradients": ig.scores, "gradient x input": gxi.scores}, labels,
                                    f"attribution of log {quantity}; IG completeness error "
                                    f"{ig.completeness_error:.2%} ({ig.n_steps} steps)", out_dir / "attribution.png"))
    if "patching" in methods:
        doc["patching"] = _patching(model, tok, example, corrupt, out_dir, wrote)  # type: ignore[arg-type]
    write_json(out_dir / "explain.json", doc)
    run_dir.evals.mkdir(parents=True, exist_ok=True)
    write_json(run_dir.evals / "explain.json", doc)
    (out_dir / "explain.html").write_text(render_html(doc), encoding="utf-8")
    doc["files"] += ["explain.html", "explain.json"]
    return doc


def _patching(model: torch.nn.Module, tok: Any, example: Example, corrupt: str, out_dir: Path, wrote: Any) -> dict:
    clean_ids = example.ids[:example.n_prompt]
    bad = encode_example(tok, corrupt)
    if len(bad.ids) != len(clean_ids):
        raise CandorError(f"--corrupt must tokenize to as many tokens as --prompt ({len(clean_ids) - 1} without "
                          f"<bos>); {corrupt!r} has {len(bad.ids) - 1}: {' | '.join(bad.labels[1:])}. "
                          f"Change the corrupted prompt (e.g. swap one word for another of the same length)")
    device = next(model.parameters()).device
    clean = torch.tensor([clean_ids], device=device)
    corrupted = torch.tensor([bad.ids], device=device)
    good = example.target_ids[0]
    other = _own_next_token(model, bad.ids, tok.special_ids)
    last = len(clean_ids) - 1
    if other != good:
        metric = patching.logit_difference(last, good, other)
        metric_name = f"logit({_one(tok, good)}) - logit({_one(tok, other)}) at the last position"
    else:  # the corruption did not change the answer: measure the answer's log-probability instead
        metric = lambda logits: torch.log_softmax(logits[:, last].float(), -1)[:, good]  # noqa: E731
        metric_name = f"log p({_one(tok, good)}) at the last position (the corrupted prompt predicts it too)"
    resid = patching.patch_residual(model, clean, corrupted, metric)
    heads = patching.patch_heads(model, clean, corrupted, metric)
    labels = [c if c == b else f"{b}→{c}" for c, b in zip(example.labels[:len(clean_ids)], bad.labels)]
    wrote(plots.patching_png(resid.effect.numpy(), resid.rows, labels,
                             f"restoring the clean residual stream: {metric_name}", "position (corrupted → clean)",
                             out_dir / "patching-residual.png"))
    wrote(plots.patching_png(heads.effect.numpy(), heads.rows, [str(h) for h in range(heads.effect.shape[1])],
                             "restoring one head's output (all positions)", "head", out_dir / "patching-heads.png"))
    return {"corrupt": corrupt, "corrupt_tokens": bad.labels, "position_labels": labels, "metric": metric_name,
            "clean_metric": resid.clean, "corrupted_metric": resid.corrupted,
            "residual": {"rows": resid.rows, "effect": np.round(resid.effect.numpy(), 4).tolist()},
            "heads": {"rows": heads.rows, "effect": np.round(heads.effect.numpy(), 4).tolist()}}


def _one(tok: Any, token_id: int) -> str:
    return token_labels(tok, [token_id])[0]


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if np.isnan(v) else float(v) for v in row] for row in a]


def faithfulness_report(run: str | Path, prompts: list[str], ks: tuple[int, ...] = (1, 2), draws: int = 200,
                        ig_steps: int = 32, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Over a prompt set, each explained for the model's own next token: the integrated-gradients
    completeness error, and the deletion test (top-k attributed vs k random tokens) for
    integrated gradients, gradient x input and a recency baseline (latest tokens first).
    Writes RUN/evals/explain-faithfulness.json."""
    from candorlm.lm import load

    lm = load(run, device=device)
    model, tok = lm.model, lm.tokenizer
    has_bos = tok.bos_id is not None
    # "recency" is no explanation at all (the latest tokens first): the bar an attribution must
    # clear to say more than "small language models mostly look at the last tokens".
    methods = ("integrated_gradients", "gradient_x_input", "recency")
    rows: list[dict[str, Any]] = []
    deletions: dict[str, dict[int, list]] = {name: {k: [] for k in ks} for name in methods}
    for prompt in prompts:
        probe = encode_example(tok, prompt)
        example = encode_example(tok, prompt, target_ids=[_own_next_token(model, probe.ids, tok.special_ids)])
        ig = attribution.integrated_gradients(model, example, tok.pad_id, has_bos, n_steps=ig_steps)
        gxi = attribution.gradient_x_input(model, example)
        row: dict[str, Any] = {"prompt": prompt, "target": _one(tok, example.target_ids[0]),
                               "tokens": len(example.ids), "ig": ig.to_json(), "deletion": {}}
        recency = [float(i) for i in range(len(example.ids))]
        for name, scores in zip(methods, (ig.scores, gxi.scores, recency)):
            for k in ks:
                result = faithfulness.deletion_test(model, example, scores, k, has_bos, draws=draws, seed=seed)
                row["deletion"][f"{name}@{k}"] = faithfulness.to_json(result)
                if result is not None:
                    deletions[name][k].append(result)
        rows.append(row)
    errors = [r["ig"]["completeness_error"] for r in rows]
    doc = {
        "run": str(run), "prompts": len(prompts), "draws": draws,
        "completeness": {"max_error": max(errors), "mean_error": float(np.mean(errors)),
                         "all_within_5_percent": max(errors) < attribution.TOLERANCE,
                         "steps": sorted({r["ig"]["n_steps"] for r in rows})},
        "deletion": {name: {str(k): faithfulness.summarize(results, seed=seed) for k, results in by_k.items()}
                     for name, by_k in deletions.items()},
        "ig_vs_recency": {str(k): faithfulness.compare(deletions["integrated_gradients"][k], deletions["recency"][k],
                                                       seed=seed) for k in ks},
        "per_prompt": rows,
    }
    run_dir = RunDir(Path(run))
    run_dir.evals.mkdir(parents=True, exist_ok=True)
    write_json(run_dir.evals / "explain-faithfulness.json", doc)
    return doc
