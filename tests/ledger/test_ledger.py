"""The ledger: every run directory's ledger.json, each figure with its method; the estimate's
arithmetic and its memory prediction against a real run; energy readings; the CLI commands."""

import json
import math
import os
from pathlib import Path
import subprocess
import sys
import time

import pytest
import torch

from candorlm.config import resolve
from candorlm.errors import CandorError
from candorlm.ledger.book import ledger, ledger_table, total
from candorlm.ledger.energy import _Rapl, start_energy_meter
from candorlm.ledger.estimate import compute_optimal, estimate, estimate_compute_budget, shape_for_params
from candorlm.ledger.flops import train_flops_per_token
from candorlm.pretrain import train
from tests.conftest import TINY_MODEL, TINY_TRAIN

FIGURES = {"wall_time", "busy_time", "tokens", "tokens_per_s", "flops", "achieved_flops_per_s", "peak_flops_per_s",
           "mfu", "peak_memory", "energy", "co2", "cost"}


# The peak says how it was probed (and where, for a later re-probe); MFU may be only an upper bound.
OPTIONAL = {"peak_flops_per_s": {"probe", "probe_key", "devices"}, "mfu": {"bound"}}


def _every_figure_has_a_method(entry):
    for key, item in entry.items():
        assert {"value", "unit", "method"} <= set(item) <= {"value", "unit", "method", *OPTIONAL.get(key, ())}, key
        assert isinstance(item["method"], str) and len(item["method"]) > 10, (key, item)


def test_every_run_has_a_ledger_whose_figures_name_their_method(trained_run):
    data = ledger(trained_run)
    assert {"train", "evaluate"} <= set(data)
    for kind in ("train", "evaluate"):
        for entry in [data[kind]["total"], *data[kind]["sessions"]]:
            _every_figure_has_a_method(entry)
    train_total = data["train"]["total"]
    assert FIGURES <= set(train_total)
    cfg = resolve(None, None, None, model=dict(TINY_MODEL, vocab_size=512), train=TINY_TRAIN)
    tokens = 30 * TINY_TRAIN["batch_size"] * TINY_TRAIN["seq_len"]
    assert train_total["tokens"]["value"] == tokens
    assert train_total["flops"]["value"] == tokens * train_flops_per_token(cfg.model, TINY_TRAIN["seq_len"])
    assert 0 < train_total["mfu"]["value"] < 1
    assert train_total["peak_memory"]["value"] > 50 * 2**20
    assert train_total["energy"]["value"] > 0 and "codecarbon" in train_total["energy"]["method"]
    assert train_total["co2"]["value"] == pytest.approx(train_total["energy"]["value"] * 0.475)
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["mfu"] < 1 for r in rows if "mfu" in r) and any("mfu" in r for r in rows)
    assert ledger_table(data).row_count >= len(FIGURES)


@pytest.mark.slow
def test_a_resumed_run_replaces_the_sessions_it_trains_again(tmp_path, data_dir):
    run = tmp_path / "r"
    settings = dict(TINY_TRAIN, save_every=3, eval_every=100)
    train(run, data=data_dir, model=TINY_MODEL, max_steps=4, **settings)
    # As if killed after the step-3 checkpoint: the finished session's step 4 will be trained again.
    train(run, data=data_dir, model=TINY_MODEL, max_steps=6, resume=True, **settings)
    sessions = ledger(run)["train"]["sessions"]
    assert [s["steps"]["value"] for s in sessions] == [[0, 4], [4, 6]]
    tokens = 6 * settings["batch_size"] * settings["seq_len"]
    assert ledger(run)["train"]["total"]["tokens"]["value"] == tokens


def test_totals_sum_sessions_and_keep_the_largest_memory():
    def session(wall, tokens, memory):
        f = lambda v, u: {"value": v, "unit": u, "method": "m"}  # noqa: E731
        return {"wall_time": f(wall, "s"), "busy_time": f(wall, "s"), "tokens": f(tokens, "tokens"),
                "flops": f(tokens * 10.0, "FLOP"), "peak_flops_per_s": f(1000.0, "FLOP/s"),
                "peak_memory": f(memory, "bytes"), "cost": f(wall / 100, "USD")}
    out = total([session(10.0, 100, 5), session(30.0, 300, 7)])
    assert out["wall_time"]["value"] == 40.0 and out["tokens"]["value"] == 400
    assert out["peak_memory"]["value"] == 7
    assert out["tokens_per_s"]["value"] == 10.0
    assert out["mfu"]["value"] == pytest.approx(400 * 10.0 / 40.0 / 1000.0)
    assert "sum over 2 sessions" in out["cost"]["method"]


