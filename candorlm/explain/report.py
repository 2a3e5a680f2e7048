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
from candorlm.explain.subject import Subject, load_subject, model_inputs
from candorlm.explain.tokens import Example, token_labels
from candorlm.io.files import atomic_write_text, write_json
from candorlm.io.outputs import claim_folder, write_marker
from candorlm.io.sealedtree import encrypted_tree, refuse_plain_output_in_sealed_tree
from candorlm.rundir import RunDir

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


# What f is, and what the lens reads, for each architecture.
_F = {"decoder": "log p(target | prompt)",
      "encoder": "log p(target at the masked positions | prompt)",
      "seq2seq": "log p(target | source), the decoder teacher-forced"}
_BASELINE = {"decoder": "<|pad|> embedding at every prompt position; <bos> and target tokens kept",
             "encoder": "<|pad|> embedding at every prompt position; <bos> and <|mask|> tokens kept",
             "seq2seq": "<|pad|> embedding at every source position; the source's <bos>/<eos> and <|mask|> "
                        "kept; the decoder's input unchanged"}
_LENS = {"decoder": "the next token at each position",
         "encoder": "the token at each position itself (the target at a <|mask|>), through the final norm and the "
                    "masked-LM head",
         "seq2seq": "the decoder's next target token at each decoder position (the encoder has no output layer)"}


