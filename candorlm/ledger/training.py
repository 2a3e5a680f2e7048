"""The training run's meter: the trainer starts it, tells it when it evaluates or saves, and
finishes it; it writes the session into ledger.json (kinds `train` and `evaluate`)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from candorlm.config import RunConfig
from candorlm.ledger.book import record
from candorlm.ledger.flops import forward_flops_per_token, train_flops_per_token
from candorlm.ledger.meter import Meter, Prices, figure

_SHARED = ("energy", "co2", "cost")


class TrainingMeter:
    def __init__(self, config: RunConfig, device: torch.device, precision: str, threads: int | None,
                 first_step: int, n_params: int):
        lc = config.ledger
        self.meter = Meter("train", device, precision, threads=threads, peak_tflops=lc.peak_tflops, energy=lc.energy,
                           prices=Prices(lc.price_per_hour, lc.currency, lc.grid_kg_co2_per_kwh))
        self.seq_len = config.seq_len
        self.train_fpt = train_flops_per_token(config.model, self.seq_len)
        self.eval_fpt = forward_flops_per_token(config.model, self.seq_len)
        t = config.train
        self.tokens_per_step = t.batch_size * t.grad_accum * self.seq_len
        self.first_step = first_step
        self.n_params = n_params
        self.eval_s = self.save_s = 0.0
        self.eval_tokens = 0

    def start(self) -> "TrainingMeter":
        self.meter.start()
        self._peak = self.meter.peak()[0]
        return self

    def mfu(self, tokens_per_s: float) -> float:
        """MFU of a training throughput, for metrics.jsonl."""
        return tokens_per_s * self.train_fpt / self._peak

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

    def finish(self, run_dir: Path, step: int, resumed: bool) -> dict[str, Any]:
        """Close the session, write it into run_dir/ledger.json; returns the train total."""
        tokens = (step - self.first_step) * self.tokens_per_step
        m = self.meter
        m.count(tokens, tokens * self.train_fpt)
        wall = time.perf_counter() - m._start
        m.busy_s = max(wall - self.eval_s - self.save_s, 1e-9)
        flops_method = (f"analytic: {self.train_fpt:,} FLOP per training token (candorlm.ledger.flops: 6 x matmul "
                        f"weights + attention at sequence length {self.seq_len}) x tokens trained")
        steps = figure([self.first_step, step], "steps", "optimizer steps of this session (from, to)")
        session = m.finish(flops_method, extra={
            "steps": steps,
            "parameters": figure(self.n_params, "parameters", "model.num_params()"),
            "eval_time": figure(round(self.eval_s, 3), "s", "wall time of periodic evaluation, within wall time"),
            "save_time": figure(round(self.save_s, 3), "s", "wall time of checkpoint saving, within wall time"),
        })
        evaluation = self._evaluation_session(session, steps, wall)
        # The session's energy, money and CO2 are split between training and evaluation by time.
        train_share = (wall - self.eval_s) / wall if wall > 0 else 1.0
        for key in _SHARED:
            if key in session:
                session[key] = dict(session[key], value=session[key]["value"] * train_share,
                                    method=session[key]["method"] + f"; x {train_share:.3f}, the session's time "
                                    f"not spent evaluating")
        data = record(run_dir, "train", session, replace_after_step=self.first_step if resumed else None)
        if evaluation is not None:
            data = record(run_dir, "evaluate", evaluation, replace_after_step=self.first_step if resumed else None)
        return data["train"]["total"]

    def _evaluation_session(self, session: dict[str, Any], steps: dict[str, Any], wall: float) -> dict[str, Any] | None:
        if not self.eval_tokens:
            return None
        share = self.eval_s / wall if wall > 0 else 0.0
        flops = self.eval_tokens * self.eval_fpt
        peak = session["peak_flops_per_s"]["value"]
        out: dict[str, Any] = {
            "steps": steps,
            "wall_time": figure(round(self.eval_s, 3), "s", "time.perf_counter around each evaluation"),
            "busy_time": figure(round(self.eval_s, 3), "s", "same as wall time"),
            "tokens": figure(self.eval_tokens, "tokens", "validation tokens scored"),
            "tokens_per_s": figure(round(self.eval_tokens / max(self.eval_s, 1e-9), 1), "tokens/s", "tokens / wall time"),
            "flops": figure(float(flops), "FLOP", f"analytic: {self.eval_fpt:,} forward FLOP per token x tokens"),
            "achieved_flops_per_s": figure(round(flops / max(self.eval_s, 1e-9)), "FLOP/s", "flops / wall time"),
            "peak_flops_per_s": session["peak_flops_per_s"],
            "mfu": figure(round(flops / max(self.eval_s, 1e-9) / peak, 6), "fraction", "achieved FLOP/s / peak FLOP/s"),
            "peak_memory": session["peak_memory"],
        }
        for key in _SHARED:
            if key in session:
                out[key] = dict(session[key], value=session[key]["value"] * share,
                                method=session[key]["method"] + f"; x {share:.3f}, the session's time spent evaluating")
        return out


def ledger_summary(total: dict[str, Any]) -> str:
    """One line for the end of training: time, throughput, MFU, memory, energy, money, CO2."""
    def v(key: str) -> Any:
        return total.get(key, {}).get("value")

    parts = [f"{v('wall_time'):,.0f} s", f"{v('tokens_per_s'):,.0f} tokens/s", f"{v('flops'):.3g} FLOP",
             f"MFU {v('mfu'):.1%}", f"peak memory {v('peak_memory') / 2**20:,.0f} MiB"]
    if v("energy") is not None:
        parts.append(f"{v('energy') * 1000:.3g} Wh")
        parts.append(f"{v('co2') * 1000:.3g} g CO2e")
    parts.append(f"{v('cost'):.4f} {total.get('cost', {}).get('unit', '')}")
    return ", ".join(parts) + " (candorlm ledger RUN for methods)"