def test_gpu_estimate_arithmetic():
    est = estimate(resolve("base"), tokens=10**9, hardware_name="h100", price_per_hour=2.0, grid_kg_co2_per_kwh=0.5)
    assert est.precision == "bf16" and est.mfu == 0.40 and est.mfu_basis == "assumed"
    assert est.seconds == pytest.approx(est.flops / (989e12 * 0.40))
    assert est.energy_kwh == pytest.approx(700 * est.seconds / 3.6e6)
    assert est.cost == pytest.approx(est.seconds / 3600 * 2.0)
    assert est.co2_kg == pytest.approx(est.energy_kwh * 0.5)
    parts = est.memory
    assert parts["weights"]["bytes"] == parts["gradients"]["bytes"] == parts["optimizer_state"]["bytes"] // 2
    assert est.peak_memory_bytes == sum(p["bytes"] for p in parts.values()) and est.fits


def test_a_tiny_model_on_a_gpu_is_launch_bound_and_says_so():
    from candorlm.ledger.launches import KERNEL_LAUNCH_S, operators_per_step

    cfg = resolve("tiny")
    cfg.model.vocab_size = 8192
    est = estimate(cfg, steps=100, hardware_name="h100")
    ops = operators_per_step(cfg.model, cfg.train.batch_size, cfg.seq_len)
    assert 300 < ops < 400 * (cfg.model.n_layers + 2)  # counted on the meta device: forward, backward, AdamW
    assert est.mfu_basis == "launch-bound" and est.mfu < 0.40 and "at most" in est.mfu_method
    assert est.train_seconds == pytest.approx(100 * ops * KERNEL_LAUNCH_S, rel=1e-6)
    assert f"{ops:,} operators per step" in est.mfu_method and "assumed" in est.mfu_method
    given = estimate(cfg, steps=100, hardware_name="h100", mfu=0.4)
    assert given.mfu_basis == "given" and given.mfu == 0.4


def test_too_big_for_the_device_says_so():
    est = estimate(params=70e9, tokens=10**9, hardware_name="a100")
    assert not est.fits and est.peak_memory_bytes > 16 * 70e9 * 0.95
    assert "70,000,000,000 parameters" in est.notes[0]


def test_chinchilla_optimum():
    opt = compute_optimal(6 * 20 * 1e9**2)  # C = 6 N D with D = 20 N and N = 1e9
    assert opt["params"] == pytest.approx(1e9) and opt["tokens"] == pytest.approx(20e9)
    out = estimate_compute_budget(1e21, "h100")
    assert 6 * out["params"] * out["tokens"] == pytest.approx(1e21)
    with pytest.raises(CandorError):
        estimate_compute_budget(-1, "h100")


def test_shape_for_params_is_close():
    cfg = shape_for_params(125e6)
    from candorlm.ledger.memory import param_count
    assert abs(param_count(cfg) - 125e6) / 125e6 < 0.25


@pytest.mark.slow
def test_estimate_on_this_cpu_measures_mfu_and_adds_up(tmp_path, data_dir):
    """The cpu estimate's calibration and arithmetic, next to a real run of the same shape.
    Predicted against measured time and peak memory (the 25% bar) is bench/estimate_validation.py,
    not a test: it depends on how busy the machine is."""
    sets = ["--set=model.vocab_size=512", "--set=train.batch_size=8"]
    out = subprocess.run([sys.executable, "-m", "candorlm", "estimate", "--preset", "tiny", "--steps", "4",
                          "--hardware", "cpu", "--json", *sets], capture_output=True, text=True, check=True)
    est = json.loads(out.stdout)
    assert 0 < est["mfu"] <= 1 and "measured" in est["mfu_method"]
    assert est["seconds"] == pytest.approx(est["flops"] / (est["peak_flops_per_s"] * est["mfu"]))
    assert est["peak_memory_bytes"] == sum(part["bytes"] for part in est["memory"].values())
    assert est["memory"]["runtime"]["bytes"] > 100 * 2**20 and "measured" in est["memory"]["runtime"]["how"]
    assert "measured" in est["memory"]["workspace"]["how"]  # the calibration's peak, less what is counted
    run = tmp_path / "real"
    subprocess.run([sys.executable, "-m", "candorlm", "train", "--data", str(data_dir), "--preset", "tiny",
                    "--out", str(run), "--max-steps", "4", "--set=train.batch_size=8", "--set=train.eval_tokens=4096"],
                   capture_output=True, text=True, check=True)
    total_ = ledger(run)["train"]["total"]
    assert total_["tokens"]["value"] == est["tokens"]
    assert total_["flops"]["value"] == pytest.approx(est["train_flops"])
    persistent = sum(est["memory"][k]["bytes"] for k in ("weights", "gradients", "optimizer_state", "runtime"))
    assert total_["peak_memory"]["value"] > persistent