def explain(run: str | Path, prompt: str, target: str | None = None, method: str | list[str] = "all",
            corrupt: str | None = None, out: str | Path | None = None, top_k: int = 5, ig_steps: int = 32,
            device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Explain the model's prediction of `target` (default: its own prediction) for `prompt`.

    The run's `model.arch` picks what that means (see `candorlm.explain.subject`): a decoder's
    continuation of the prompt; an encoder's prediction at the prompt's `<|mask|>` positions
    (one `<|mask|>` appended per target token when the prompt has none); an encoder-decoder's
    output (the target) for the prompt as its source.

    Writes `attention-*.png`, `head-scores*.png`, lens.png, attribution.png, `patching-*.png`,
    explain.html and explain.json into `out` (default RUN/explain), and RUN/evals/explain.json
    (not into an encrypted run: there `out` must lie outside it).
    Returns the JSON document.

    Args:
        run: Run directory (a trained or imported model).
        prompt: The prompt to explain.
        target: Continuation to explain (default: the model's own next token); an encoder's tokens at
            the prompt's <|mask|>; an encoder-decoder's output.
        method: attention, lens, ig, patching or all; several comma-separated.
        corrupt: Corrupted prompt for activation patching, with as many tokens as the prompt.
        out: Directory for the PNGs, explain.html and explain.json (default: RUN/explain).
        top_k: Predictions per layer and position in the logit lens.
        ig_steps: Integrated-gradients steps (doubled until completeness is within 5%).
        device: cpu, cuda or auto.
        seed: Seed for the random sequences and deletions.
    """
    refuse_plain_output_in_sealed_tree(run, "explain's PNGs, explain.html and explain.json", out=out,
                                       option="--out DIR")
    methods = parse_methods(method)
    if "patching" in methods and corrupt is None:
        if "all" not in str(method):  # asked for by name, not just included in "all"
            raise CandorError("--method patching needs --corrupt TEXT: a corrupted prompt with as many tokens as "
                              "the prompt (for example the prompt with one word changed)")
        methods.remove("patching")
    run_dir = RunDir(Path(run))
    out_dir = Path(out) if out is not None else run_dir.path / "explain"
    claim_folder(out_dir, "explain", "candorlm explain", legacy=_older_explain)
    subject = load_subject(run, device=device)
    write_marker(out_dir, "explain", "candorlm explain")  # makes the folder
    model, tok, arch = subject.model, subject.target, subject.arch
    example = subject.example(prompt, target)
    ids = torch.tensor([example.ids], device=subject.device)
    extra = model_inputs(ids, example)[1:]  # an encoder-decoder's decoder input
    labels = example.labels
    out_labels = list(example.decoder_labels) if extra else labels  # one per position of the logits
    target_labels = token_labels(tok, example.target_ids)
    with torch.no_grad():
        p_target = float(torch.exp(attribution.target_log_prob(model, ids, example)))
    doc: dict[str, Any] = {
        "run": str(run_dir.path), "arch": arch, "prompt": prompt, "target": tok.decode(example.target_ids),
        "target_source": "given" if target is not None else
        ("the model's own greedy output" if arch == "seq2seq" else "the model's own most likely token"),
        "ids": example.ids, "tokens": labels, "n_prompt": example.n_prompt,
        "target_ids": example.target_ids, "target_tokens": target_labels, "p_target": p_target,
        "target_positions": example.target_positions, "methods": methods, "files": [],
        "model": {"arch": arch, "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
                  "d_model": model.cfg.d_model, "parameters": model.num_params()},
    }
    if arch == "encoder":
        doc["masked_positions"] = list(example.masked)
    if extra:
        doc["decoder_ids"], doc["decoder_tokens"] = list(example.decoder_ids), out_labels
        doc["model"]["n_encoder_layers"] = len(model.encoder.blocks)
    quantity = f"p({doc['target']!r} | prompt)"

    def wrote(path: Path) -> None:
        doc["files"].append(path.name)

    if "attention" in methods:
        maps = _attention_maps(subject, example, ids, seed)
        for m in maps:
            stem = "attention" if len(maps) == 1 else f"attention-{m['name']}"
            patterns = np.array(m["patterns"])
            for layer in range(patterns.shape[0]):
                wrote(plots.attention_png(patterns[layer], m["queries"], layer, out_dir / f"{stem}-layer-{layer}.png",
                                          keys=m["keys"], title=m["name"] if len(maps) > 1 else ""))
            if m["heads"] is not None:
                name = "head-scores.png" if len(maps) == 1 else f"head-scores-{m['name']}.png"
                wrote(plots.head_scores_png(m["heads"]["scores"], out_dir / name))
        doc["attention"] = {"maps": maps}
    if "lens" in methods:
        if arch == "decoder":
            following = example.ids[1:] + [example.target_ids[-1]]
        elif arch == "encoder":
            following = list(example.ids)
            for pos, t in zip(example.masked, example.target_ids):
                following[pos] = t
        else:
            following = list(example.target_ids)
        lensed = lens.logit_lens(model, ids, k=top_k, next_ids=following, target_id=example.target_ids[0],
                                 extra=extra)
        top_labels = [[[_one(tok, int(t)) for t in pos] for pos in row] for row in lensed.top_ids.tolist()]
        doc["lens"] = {
            "reads": _LENS[arch], "positions": out_labels,
            "layers": lensed.layers, "next_tokens": token_labels(tok, following), "target_token": target_labels[0],
            "top_tokens": top_labels, "top_probs": np.round(lensed.top_probs.numpy(), 4).tolist(),
            "next_prob": _nan_to_none(np.round(lensed.next_prob.numpy(), 4)),
            "target_prob": np.round(lensed.target_prob.numpy(), 4).tolist(),
        }
        what = "the token at the position" if arch == "encoder" else "the next token"
        wrote(plots.lens_png(lensed.next_prob.numpy(), lensed.layers, out_labels,
                             [[pos[0] for pos in row] for row in top_labels],
                             f"logit lens ({'decoder' if extra else arch}): colour = probability of {what} "
                             f"(target: {target_labels[0]!r}); text = top guess", out_dir / "lens.png"))
    if "ig" in methods:
        ig = attribution.integrated_gradients(model, example, subject.pad_id, n_steps=ig_steps)
        gxi = attribution.gradient_x_input(model, example)
        deletion = {}
        for name, scores in (("integrated_gradients", ig.scores), ("gradient_x_input", gxi.scores)):
            # Removable tokens are the prompt's content positions (Example.frame says which are not).
            deletion[name] = [faithfulness.to_json(faithfulness.deletion_test(model, example, scores, k, False,
                                                                              seed=seed)) for k in (1, 2)]
        doc["attribution"] = {
            "f": _F[arch], "over": "the source tokens" if extra else "the input tokens",
            "baseline": _BASELINE[arch],
            "integration": "Gauss-Legendre quadrature",
            "integrated_gradients": ig.to_json(), "gradient_x_input": gxi.to_json(),
            "completeness_ok": ig.completeness_error is not None and ig.completeness_error < attribution.TOLERANCE,
            "deletion": deletion,
        }
        wrote(plots.attribution_png({"integrated gradients": ig.scores, "gradient x input": gxi.scores}, labels,
                                    f"attribution of log {quantity}; IG completeness error "
                                    f"{ig.completeness_error:.2%} ({ig.n_steps} steps)", out_dir / "attribution.png"))
    if "patching" in methods:
        doc["patching"] = _patching(subject, example, corrupt, out_dir, wrote)  # type: ignore[arg-type]
    write_json(out_dir / "explain.json", doc)
    if encrypted_tree(run_dir.path) is None:  # an encrypted run gets no plain copy (--out was outside it)
        run_dir.evals.mkdir(parents=True, exist_ok=True)
        write_json(run_dir.evals / "explain.json", doc)
    atomic_write_text(out_dir / "explain.html", render_html(doc))
    doc["files"] += ["explain.html", "explain.json"]
    return doc


def _older_explain(folder: Path) -> bool:
    """A folder an explain from before the markers wrote: its explain.json, and only files of explain's names."""
    return (folder / "explain.json").is_file() and all(
        f.is_file() and (f.suffix == ".png" or f.name in ("explain.html", "explain.json")) for f in folder.iterdir())


def _vocab(tok: Any) -> list[int]:
    return [i for i in range(tok.vocab_size) if i not in tok.special_ids]


def _attention_maps(subject: Subject, example: Example, ids: torch.Tensor, seed: int) -> list[dict[str, Any]]:
    """One entry per kind of attention: its name, title, query and key labels, patterns
    (layer, head, query, key) and head summary (None for cross-attention)."""
    model = subject.model

    def entry(name: str, title: str, queries: list[str], keys: list[str], patterns: torch.Tensor,
              summary: attn.HeadSummary | None) -> dict[str, Any]:
        return {"name": name, "title": title, "queries": queries, "keys": keys, "causal": name in ("self", "decoder")
                and subject.arch != "encoder", "patterns": np.round(patterns[:, 0].cpu().numpy(), 4).tolist(),
                "heads": summary.to_json() if summary is not None else None}

    if subject.arch != "seq2seq":
        patterns = attn.attention_patterns(model, ids)
        summary = attn.summary_of(patterns, attn.induction_scores(model, _vocab(subject.target), subject.target.bos_id,
                                                                  n=attn.induction_length(model), seed=seed))
        kind = "bidirectional" if subject.arch == "encoder" else "causal"
        return [entry("self", f"self-attention ({kind})", example.labels, example.labels, patterns, summary)]
    dec = model_inputs(ids, example)[1]
    patterns = attn.seq2seq_patterns(model, ids, dec)
    induction = attn.seq2seq_induction_scores(model, _vocab(subject.source), _vocab(subject.target),
                                              subject.target.bos_id, n=attn.induction_length(model), seed=seed)
    src, tgt = example.labels, list(example.decoder_labels)
    return [entry("encoder", "encoder self-attention (bidirectional, source x source)", src, src,
                  patterns["encoder"], attn.summary_of(patterns["encoder"], induction["encoder"])),
            entry("decoder", "decoder self-attention (causal, target x target)", tgt, tgt,
                  patterns["decoder"], attn.summary_of(patterns["decoder"], induction["decoder"])),
            entry("cross", "cross-attention (target queries x source keys)", tgt, src, patterns["cross"], None)]


def _patching(subject: Subject, example: Example, corrupt: str, out_dir: Path, wrote: Any) -> dict:
    model, tok = subject.model, subject.target
    clean_ids = example.ids[:example.n_prompt]
    bad = subject.corrupted(corrupt, example)
    bad_ids = bad.ids[:bad.n_prompt]
    if len(bad_ids) != len(clean_ids):
        n_frame = len(example.frame)
        raise CandorError(f"--corrupt must tokenize to as many tokens as --prompt ({len(clean_ids) - n_frame} without "
                          f"{', '.join(example.labels[i] for i in example.frame) or 'specials'}); {corrupt!r} has "
                          f"{len(bad_ids) - len(bad.frame)}: {' | '.join(bad.labels[:bad.n_prompt])}. "
                          f"Change the corrupted prompt (e.g. swap one word for another of the same length)")
    device = subject.device
    clean = torch.tensor([clean_ids], device=device)
    corrupted = torch.tensor([bad_ids], device=device)
    extra = model_inputs(clean, example)[1:]
    # A decoder's clean run stops at the prompt: only the first target token is predicted there.
    positions = example.target_positions[:1] if subject.arch == "decoder" else example.target_positions
    with torch.no_grad():
        bad_logits = patching._run(model, corrupted, extra)[0]
    metric, metric_name = None, ""
    for pos, good in zip(positions, example.target_ids):
        other = _best_token(bad_logits[pos], tok.special_ids)
        if other != good:  # the first explained position whose answer the corruption changes
            metric = patching.logit_difference(pos, good, other)
            metric_name = f"logit({_one(tok, good)}) - logit({_one(tok, other)}) at {_where(subject, pos)}"
            break
    if metric is None:  # the corruption did not change the answer: measure its log-probability instead
        pos, good = positions[0], example.target_ids[0]
        metric = lambda logits: torch.log_softmax(logits[:, pos].float(), -1)[:, good]  # noqa: E731
        metric_name = f"log p({_one(tok, good)}) at {_where(subject, pos)} (the corrupted prompt predicts it too)"
    labels = [c if c == b else f"{b}→{c}" for c, b in zip(example.labels[:len(clean_ids)], bad.labels)]
    if subject.arch == "seq2seq":
        streams = [("encoder", "the encoder's residual stream", "encoder.", labels),
                   ("decoder", "the decoder's residual stream", "", list(example.decoder_labels))]
        n_enc, n_dec = len(model.encoder.blocks), len(model.blocks)
        head_groups = [("encoder", "encoder self-attention", [f"encoder.blocks.{i}.attn.hook_z" for i in range(n_enc)]),
                       ("decoder", "decoder self-attention", [f"blocks.{i}.attn.hook_z" for i in range(n_dec)]),
                       ("cross", "cross-attention", [f"blocks.{i}.cross_attn.hook_z" for i in range(n_dec)])]
    else:
        streams = [("residual", "the residual stream", "", labels)]
        head_groups = [("heads", "attention", None)]
    residual, heads = [], []
    for name, title, prefix, columns in streams:
        result = patching.patch_residual(model, clean, corrupted, metric, prefix=prefix, extra=extra)
        file = "patching-residual.png" if len(streams) == 1 else f"patching-residual-{name}.png"
        xlabel = "position (corrupted → clean)" if columns is labels else "decoder position (same in both runs)"
        wrote(plots.patching_png(result.effect.numpy(), result.rows, columns, f"restoring {title}: {metric_name}",
                                 xlabel, out_dir / file))
        residual.append({"name": name, "title": f"restoring {title}", "rows": result.rows, "columns": columns,
                         "effect": np.round(result.effect.numpy(), 4).tolist()})
    for name, title, names in head_groups:
        result = patching.patch_heads(model, clean, corrupted, metric, names=names, extra=extra)
        file = "patching-heads.png" if len(head_groups) == 1 else f"patching-heads-{name}.png"
        wrote(plots.patching_png(result.effect.numpy(), result.rows,
                                 [str(h) for h in range(result.effect.shape[1])],
                                 f"restoring one {title} head's output (all positions)", "head", out_dir / file))
        heads.append({"name": name, "title": f"restoring one {title} head's output", "rows": result.rows,
                      "effect": np.round(result.effect.numpy(), 4).tolist()})
    return {"corrupt": corrupt, "corrupt_tokens": bad.labels[:bad.n_prompt], "position_labels": labels,
            "metric": metric_name, "clean_metric": result.clean, "corrupted_metric": result.corrupted,
            "residual": residual, "heads": heads}


def _best_token(logits: torch.Tensor, banned: frozenset[int]) -> int:
    logits = logits.float().clone()
    if banned:
        logits[list(banned)] = float("-inf")
    return int(logits.argmax())


def _where(subject: Subject, pos: int) -> str:
    if subject.arch == "seq2seq":
        return f"decoder position {pos}"
    return "the last position" if subject.arch == "decoder" else f"the masked position {pos}"


def _one(tok: Any, token_id: int) -> str:
    return token_labels(tok, [token_id])[0]


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if np.isnan(v) else float(v) for v in row] for row in a]


