"""The Privacy section: what was scrubbed before training, what the memorization audit found
(evals/privacy.json), and the differential-privacy budget spent (dp.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from candorlm.config import RunConfig
from candorlm.report.section import fig, finish, load, missing, new_section, table
from candorlm.report.units import percent
from candorlm.rundir import RunDir


def privacy_section(run: RunDir, config: RunConfig) -> dict[str, Any]:
    s = new_section("privacy", "Privacy")
    data_dir = Path(config.data.path) if config.data.path else None
    scrub = load(data_dir / "scrub_report.json") if data_dir else None
    if scrub:
        counts = {t: n for t, n in scrub.get("counts", {}).items() if n}
        s["figures"].append(fig("personal data replaced before training", sum(counts.values()), "spans",
                                f"{data_dir}/scrub_report.json", note="names, phone numbers, IDs and the like found "
                                "in the corpus and replaced before the model saw it"))
        s["tables"].append(table(f"scrubbed with operator '{scrub.get('operator')}'", ["type", "replaced"],
                                 [[t, n] for t, n in counts.items()] or [["none", 0]]))
    else:
        missing(s, "the training data was not scrubbed (no scrub_report.json in its data directory)",
                "candorlm prepare CORPUS --out DATA --scrub")
    audit = load(run.evals / "privacy.json")
    if audit:
        _audit_part(s, audit)
    else:
        missing(s, "canary exposure, extraction, membership inference (evals/privacy.json)",
                f"candorlm audit {run.path}")
    dp = load(run.path / "dp.json")
    if dp:
        s["figures"].append(fig("DP epsilon spent", dp["epsilon_spent"], f"epsilon (delta {dp['delta']:.2g})", "dp.json",
                                note="a proven bound on what any one training example can change; smaller is "
                                     "more private (1-8 is common)"))
    else:
        missing(s, "differential privacy: trained without DP-SGD, so no epsilon bound",
                "candorlm train ... --dp-epsilon 8")
    if audit or scrub or dp:
        parts = []
        if audit:
            auc = audit["membership"]["auc"]
            parts.append(f"membership-inference AUC {auc:.2f} ({_auc_words(auc)})")
            parts.append(f"{percent(audit['extraction']['train']['exact_rate'])} of training prefixes extracted")
        parts.append(f"DP epsilon {dp['epsilon_spent']:.3g}" if dp else "no differential-privacy guarantee")
        s["summary"] = "; ".join(parts) + "."
    return finish(s)


def _auc_words(auc: float) -> str:
    if auc < 0.55:
        return "an attacker can hardly tell training documents from unseen ones"
    if auc < 0.7:
        return "an attacker tells training documents from unseen ones somewhat better than chance"
    return "an attacker tells training documents from unseen ones well: the model memorized"


def _audit_part(s: dict[str, Any], audit: dict[str, Any]) -> None:
    ex, mi, pii = audit["extraction"], audit["membership"], audit["pii_regurgitation"]
    prefix = ex.get("prefix_tokens")
    s["figures"] += [
        fig("extraction rate, training documents", ex["train"]["exact_rate"], "fraction", "evals/privacy.json",
            note=f"of {ex['train']['documents']} training documents, the share whose continuation the model "
                 f"reproduced verbatim from {prefix} tokens of prefix"),
        fig("extraction rate, held-out documents", ex["heldout"]["exact_rate"], "fraction", "evals/privacy.json",
            note="the same for documents it never saw: the level that needs no memorization"),
        fig("membership-inference AUC", mi["auc"], "", "evals/privacy.json",
            note=f"0.5: an attacker ({mi.get('attack', 'loss threshold')}) cannot tell the "
                 f"{mi.get('train_documents')} training documents from the {mi.get('heldout_documents')} held-out "
                 f"ones; 1.0: always can"),
        fig("personal data in generations, verbatim from training", pii["in_training_data"], "values",
            "evals/privacy.json", note=f"in {pii.get('generations')} sampled generations"),
    ]
    if audit.get("canaries"):
        s["tables"].append(table(
            "canary exposure (bits; log2 of the candidate space is the maximum)",
            ["repeats", "canaries", "mean exposure (bits)", "extracted"],
            [[r, v["canaries"], v["mean_exposure"], v["extracted"]] for r, v in audit["canaries"]["by_repeats"].items()],
            note="Random secrets planted in the training data that often: high exposure means the model ranks the "
                 "real secret above most random candidates, i.e. it memorized it."))
    else:
        missing(s, "canary exposure (no canaries were planted)",
                "candorlm prepare CORPUS --out DATA --canaries 4 --repeats 1,10,100, then train and audit")