def test_energy_fallbacks_name_their_method(tmp_path):
    reading = start_energy_meter(torch.device("cpu"), 2, method="estimate").stop()
    assert reading.kwh >= 0 and reading.method.startswith("estimate: rated power 20 W")
    pkg = tmp_path / "intel-rapl:0"
    pkg.mkdir()
    (pkg / "energy_uj").write_text("999000000\n")
    (pkg / "max_energy_range_uj").write_text("1000000000\n")
    meter = _Rapl([pkg / "energy_uj"])
    (pkg / "energy_uj").write_text("2600000\n")  # wrapped past the range: 1e6 + 2.6e6 microjoules
    assert meter.stop().kwh == pytest.approx(3.6e6 / 3.6e12)


def test_ledger_cli(trained_run, tmp_path):
    out = subprocess.run([sys.executable, "-m", "candorlm", "ledger", str(trained_run)], capture_output=True,
                         text=True, check=True).stdout
    assert "mfu" in out and "energy" in out and "train" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.toml").write_text("")
    res = subprocess.run([sys.executable, "-m", "candorlm", "ledger", str(empty)], capture_output=True, text=True)
    assert res.returncode == 2 and "no ledger.json" in res.stderr + res.stdout
    res = subprocess.run([sys.executable, "-m", "candorlm", "estimate", "--compute-budget", "1e21", "--hardware",
                          "h100", "--json"], capture_output=True, text=True, check=True)
    data = json.loads(res.stdout)
    assert {"flops", "seconds", "peak_memory_bytes", "energy_kwh", "cost", "co2_kg", "params", "tokens"} <= set(data)
    assert math.isclose(data["params"], math.sqrt(1e21 / 120))


def test_generate_adds_a_session_to_the_ledger(trained_run, tmp_path):
    import shutil

    from candorlm.ledger.flops import generation_flops
    from candorlm.ledger.usage import metered_generation
    from candorlm.lm import load
    from candorlm.privacy.integrity import verify

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    subprocess.run([sys.executable, "-m", "candorlm", "generate", str(run), "--prompt", "今天", "--prompt", "人民",
                    "--max-new-tokens", "12", "--greedy"], capture_output=True, text=True, check=True)
    lm = load(run)
    with metered_generation(lm, run) as usage:
        lm.generate("经济", max_new_tokens=5, greedy=True, stop=["\n\n\n\n"])
    sessions = ledger(run)["generate"]["sessions"]
    assert len(sessions) == 2 and sessions[0]["sequences"]["value"] == 2
    for entry in sessions:
        _every_figure_has_a_method(entry)
        assert 0 < entry["tokens"]["value"] <= entry["sequences"]["value"] * 12
        assert entry["tokens_per_s"]["value"] > 0 and entry["energy"]["value"] > 0
    prompt = len(lm.encode_prompt("经济"))
    assert usage.prompt_tokens == prompt and 1 <= usage.new_tokens <= 5
    assert sessions[1]["flops"]["value"] == generation_flops(lm.model.cfg, prompt, usage.new_tokens)
    assert ledger(run)["train"]["total"]["tokens"]["value"] > 0  # training's sessions are kept
    assert verify(run).ok  # the run's SHA256SUMS was updated with the ledger


