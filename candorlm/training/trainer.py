"""The training loop: AdamW, warmup + cosine schedule, accumulation, clipping, bf16 autocast,
periodic evaluation (loss and bits-per-byte), metrics.jsonl, atomic checkpoints, exact resume,
and Ctrl-C that saves before it stops.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from candorlm.checkpoint.retention import latest_checkpoint
from candorlm.checkpoint.run import refuse_encrypted_resume
from candorlm.checkpoint.sharded import export_weights, load_any_checkpoint, save_any_checkpoint
from candorlm.checkpoint.state import set_rng_state
from candorlm.config import RunConfig, build_config, parse_override, resolve
from candorlm.device import autocast, keep_freed_memory, resolve_precision, set_threads, to_device
from candorlm.errors import CandorError
from candorlm.evaluate import evaluate_bpb
from candorlm.io.files import atomic_write_text, set_aside
from candorlm.io.manifest import write_manifest
from candorlm.io.outputs import claim_dir, write_marker
from candorlm.ledger.training import Ranks, TrainingMeter, ledger_summary
from candorlm.model import build_model, lm_loss
from candorlm.progress import progress_bar
from candorlm.rundir import RunDir, looks_like_old_run
from candorlm.shards import BatchSampler, ShardSet
from candorlm.training.agreement import CollectiveFailed
from candorlm.training.budget import DECAYS, NO_LIMIT, TimeBudget, budget_for
from candorlm.training.distributed import World, resumable
from candorlm.training.health import Health
from candorlm.training.objectives import make_objective
from candorlm.training.optim import build_optimizer

log = logging.getLogger("candorlm")


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    interrupted: bool = False
    final_eval: dict[str, float] = field(default_factory=dict)
    tokens_per_s: float = 0.0
    wall_s: float = 0.0
    ledger: dict[str, Any] = field(default_factory=dict)  # this run's training total in ledger.json
    rank: int = 0  # of the process that returns this result, under torchrun


def lr_at(step: int, peak: float, warmup: int, max_steps: int, min_ratio: float, schedule: str = "cosine") -> float:
    """Linear warmup to `peak`, then a decay (cosine, or warmup-stable-decay's) to `peak * min_ratio` at `max_steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return peak * DECAYS[schedule](progress, min_ratio)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _StopFlag:
    """First Ctrl-C asks the loop to save and stop after the current step; a second one aborts.

    Under torchrun a Ctrl-C reaches each worker twice (from the terminal and from torchrun's
    agent), and SIGTERM is how torchrun and SLURM ask workers to stop: there, `signals` includes
    SIGTERM and one repeat within `grace_s` of the first counts as the same request. The agent's
    copy can come seconds late on a loaded machine (a 2 s window once let it abort one rank while
    the other waited in a collective), so the window is wide and only one repeat is absorbed: a
    second Ctrl-C, whose copies make the third and fourth signals, still aborts."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGINT,), grace_s: float = 0.0) -> None:
        self.requested = False
        self.signals, self.grace_s = signals, grace_s
        self._first: float | None = None
        self._absorbed = False
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self._first is not None:
            if not self._absorbed and time.monotonic() - self._first <= self.grace_s:
                self._absorbed = True  # the same request, forwarded by torchrun's agent
                return
            raise KeyboardInterrupt
        self._first = time.monotonic()
        self.requested = True
        log.warning("interrupt: saving a checkpoint after this step (Ctrl-C again to abort without saving)")

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Trainer:
    def __init__(self, config: RunConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False):
        config.check_seq_len()
        if not config.data.path:
            raise CandorError("no training data: give --data DATA_DIR (made by `candorlm prepare`)")
        self.data = ShardSet(config.data.path)
        self.tokenizer = self.data.tokenizer
        vocab = self.tokenizer.vocab_size
        if config.model.vocab_size not in (0, vocab):
            raise CandorError(f"model.vocab_size is {config.model.vocab_size} but the data's tokenizer has {vocab} tokens; "
                              f"leave model.vocab_size unset")
        config = config.model_copy(deep=True)
        config.model.vocab_size = vocab
        self.run = RunDir(Path(out))
        self.replace_existing = False
        self.replaced: Path | None = None  # the run --overwrite replaces, set aside until this one is saved
        self.world = World.from_env(config.train.strategy, config.train.device)  # one process unless under torchrun
        self.agree = self.world.agree
        if config.train.dp_epsilon is not None and self.world.distributed:
            raise CandorError(f"--dp-epsilon trains in one process: its privacy accounting assumes one process drawing "
                              f"Poisson-sampled batches, and clipping and noise across {self.world.world_size} "
                              f"processes is not implemented. Drop --nproc (or torchrun), or drop --dp-epsilon.")
        # Every rank checks; if the check fails on any, every rank stops (none waits in a collective).
        self.resume_from = self.agree.on_every(lambda: self._claim_run_dir(config, resume, overwrite))
        self.config = config
        t = config.train
        self.device = self.world.device
        self.threads = set_threads(self.world.cpu_threads(t.threads)) if self.device.type == "cpu" else None
        if self.device.type == "cpu":
            keep_freed_memory()
        self.precision = resolve_precision(t.precision, self.device)
        torch.manual_seed(t.seed)
        self.model = build_model(config.model).to(self.device)
        self.objective = make_objective(config.model.arch, self.tokenizer, t.seed, self.data.path / "tokenizer.json")
        # DDP wraps the model; FSDP shards it in place, so the optimizer is built after this.
        compile = t.compile if t.compile is not None else self.device.type == "cuda"
        self.forward = self.world.wrap(self.model, self.precision, compile)
        self.optimizer = build_optimizer(self.model, config)
        self.train_windows = self.data.windows("train", config.seq_len)
        self.val_windows = self.data.windows("val", config.seq_len)
        self.sampler = BatchSampler(self.train_windows, t.batch_size, t.seed, rank=self.world.rank,
                                    world_size=self.world.world_size)
        steps_per_epoch = self.sampler.steps_per_epoch(t.grad_accum)
        self.max_steps = math.ceil(t.epochs * steps_per_epoch) if t.epochs else t.max_steps
        self.budget: TimeBudget | None = None  # train.time: set in _fit; it sets max_steps when time is up
        if t.time is not None:
            self.max_steps = NO_LIMIT
        self.warmup = min(t.warmup_steps, self.max_steps // 2)
        self.token_bytes = self.tokenizer.token_byte_lengths()
        self.step = 0
        self.saved_step: int | None = None  # the step of this run's newest checkpoint, the same on every rank
        self.last_eval: tuple[int, float] | None = None  # (step, val loss): the retention policy keeps the best
        self.dp = None
        if t.dp_epsilon is not None:  # DP-SGD, an isolated path: see candorlm/privacy/dp.py
            from candorlm.privacy.dp import DPSGD, check_resume

            if config.model.arch != "decoder":
                raise CandorError(f"--dp-epsilon trains decoders only (next-token windows are its privacy unit); "
                                  f"this run's model.arch is '{config.model.arch}'. Drop --dp-epsilon or use "
                                  "--arch decoder.")

            self.dp = DPSGD(self.model, self.optimizer, self.train_windows, epsilon=t.dp_epsilon, delta=t.dp_delta,
                            max_grad_norm=t.dp_max_grad_norm, batch_size=t.batch_size, grad_accum=t.grad_accum,
                            steps=self.max_steps, seed=t.seed, autocast_ctx=lambda: autocast(self.precision, self.device))
            if self.resume_from is not None:
                check_resume(self.run.path / "dp.json", self.dp.budget)

    # ------------------------------------------------------------ run directory
    def _claim_run_dir(self, config: RunConfig, resume: bool, overwrite: bool) -> Path | None:
        path = self.run.path
        occupied = path.exists() and any(path.iterdir())
        if resume:
            if not self.run.exists():
                raise CandorError(f"--resume: {path} holds no run to resume (no config.toml)")
            refuse_encrypted_resume(path)  # tampering named first; plain checkpoints never go into an encrypted run
            previous = self.run.read_config()
            if previous.model != config.model:
                raise CandorError(f"--resume: {path} was trained with a different model config; "
                                  f"resume with the same preset/config, or start a new --out")
            if previous.train != config.train:
                log.warning("resuming with changed training settings; the run will differ from an uninterrupted one")
            checkpoint = latest_checkpoint(self.run.checkpoints)
            if checkpoint is None:
                raise CandorError(f"--resume: {path} has no complete checkpoint yet; start again with --overwrite")
            return checkpoint
        if occupied and not overwrite:
            what = "a run" if self.run.exists() else "other files"
            raise CandorError(f"{path} already holds {what}. Pass --resume to continue it, --overwrite to replace it, "
                              f"or choose another --out.")
        # Never the working directory, an ancestor, or a directory holding the data; only candorlm's own run.
        replace = claim_dir(path, "run", overwrite=overwrite, inputs=[config.data.path], legacy=looks_like_old_run)
        self.replace_existing = replace and self.world.is_main  # set aside when fit starts, removed when it saved
        return None

    def _write_run_files(self) -> None:
        def write() -> None:
            self.run.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run.config, self.config.to_toml())
            write_marker(self.run.path, "run", "candorlm train")
            from candorlm.io.sealed import read_bytes  # the data may be encrypted; the run is written plain

            self.run.tokenizer.write_bytes(read_bytes(self.data.path / "tokenizer.json"))
            if (self.data.path / "canaries.json").is_file():  # planted by `prepare --canaries`, for `audit`
                (self.run.path / "canaries.json").write_bytes(read_bytes(self.data.path / "canaries.json"))

        self.agree.on_main(write)
        if not self.run.config.is_file():
            raise CandorError(f"rank {self.world.rank} cannot see {self.run.config}, which rank 0 wrote: with several "
                              f"nodes, --out must be on a filesystem that every node shares")

    def _restore(self, checkpoint: Path) -> None:
        state = load_any_checkpoint(self.world, checkpoint, self.model, self.optimizer)
        self.step = self.saved_step = int(state["step"])
        self.sampler.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        if self.world.is_main:
            self._truncate_metrics(self.step)
        log.info("resumed from %s (step %d)", checkpoint, self.step)

    def _truncate_metrics(self, step: int) -> None:
        # Rows written after the checkpoint would repeat when the resumed run logs those steps again.
        if not self.run.metrics.is_file():
            return
        rows = [line for line in self.run.metrics.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write_text(self.run.metrics, "".join(row + "\n" for row in rows))

    def save(self) -> Path:
        state = {"data": self.sampler.state_dict(), "precision": self.precision}
        if self.last_eval is not None and self.last_eval[0] == self.step:
            state["val_loss"] = self.last_eval[1]
        path = save_any_checkpoint(self.world, self.run.checkpoints, self.step, self.model, self.optimizer, state,
                                   keep=self.config.train.keep_checkpoints,
                                   keep_best=self.config.train.keep_best_checkpoint)
        self.saved_step = self.step
        if self.dp is not None:
            from candorlm.io.files import write_json

            write_json(self.run.path / "dp.json", self.dp.record(self.step))
        return path

    # ------------------------------------------------------------ the loop
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.config.train
        lr = self.budget.lr(self.step) if self.budget else lr_at(self.step, t.lr, self.warmup, self.max_steps,
                                                                 t.min_lr_ratio, t.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.dp is not None:
            step_loss, grad_norm = self.dp.step(self.step, self.device)
            self.step += 1
            return step_loss, grad_norm
        step_loss = torch.zeros((), device=self.device)
        for micro in range(t.grad_accum):
            x, y = self.sampler.next_batch()
            # Each rank masks its own windows with its own draw (encoder/seq2seq); one process: step*accum+micro.
            draw = (self.step * t.grad_accum + micro) * self.world.world_size + self.world.rank
            inputs, y = self.objective.batch(x, y, draw)
            inputs = {k: to_device(v, self.device) for k, v in inputs.items()}
            y = to_device(y, self.device)
            with self.world.accumulating(sync=micro == t.grad_accum - 1):  # ranks sync gradients once per step
                with autocast(self.precision, self.device):
                    if self.objective.arch == "decoder":  # fused output layer + loss (model/loss.py)
                        loss = self.forward(**inputs, targets=y) / t.grad_accum
                    else:
                        loss = lm_loss(self.forward(**inputs), y) / t.grad_accum
                loss.backward()
            step_loss += loss.detach()
        if t.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        else:
            grad_norm = torch.zeros(())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return step_loss, grad_norm

    def evaluate(self) -> dict[str, float]:
        t = self.config.train
        return evaluate_bpb(self.model, self.val_windows, self.token_bytes, batch_size=t.batch_size,
                            max_tokens=t.eval_tokens, precision=self.precision, make_batch=self.objective.eval_fn)

    def fit(self) -> TrainResult:
        if self.replace_existing:  # rank 0; the others wait in _write_run_files
            self.replaced = set_aside(self.run.path)
        try:
            result = self._fit()
        except CollectiveFailed as exc:  # a rank died or the ranks disagreed: say what is left to resume
            self._put_back_replaced()
            raise CollectiveFailed(f"{exc}; {resumable(self.run.path)}") from None
        except BaseException:
            self._put_back_replaced()
            raise
        if self.replaced is not None:  # this run saved what it has: the old one goes now
            shutil.rmtree(self.replaced, ignore_errors=True)
        return result

    def _put_back_replaced(self) -> None:
        """A run that failed before its first checkpoint gives the place back to the run it replaced."""
        if self.replaced is None or latest_checkpoint(self.run.checkpoints) is not None:
            return  # (with a checkpoint, the new run is resumable; the old one is removed by the next command)
        shutil.rmtree(self.run.path, ignore_errors=True)
        os.replace(self.replaced, self.run.path)
        log.warning("the new run failed before its first checkpoint; put back the run it was replacing in %s",
                    self.run.path)

    def _fit(self) -> TrainResult:
        if self.resume_from is not None:
            self._restore(self.resume_from)
        self._write_run_files()
        t = self.config.train
        tokens_per_step = t.batch_size * t.grad_accum * self.config.seq_len * self.world.world_size
        self.budget = budget_for(self.config, tokens_per_step, self.run.path, self.resume_from is not None)
        log.info("training %s parameters for %s (%d tokens/step, %s, %s threads)", f"{self.model.num_params():,}",
                 f"{t.time}" if self.budget else f"{self.max_steps} steps", tokens_per_step, self.precision,
                 self.threads)
        result = TrainResult(self.run.path, self.step, rank=self.world.rank)
        ranks = Ranks(size=self.world.world_size, is_main=self.world.is_main, node_leader=self.world.local_rank == 0,
                      reduce=self.agree.reduce if self.world.distributed else None)
        meter = TrainingMeter(self.config, self.device, self.precision, self.threads, self.step,
                              self.model.num_params(), ranks).start()
        start = last_time = time.perf_counter()
        first_step = last_step = self.step
        self.model.train()
        health = Health(self.device)
        with _StopFlag(self.world.stop_signals, grace_s=30.0 if self.world.distributed else 0.0) as stop, \
                progress_bar("training", total=self.max_steps) as bar, \
                open(self.run.metrics if self.world.is_main else os.devnull, "a", encoding="utf-8") as metrics:
            bar.advance(self.step)
            if self.budget:
                self.budget.begin(self.step)
            while self.step < self.max_steps:
                loss, grad_norm = self.train_step()
                health.observe(self.step, loss, grad_norm)
                # The one collective of each step: every rank gets the same plan (agreement.py).
                plan = self.agree.step(self.step, self.max_steps, log_every=t.log_every, eval_every=t.eval_every,
                                       save_every=t.save_every, stop=stop.requested,
                                       out_of_time=bool(self.budget and self.budget.after_step(self.step)),
                                       diverged=health.on_host and health.bad())
                if not health.on_host and (plan.log or plan.evaluate or plan.save):  # read the GPU only here
                    plan = replace(plan, diverged=self.agree.any(health.bad()))
                if plan.diverged:
                    raise health.error(self.step, lr=t.lr, grad_clip=t.grad_clip,
                                       precision=self.precision)
                if plan.out_of_time:
                    self.max_steps = self.step  # the time is up: this step is the last (evaluated, saved)
                bar.advance(1)
                row: dict[str, Any] = {}
                if plan.log:
                    now = time.perf_counter()
                    tps = tokens_per_step * (self.step - last_step) / max(now - last_time, 1e-9)
                    last_time, last_step = now, self.step
                    row.update(loss=self.agree.mean(loss), lr=self.optimizer.param_groups[0]["lr"],
                               grad_norm=float(grad_norm), tokens_per_s=round(tps, 1),
                               tokens_seen=self.step * tokens_per_step, elapsed_s=round(now - start, 3),
                               peak_rss_mb=round(peak_rss_bytes() / 2**20, 1), mfu=round(meter.mfu(tps), 6))
                    bar.update(status=f"loss {row['loss']:.3f}  {tps:,.0f} tok/s")
                    meter.log(self.run.path, self.step, resumed=self.resume_from is not None)  # survives kill -9
                if plan.evaluate:
                    with meter.evaluating():
                        ev = self.evaluate()
                    meter.count_eval(ev["tokens"])
                    row.update(val_loss=ev["loss"], val_bpb=ev["bpb"])
                    self.last_eval = (self.step, ev["loss"])
                    result.final_eval = ev
                    log.info("step %d: val loss %.4f, val bits/byte %.4f", self.step, ev["loss"], ev["bpb"])
                if row:
                    metrics.write(json.dumps({"step": self.step, **row}) + "\n")
                    metrics.flush()
                if plan.save:
                    # Every rank asks (plan.save is the same on all): no non-finite weights are ever saved.
                    if self.agree.any(not health.weights_finite(self.model)):
                        raise health.error(self.step, lr=t.lr, grad_clip=t.grad_clip, precision=self.precision,
                                           weights=True)
                    with meter.saving():
                        self.save()
                if plan.stop:
                    result.interrupted = True
                    break
        result.steps = self.step
        result.wall_s = time.perf_counter() - start
        result.tokens_per_s = tokens_per_step * (self.step - first_step) / max(result.wall_s, 1e-9)
        if not result.interrupted:
            if self.saved_step != self.step:  # known alike on every rank: never the filesystem's view
                self.save()
            export_weights(self.world, self.model, self.run.weights, lambda: build_model(self.config.model))
        result.ledger = meter.finish(self.run.path, self.step, resumed=self.resume_from is not None,
                                     extra=self.budget.record() if self.budget else None)
        log.info("ledger: %s", ledger_summary(result.ledger))
        self.agree.on_main(lambda: write_manifest(self.run.path))  # SHA256SUMS, after every file: `candorlm verify`
        self.world.close()
        return result


def train(out: str | Path, *, data: str | Path | None = None, preset: str | None = None,
          config: RunConfig | str | Path | None = None, overrides: list[str] | None = None,
          model: dict[str, Any] | None = None, resume: bool = False, overwrite: bool = False,
          time: str | None = None, **train_settings: Any) -> TrainResult:
    """Train a model and write the run directory `out`.

    The config is a preset, then a TOML file (or a ready RunConfig), then `section.key=value`
    overrides, then `model` and `train_settings` (keys of [model] and [train]):

        candorlm.train("runs/pd", data="data/pd", preset="tiny", max_steps=500)
        candorlm.train("runs/pd", data="data/pd", preset="tiny", time="5m")

    Args:
        out: Run directory to write.
        data: Data directory from `candorlm prepare`.
        preset: Model size preset.
        config: TOML file with [model], [data], [train] sections.
        overrides: Config values as section.key=value, e.g. train.lr=1e-3.
        model: Keys of [model], applied last.
        resume: Continue the run in `out` from its newest checkpoint.
        overwrite: Replace the run in `out`.
        time: Train for this long (90s, 5m, 1h) instead of a number of steps: the schedule is
            sized to the time, the learning rate decays by elapsed time, and the run stops when
            the time is up (default: the config's train.time, unset: train for max_steps).
        **train_settings: Keys of [train], applied last.
    """
    if time is not None:
        train_settings["time"] = time
    if isinstance(config, RunConfig):
        cfg = build_config(config.model_dump(), *(parse_override(o) for o in overrides or []),
                           {"model": model or {}, "train": train_settings})
    else:
        cfg = resolve(preset, config, overrides, model=model or {}, train=train_settings)
    if data is not None:
        cfg.data.path = str(data)
    return Trainer(cfg, out, resume=resume, overwrite=overwrite).fit()
