"""The Cost and Compute sections: what training cost and how well it used the machine, from
ledger.json and metrics.jsonl; the GPU rows are the ledger's own `estimate`, labelled with the
assumption they rest on and whether that assumption fits a model of this size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from candorlm.config import RunConfig
from candorlm.errors import CandorError
from candorlm.report.section import fig, finish, load, missing, new_section, table, value
from candorlm.report.units import duration, percent, show, si, sig
from candorlm.rundir import RunDir

GPU_PROFILES = ("a100", "h100")


def _ledger_total(run: RunDir) -> dict[str, Any] | None:
    return ((load(run.ledger) or {}).get("train") or {}).get("total")


def cost_section(run: RunDir, config: RunConfig) -> dict[str, Any]:
    s = new_section("cost", "Cost")
    train = _ledger_total(run)
    if not train:
        missing(s, "ledger.json (the cost of training)", f"candorlm train --out {run.path} ... (training writes it)")
        return finish(s)
    src = "ledger.json"
    for key, name in (("flops", "training FLOPs"), ("wall_time", "wall time"), ("energy", "energy"),
                      ("cost", "money"), ("co2", "CO2")):
        if key in train:
            s["figures"].append(fig(name, train[key]["value"], train[key]["unit"], src, method=train[key]["method"]))
    device = train.get("device", {})
    where = device.get("value") if isinstance(device, dict) else device
    parts = [f"Training took {duration(value(train, 'wall_time'))} on {where or 'this machine'}",
             f"{si(value(train, 'flops'), 'FLOP')} of arithmetic"]
    if value(train, "cost") is not None:
        parts.append(f"about {show(value(train, 'cost'), train['cost']['unit'])}")
    if value(train, "co2") is not None:
        parts.append(show(value(train, "co2"), "kg CO2e"))
    s["summary"] = ", ".join(parts) + "."
    rows = [["this run (measured)", value(train, "wall_time"), value(train, "energy"), value(train, "cost"),
             value(train, "co2"), "ledger.json"]]
    note = ""
    try:
        from candorlm.ledger.estimate import estimate

        tokens = int(value(train, "tokens"))
        for hw in GPU_PROFILES:
            est = estimate(config, tokens=tokens, hardware_name=hw)
            basis = "at most, kernel launches bound it" if est.mfu_basis == "launch-bound" else est.mfu_basis
            rows.append([f"{hw.upper()}, at {est.mfu:.1%} MFU ({basis})", est.seconds, est.energy_kwh, est.cost,
                         est.co2_kg, f"candorlm estimate --hardware {hw}"])
        note = gpu_note(est, value(train, "parameters"))
    except (CandorError, ValueError, TypeError) as exc:  # the estimate is an extra: its absence is reported
        missing(s, f"GPU-profile estimate ({exc})", f"candorlm estimate --config {run.config} --hardware h100")
    s["tables"].append(table("the same training run: measured here, and estimated on two GPUs",
                             ["where", "time", "energy", "money", "CO2", "source"], rows,
                             units=["", "s", "kWh", train.get("cost", {}).get("unit", "USD"), "kg CO2e", ""],
                             note=note))
    return finish(s)


def gpu_note(est: Any, parameters: int | None) -> str:
    """What the GPU rows rest on (the estimate's own account of its MFU), and what to make of them."""
    base = (f"The GPU rows are not measurements: they divide this run's FLOPs by the GPU's datasheet peak "
            f"({si(est.peak_flops_per_s, 'FLOP/s')}, bf16) times an MFU.")
    size = f"{parameters:,} parameters" if parameters else "this size"
    if est.mfu_basis == "launch-bound":
        return (f"{base} For a model of {size} that MFU is not the 40% well-tuned training of large models "
                f"reaches: {est.mfu_method}. Read these rows as a lower bound on time, energy and money.")
    return f"{base} Here it is an {est.mfu_method}."


def compute_section(run: RunDir) -> dict[str, Any]:
    s = new_section("compute", "Compute")
    train = _ledger_total(run)
    if train:
        mfu = mfu_figure(train)
        for key, name in (("tokens_per_s", "throughput"), ("mfu", "model FLOPs utilization (MFU)"),
                          ("peak_flops_per_s", "MFU denominator: peak matmul FLOP/s"), ("peak_memory", "peak memory"),
                          ("achieved_flops_per_s", "achieved FLOP/s"), ("tokens", "tokens trained"),
                          ("parameters", "parameters")):
            if key == "mfu" and mfu:
                s["figures"].append(mfu)
            elif key in train and key != "mfu":
                s["figures"].append(fig(name, train[key]["value"], train[key]["unit"], "ledger.json",
                                        method=train[key].get("method", "")))
        text = f"{show(value(train, 'tokens_per_s'))} tokens/s"
        if mfu:
            text += f", MFU {'at most ' if mfu.get('bound') == 'upper' else ''}{percent(mfu['value'])}"
        s["summary"] = text + f", peak memory {show(value(train, 'peak_memory') or 0, 'bytes')}."
    else:
        missing(s, "ledger.json (throughput, MFU, memory)", f"candorlm train --out {run.path} ...")
    curve = read_curve(run.metrics)
    if curve["train"]:
        s["images"].append({"key": "loss_curve", "title": "training and validation loss", "path": None,
                            "caption": loss_caption(curve)})
        if curve["val"]:
            last = curve["val"][-1]
            s["figures"].append(fig("final validation loss", round(last[1], 4), "nats/token", "metrics.jsonl"))
            if last[2] is not None:
                s["figures"].append(fig("final validation bits per byte", round(last[2], 4), "bits/byte",
                                        "metrics.jsonl", note="bits the model needs per byte of held-out text; "
                                        "lower is better"))
    else:
        missing(s, "metrics.jsonl (the loss curve)", f"candorlm train --out {run.path} ...")
    return finish(s)


def mfu_figure(train: dict[str, Any]) -> dict[str, Any] | None:
    """MFU as the card shows it. When the ledger's peak was probed only beside other work, the
    peak is probed again now if this is the same machine and it is quiet; otherwise the figure
    says it is an upper bound, and why."""
    mfu, peak = train.get("mfu"), train.get("peak_flops_per_s")
    if not isinstance(mfu, dict) or mfu.get("value") is None:
        return None
    what = "the share of the device's peak matmul FLOP/s that training achieved"
    out = fig("model FLOPs utilization (MFU)", mfu["value"], "fraction", "ledger.json", method=mfu.get("method", ""))
    if not isinstance(peak, dict) or peak.get("probe") != "busy":
        out["note"] = what + ("" if not isinstance(peak, dict) or peak.get("probe") != "given"
                              else " (against the peak given with --peak-tflops)")
        return out
    from candorlm.ledger.hardware import peak_again

    again = peak_again(peak.get("probe_key", ""))
    devices = peak.get("devices", 1)
    if again is not None and again.quiet and peak.get("value"):
        value_now = mfu["value"] * peak["value"] / (again.flops * devices)
        return fig("model FLOPs utilization (MFU)", round(value_now, 6), "fraction", "ledger.json + a new probe",
                   method=f"achieved FLOP/s from ledger.json / the peak probed again on a quiet CPU when this report "
                          f"was made ({si(again.flops, 'FLOP/s')}); ledger.json's {percent(mfu['value'])} was against "
                          f"a peak probed beside other work",
                   note=what + "; the peak was probed again on a quiet CPU for this report")
    out.update(bound="upper", note=(
        f"at most this: every probe of the peak ({si(peak['value'] / devices, 'FLOP/s')}) ran while other work used "
        f"the CPU, so the peak reads low and MFU high; make this report again on a quiet machine to probe again"))
    return out


def loss_caption(curve: dict[str, list]) -> str:
    """One sentence on the loss curve: where validation went, and what follows."""
    first, last = curve["train"][0], curve["train"][-1]
    text = (f"Loss in nats per token (lower is better) over {last[0]:,} steps: training loss per step in blue, "
            f"validation loss on held-out text in red.")
    val = curve["val"]
    if len(val) < 2:
        return text + f" Training loss went from {sig(first[1])} to {sig(last[1])}."
    (_, v0, _), (s1, v1, _), (s2, v2, _) = val[0], val[-2], val[-1]
    text += f" Validation went from {sig(v0)} to {sig(v2)}"
    recent = v2 - v1
    if recent < -0.005 * abs(v1):
        return text + (f" and was still falling at the end ({recent:+.3f} over the last {s2 - s1:,} steps): "
                       f"more training would likely lower it further.")
    if recent > 0.005 * abs(v1):
        return text + (f" but rose at the end ({recent:+.3f}): the model has started to memorize its training text; "
                       f"stop earlier, add data, or regularize.")
    return text + " and had levelled off: more steps at this size and data would buy little."


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