def faithfulness_report(run: str | Path, prompts: list[str], ks: tuple[int, ...] = (1, 2), draws: int = 200,
                        ig_steps: int = 32, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Over a prompt set, each explained for the model's own prediction (any architecture, as in
    `explain`): the integrated-gradients completeness error, and the deletion test (top-k
    attributed vs k random tokens) for integrated gradients, gradient x input and a recency
    baseline (latest tokens first). Writes RUN/evals/explain-faithfulness.json."""
    refuse_plain_output_in_sealed_tree(run, "evals/explain-faithfulness.json")
    subject = load_subject(run, device=device)
    model, tok = subject.model, subject.target
    # "recency" is no explanation at all (the latest tokens first): the bar an attribution must
    # clear to say more than "small language models mostly look at the last tokens".
    methods = ("integrated_gradients", "gradient_x_input", "recency")
    rows: list[dict[str, Any]] = []
    deletions: dict[str, dict[int, list]] = {name: {k: [] for k in ks} for name in methods}
    for prompt in prompts:
        example = subject.example(prompt)
        ig = attribution.integrated_gradients(model, example, subject.pad_id, n_steps=ig_steps)
        gxi = attribution.gradient_x_input(model, example)
        row: dict[str, Any] = {"prompt": prompt, "target": _one(tok, example.target_ids[0]),
                               "tokens": len(example.ids), "ig": ig.to_json(), "deletion": {}}
        recency = [float(i) for i in range(len(example.ids))]
        for name, scores in zip(methods, (ig.scores, gxi.scores, recency)):
            for k in ks:
                result = faithfulness.deletion_test(model, example, scores, k, False, draws=draws, seed=seed)
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
