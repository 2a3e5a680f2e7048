"""The training run's meter: the trainer starts it, tells it when it evaluates or saves, and
finishes it; it writes the session into ledger.json (kinds `train` and `evaluate`).

A run of several processes (torchrun) is one session: every rank meters its own device, and
`finish` sums their device time, energy and money, takes the longest wall time and the largest
peak memory, and counts the FLOPs of all ranks against the peak of all their devices."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from candorlm.config import RunConfig
from candorlm.ledger.book import record_sessions
from candorlm.ledger.flops import forward_flops_per_token, train_flops_per_token
from candorlm.ledger.meter import Meter, Prices, figure, mfu_figure
from candorlm.training.loop import Callback, Loop, LoopResult

log = logging.getLogger("candorlm")

_SHARED = ("energy", "co2", "cost")


@dataclass
class Ranks:
    """The processes of a run, as the ledger sees them; one process by default."""

    size: int = 1
    is_main: bool = True  # writes ledger.json
    node_leader: bool = True  # local rank 0: counts a node-wide power meter (RAPL) once per node
    reduce: Callable[[list[float], str], list[float]] | None = None  # all-reduce figures: "sum" or "max"


class TrainingMeter:
    def __init__(self, config: RunConfig, device: torch.device, precision: str, threads: int | None,
                 first_step: int, n_params: int, ranks: Ranks | None = None):
        lc = config.ledger
        self.meter = Meter("train", device, precision, threads=threads, peak_tflops=lc.peak_tflops, energy=lc.energy,
                           prices=Prices(lc.price_per_hour, lc.currency, lc.grid_kg_co2_per_kwh))
        self.seq_len = config.seq_len
        self.train_fpt = train_flops_per_token(config.model, self.seq_len)
        self.eval_fpt = forward_flops_per_token(config.model, self.seq_len)
        t = config.train
        self.ranks = ranks or Ranks()
        self.tokens_per_step = t.batch_size * t.grad_accum * self.seq_len * self.ranks.size
        self.first_step = first_step
        self.n_params = n_params
        self.eval_s = self.save_s = 0.0
        self.eval_tokens = 0
        self.session_id = uuid.uuid4().hex[:12]

    def start(self) -> "TrainingMeter":
        # The peak is probed before the clock starts and before this run loads the CPU itself.
        if self.ranks.size > 1 and self.ranks.reduce is not None:
            # Rank 0 probes (with the CPU to itself) and the others take its figure: a probe per
            # rank would share the cores and read low, and would keep the ranks apart for
            # however long the local cache and load made it run.
            mine = self.meter.peak() if self.ranks.is_main else {"value": 0.0}
            value, quiet = self.ranks.reduce([float(mine["value"]), float(mine.get("probe") == "quiet")], "sum")
            if not self.ranks.is_main:
                self.meter.use_peak(dict(figure(value, "FLOP/s", "rank 0's probe of the same device"),
                                         probe="quiet" if quiet else "busy"))
        self._peak = self.meter.peak()["value"]
        self.meter.start()
        return self

    def mfu(self, tokens_per_s: float) -> float:
        """MFU of a training throughput (of all ranks together), for metrics.jsonl."""
        return tokens_per_s * self.train_fpt / (self._peak * self.ranks.size)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.eval_s += time.perf_counter() - start

    def count_eval(self, tokens: int) -> None:
        self.eval_tokens += tokens

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.save_s += time.perf_counter() - start

    def log(self, run_dir: Path, step: int, resumed: bool) -> None:
        """Record the session so far in run_dir/ledger.json (the trainer calls this at each log
        interval, on every rank): a process killed with -9 leaves its session counted up to its
        last log step, and `--resume` then keeps what the checkpoint it resumes from holds."""
        self._record(run_dir, step, resumed, final=False)

    def finish(self, run_dir: Path, step: int, resumed: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Close the session, write it into run_dir/ledger.json; returns the train total. `extra`:
        more figures of the session (a time budget's budget against actual)."""
        return self._record(run_dir, step, resumed, final=True, extra=extra)

    def _record(self, run_dir: Path, step: int, resumed: bool, final: bool,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        tokens = (step - self.first_step) * self.tokens_per_step
        m = self.meter
        m.tokens, m.flops = tokens, float(tokens * self.train_fpt)  # set, not added: this runs at every log step
        wall = time.perf_counter() - m._start
        m.busy_s = max(wall - self.eval_s - self.save_s, 1e-9)
        flops_method = (f"analytic: {self.train_fpt:,} FLOP per training token (candorlm.ledger.flops: 6 x matmul "
                        f"weights + attention at sequence length {self.seq_len}) x tokens trained")
        steps = figure([self.first_step, step], "steps", "optimizer steps of this session (from, to)")
        figures = {
            "steps": steps,
            "parameters": figure(self.n_params, "parameters", "model.num_params()"),
            "eval_time": figure(round(self.eval_s, 3), "s", "wall time of periodic evaluation, within wall time"),
            "save_time": figure(round(self.save_s, 3), "s", "wall time of checkpoint saving, within wall time"),
            "session": figure(self.session_id, "", "this session's id: its record is rewritten at each log interval "
                              "while it trains" + ("" if final else "; it has not finished (yet, or it was killed)")),
            **(extra or {}),
        }
        session = m.finish(flops_method, figures) if final else m.snapshot(flops_method, figures)
        if self.ranks.size > 1:
            session, wall = self._sum_ranks(session)
        else:
            session["device_time"] = figure(session["wall_time"]["value"], "s", "wall time x 1 process (device-seconds)")
        evaluation = self._evaluation_session(session, steps, wall)
        # The session's energy, money and CO2 are split between training and evaluation by time.
        train_share = (wall - self.eval_s) / wall if wall > 0 else 1.0
        for key in _SHARED:
            if key in session:
                session[key] = dict(session[key], value=session[key]["value"] * train_share,
                                    method=session[key]["method"] + f"; x {train_share:.3f}, the session's time "
                                    f"not spent evaluating")
        if not self.ranks.is_main:
            return session
        kinds = {"train": session} if evaluation is None else {"train": session, "evaluate": evaluation}
        data = record_sessions(run_dir, kinds, replace_after_step=self.first_step if resumed else None)
        return data["train"]["total"]

    def _sum_ranks(self, session: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Every rank's session into one (all ranks call this): device time, energy and money
        summed, wall time and peak memory the largest, the peak FLOP/s that of all devices."""
        r, m = self.ranks, self.meter
        assert r.reduce is not None
        n = r.size
        energy = session.get("energy", {}).get("value")
        # A node-wide meter (RAPL) sees every rank on its node: count it on one rank per node.
        mine = 0.0 if energy is None or (m.energy_node_wide and not r.node_leader) else energy
        wall_sum, energy_sum, cost_sum = r.reduce([session["wall_time"]["value"], mine, session["cost"]["value"]], "sum")
        wall, busy, memory, eval_s, save_s = r.reduce(
            [session["wall_time"]["value"], session["busy_time"]["value"], session["peak_memory"]["value"],
             self.eval_s, self.save_s], "max")
        self.eval_s, self.save_s = eval_s, save_s
        peak = session["peak_flops_per_s"]["value"] * n
        flops = session["flops"]["value"]
        out = dict(session)

        def summed(key: str, value: float, unit: str, how: str) -> None:
            out[key] = figure(value, unit, f"{session[key]['method']}; {how}")

        out["device"] = dict(session["device"], method=session["device"]["method"] + f"; x {n} processes")
        summed("wall_time", round(wall, 3), "s", f"the longest of {n} processes")
        out["device_time"] = figure(round(wall_sum, 3), "s", f"wall time summed over {n} processes (device-seconds)")
        summed("busy_time", round(busy, 3), "s", f"the longest of {n} processes")
        out["tokens_per_s"] = figure(round(session["tokens"]["value"] / busy, 1), "tokens/s",
                                     f"tokens of all {n} processes / busy time")
        out["achieved_flops_per_s"] = figure(round(flops / busy), "FLOP/s", f"flops of all {n} processes / busy time")
        summed("peak_flops_per_s", round(peak), "FLOP/s", f"x {n} devices")
        out["peak_flops_per_s"].update({k: session["peak_flops_per_s"][k] for k in ("probe", "probe_key")
                                        if k in session["peak_flops_per_s"]}, devices=n)
        out["mfu"] = mfu_figure(flops / busy, out["peak_flops_per_s"], "achieved FLOP/s / peak FLOP/s of all devices")
        summed("peak_memory", int(memory), "bytes", f"the largest of {n} processes")
        out["eval_time"] = figure(round(eval_s, 3), "s", f"wall time of periodic evaluation, the longest of {n} processes")
        out["save_time"] = figure(round(save_s, 3), "s", f"wall time of checkpoint saving, the longest of {n} processes")
        if energy is not None:
            how = ("counted once per node (a node-wide meter)" if m.energy_node_wide
                   else f"summed over {n} processes")
            summed("energy", energy_sum, "kWh", how)
            grid, grid_method = m.prices.grid()
            out["co2"] = figure(energy_sum * grid, "kg CO2e", f"energy x {grid_method}")
        summed("cost", round(cost_sum, 6), session["cost"]["unit"], f"summed over {n} processes")
        return out, wall

    def _evaluation_session(self, session: dict[str, Any], steps: dict[str, Any], wall: float) -> dict[str, Any] | None:
        if not self.eval_tokens:
            return None
        share = self.eval_s / wall if wall > 0 else 0.0
        # With several processes every rank scores the same validation windows.
        flops = self.eval_tokens * self.eval_fpt * self.ranks.size
        out: dict[str, Any] = {
            "steps": steps,
            "session": session["session"],
            "wall_time": figure(round(self.eval_s, 3), "s", "time.perf_counter around each evaluation"),
            "busy_time": figure(round(self.eval_s, 3), "s", "same as wall time"),
            "tokens": figure(self.eval_tokens, "tokens", "validation tokens scored"),
            "tokens_per_s": figure(round(self.eval_tokens / max(self.eval_s, 1e-9), 1), "tokens/s", "tokens / wall time"),
            "flops": figure(float(flops), "FLOP", f"analytic: {self.eval_fpt:,} forward FLOP per token x tokens"
                            + (f" x {self.ranks.size} processes (each scores the same windows)" if self.ranks.size > 1 else "")),
            "achieved_flops_per_s": figure(round(flops / max(self.eval_s, 1e-9)), "FLOP/s", "flops / wall time"),
            "peak_flops_per_s": session["peak_flops_per_s"],
            "mfu": mfu_figure(flops / max(self.eval_s, 1e-9), session["peak_flops_per_s"]),
            "peak_memory": session["peak_memory"],
        }
        for key in _SHARED:
            if key in session:
                out[key] = dict(session[key], value=session[key]["value"] * share,
                                method=session[key]["method"] + f"; x {share:.3f}, the session's time spent evaluating")
        return out


class LedgerMeter(Callback):
    """The meter attached to the training loop (training/loop.py): started before the first step,
    told of each evaluation and save, finished (and written into ledger.json) at the end. Every
    rank runs it at the same points, so its sums over ranks line up."""

    def __init__(self, config: RunConfig, run_dir: Path, *, device: torch.device, precision: str,
                 threads: int | None, n_params: int, resumed: bool, node_leader: bool = True,
                 extra: Callable[[], dict[str, Any] | None] | None = None) -> None:
        self.config, self.run_dir, self.device, self.precision = config, run_dir, device, precision
        self.threads, self.n_params, self.resumed, self.node_leader = threads, n_params, resumed, node_leader
        self.extra = extra  # more figures for the session at the end (a time budget's record)
        self.meter: TrainingMeter | None = None

    def on_start(self, loop: Loop) -> None:
        a = loop.agree
        ranks = Ranks(size=a.size, is_main=a.is_main, node_leader=self.node_leader,
                      reduce=a.reduce if a.distributed else None)
        self.meter = TrainingMeter(self.config, self.device, self.precision, self.threads, loop.step, self.n_params,
                                   ranks).start()

    def on_log(self, loop: Loop, row: dict[str, Any]) -> None:
        assert self.meter is not None
        if "tokens_per_s" in row:
            row["mfu"] = round(self.meter.mfu(row["tokens_per_s"]), 6)
        self.meter.log(self.run_dir, loop.step, resumed=self.resumed)  # the session so far: survives kill -9

    def on_evaluate(self, loop: Loop, scores: dict[str, Any], row: dict[str, Any], seconds: float) -> None:
        assert self.meter is not None
        self.meter.eval_s += seconds
        self.meter.count_eval(scores["tokens"])

    def on_save(self, loop: Loop, seconds: float) -> None:
        assert self.meter is not None
        self.meter.save_s += seconds

    def on_end(self, loop: Loop, result: LoopResult) -> None:
        assert self.meter is not None
        result.extra["ledger"] = self.meter.finish(self.run_dir, loop.step, resumed=self.resumed,
                                                   extra=self.extra() if self.extra else None)
        log.info("ledger: %s", ledger_summary(result.extra["ledger"]))


def ledger_summary(total: dict[str, Any]) -> str:
    """One line for the end of training: time, throughput, MFU, memory, energy, money, CO2."""
    def v(key: str) -> Any:
        return total.get(key, {}).get("value")

    bound = total.get("mfu", {}).get("bound") == "upper"
    mfu = f"MFU at most {v('mfu'):.1%} (peak probed only beside other work)" if bound else f"MFU {v('mfu'):.1%}"
    parts = [f"{v('wall_time'):,.0f} s", f"{v('tokens_per_s'):,.0f} tokens/s", f"{v('flops'):.3g} FLOP",
             mfu, f"peak memory {v('peak_memory') / 2**20:,.0f} MiB"]
    if v("energy") is not None:
        parts.append(f"{v('energy') * 1000:.3g} Wh")
        parts.append(f"{v('co2') * 1000:.3g} g CO2e")
    parts.append(f"{v('cost'):.4f} {total.get('cost', {}).get('unit', '')}")
    return ", ".join(parts) + " (candorlm ledger RUN for methods)"