def test_generate_on_an_encrypted_run_leaves_its_ledger_sealed_and_says_why(trained_run, tmp_path):
    from candorlm.io.sealed import resolve_key
    from candorlm.privacy.crypto import encrypt_path, write_key_file
    from candorlm.privacy.integrity import verify

    key_file = write_key_file(tmp_path / "run.key")
    enc = tmp_path / "enc"
    encrypt_path(trained_run, enc, resolve_key(key_file))
    before = {p.name: p.read_bytes() for p in enc.iterdir() if p.is_file()}
    done = subprocess.run([sys.executable, "-m", "candorlm", "generate", str(enc), "--prompt", "今天",
                           "--max-new-tokens", "4", "--greedy", "--key-file", str(key_file)],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 0, done.stderr
    assert "damaged" not in done.stderr
    assert "is encrypted, so this generation is not added to its ledger.json" in done.stderr
    assert {p.name: p.read_bytes() for p in enc.iterdir() if p.is_file()} == before  # nothing rewritten
    assert verify(enc).ok


# ---------------------------------------------------------------- an MFU that can be trusted


@pytest.fixture
def fake_probe(tmp_path, monkeypatch):
    """The peak probe with a machine we control: `state["busy"]` says whether other work shares the
    CPU, a busy probe reads low (200) and a quiet one high (800); the cache lives in tmp_path."""
    from candorlm.ledger import hardware

    state = {"busy": True, "probes": 0}

    def probe(dtype, device, size, seconds):
        state["probes"] += 1
        return 200e9 if state["busy"] else 800e9

    monkeypatch.setattr(hardware, "CACHE", tmp_path / "peak.json")
    monkeypatch.setattr(hardware, "_probe", probe)
    monkeypatch.setattr(hardware, "_busy", lambda device, interval=0.3: state["busy"])
    monkeypatch.setattr(hardware, "_THIS_PROCESS", {})
    state["new_process"] = lambda: hardware._THIS_PROCESS.clear()
    return state


def test_a_busy_probe_is_kept_as_busy_and_probed_again_when_quiet(fake_probe):
    from candorlm.ledger.hardware import measured_peak

    busy = measured_peak("bf16")
    assert (busy.flops, busy.quiet, fake_probe["probes"]) == (200e9, False, 2)
    assert measured_peak("bf16") is busy and fake_probe["probes"] == 2  # once per process
    fake_probe["new_process"]()
    assert measured_peak("bf16").quiet is False and fake_probe["probes"] == 2  # still busy: no point probing
    fake_probe["busy"] = False
    fake_probe["new_process"]()
    quiet = measured_peak("bf16")
    assert (quiet.flops, quiet.quiet, fake_probe["probes"]) == (800e9, True, 4)
    fake_probe["busy"] = True  # a later busy probe can never lower the cached best nor unmark it quiet
    fake_probe["new_process"]()
    assert measured_peak("bf16") == quiet and fake_probe["probes"] == 4
    saved = json.loads(Path(measured_peak.__globals__["CACHE"]).read_text())
    assert list(saved.values()) == [{"flops": 800e9, "quiet": True}]


def test_old_cache_entries_are_read(fake_probe, tmp_path):
    from candorlm.ledger import hardware

    key = hardware.peak_key("fp32", torch.device("cpu"))
    (tmp_path / "peak.json").write_text(json.dumps({key: 123e9}))  # the first format: load unknown
    assert hardware.measured_peak("fp32") == hardware.Peak(123e9, False, key)
    (tmp_path / "peak.json").write_text(json.dumps({key: {"flops": 321e9, "busy": False}}))
    fake_probe["new_process"]()
    assert hardware.measured_peak("fp32") == hardware.Peak(321e9, True, key) and fake_probe["probes"] == 0


def test_mfu_against_a_busy_peak_is_an_upper_bound_in_the_ledger(fake_probe):
    from candorlm.ledger.meter import Meter
    from candorlm.ledger.training import ledger_summary

    meter = Meter("train", torch.device("cpu"), "bf16", energy="none").start()
    meter.count(1000, 50e9)
    meter.busy_s = 1.0
    entry = meter.finish("analytic")
    assert entry["peak_flops_per_s"]["probe"] == "busy" and "understated" in entry["peak_flops_per_s"]["method"]
    assert entry["mfu"]["value"] == pytest.approx(0.25) and entry["mfu"]["bound"] == "upper"
    assert "upper bound" in entry["mfu"]["method"]
    out = total([entry])  # the ledger's total keeps the bound
    assert out["mfu"]["bound"] == "upper"
    assert "at most 25.0%" in ledger_summary(out)
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(ledger_table({"train": {"total": out}}))
    assert "at most 25.0%" in console.export_text()
    # A quiet probe makes it a plain figure.
    fake_probe["busy"] = False
    fake_probe["new_process"]()
    meter = Meter("train", torch.device("cpu"), "bf16", energy="none").start()
    meter.count(1000, 50e9)
    meter.busy_s = 1.0
    quiet = meter.finish("analytic")
    assert quiet["peak_flops_per_s"]["probe"] == "quiet" and "bound" not in quiet["mfu"]
    assert quiet["mfu"]["value"] == pytest.approx(50e9 / 800e9)


def test_the_report_card_probes_again_or_says_at_most(fake_probe):
    from candorlm.ledger.hardware import measured_peak, peak_key
    from candorlm.report.compute import mfu_figure

    measured_peak("bf16")  # the run's probe, beside other work
    key = peak_key("bf16", torch.device("cpu"))
    train_total = {"mfu": {"value": 0.25, "unit": "fraction", "method": "m", "bound": "upper"},
                   "peak_flops_per_s": {"value": 200e9, "unit": "FLOP/s", "method": "m", "probe": "busy",
                                        "probe_key": key}}
    fake_probe["new_process"]()
    still_busy = mfu_figure(train_total)
    assert still_busy["bound"] == "upper" and still_busy["value"] == 0.25 and "at most" in still_busy["note"]
    fake_probe["busy"] = False  # the report is made on a quiet machine: it probes again
    fake_probe["new_process"]()
    again = mfu_figure(train_total)
    assert "bound" not in again and again["value"] == pytest.approx(0.25 * 200 / 800)
    assert "probed again" in again["method"]
    elsewhere = dict(train_total, peak_flops_per_s=dict(train_total["peak_flops_per_s"], probe_key="Other CPU|bf16|"
                                                          "threads=2|torch=0"))
    assert mfu_figure(elsewhere)["bound"] == "upper"  # another machine's peak cannot be probed here


def _tiny_train_args(data: Path, out: Path, max_steps: int, **settings) -> list[str]:
    """`candorlm train` arguments for the tests' tiny model and settings (`settings` override)."""
    sets = {**{f"model.{k}": v for k, v in TINY_MODEL.items()},
            **{f"train.{k}": v for k, v in {**TINY_TRAIN, **settings}.items()}}
    return ["train", "--data", str(data), "--out", str(out), "--max-steps", str(max_steps),
            *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]


def _last_logged_step(run: Path) -> int:
    rows = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    return json.loads(rows[-1])["step"] if rows and rows[-1].endswith("}") else 0


@pytest.mark.slow
def test_the_ledger_counts_what_was_trained_after_two_kill_9s(tmp_path, data_dir):
    from tests.cli.test_interrupts import start

    run, steps, log_every = tmp_path / "r", 60, 2
    # Checkpoints on log steps: the ledger then matches exactly (else within one log interval).
    args = _tiny_train_args(data_dir, run, steps, log_every=log_every, save_every=6, eval_every=10)
    for kill_after in (12, 30):  # steps logged before the kill; each time past a new checkpoint
        proc = start(*args, *(["--resume"] if run.exists() else []), cwd=tmp_path)
        while proc.poll() is None and _last_logged_step(run) < kill_after:
            time.sleep(0.01)
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode == -9, "the training ended before it could be killed"
        killed = ledger(run)["train"]["total"]["steps"]["value"]
        assert kill_after <= killed <= kill_after + 2 * log_every  # recorded as it trained, not at the end
    subprocess.run([sys.executable, "-m", "candorlm", *args, "--resume"], check=True, capture_output=True,
                   env={**os.environ, "CANDORLM_PROGRESS": "0"})
    data = ledger(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tokens_per_step = TINY_TRAIN["batch_size"] * TINY_TRAIN["seq_len"]
    total = data["train"]["total"]
    assert total["steps"]["value"] == steps == rows[-1]["step"]  # a plain number: steps trained once each
    assert total["tokens"]["value"] == rows[-1]["tokens_seen"] == steps * tokens_per_step
    spans = [s["steps"]["value"] for s in data["train"]["sessions"]]
    assert len(spans) == 3 and spans[0][0] == 0 and spans[-1][1] == steps
    assert all(a < b for a, b in spans) and all(spans[i][1] <= spans[i + 1][0] for i in range(2))
