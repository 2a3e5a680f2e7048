"""Pretraining: a decoder, an encoder or an encoder-decoder on prepared shards, through the one
training loop (loop.py): AdamW, warmup + cosine schedule, accumulation, clipping, bf16 autocast,
periodic evaluation (loss and bits-per-byte), metrics.jsonl, atomic checkpoints, exact resume,
and Ctrl-C that saves before it stops.

`Trainer` builds the model, data and step; `fit` claims the run directory and runs the loop with
the callbacks it is given (the ledger's meter, DP-SGD's record: `candorlm.pretrain` attaches
them), its own (metrics, the final weights) and the manifest, last.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from candorlm.checkpoint.retention import latest_checkpoint
from candorlm.checkpoint.run import refuse_encrypted_resume
from candorlm.checkpoint.sharded import export_weights, load_any_checkpoint, save_any_checkpoint
from candorlm.checkpoint.state import set_rng_state
from candorlm.config import RunConfig
from candorlm.device import autocast, keep_freed_memory, resolve_precision, set_threads, to_device
from candorlm.errors import CandorError
from candorlm.evaluate import eval_window_count, evaluate_bpb
from candorlm.io.files import atomic_write_text, keep_beside, set_aside
from candorlm.io.outputs import claim_dir, read_marker, write_marker
from candorlm.model import build_model, lm_loss
from candorlm.model.compiled import is_compiled, uncompile_blocks
from candorlm.rundir import RunDir, foreign_entries, looks_like_old_run
from candorlm.shards import BatchSampler, ShardSet
from candorlm.training.agreement import CollectiveFailed
from candorlm.training.budget import NO_LIMIT, TimeBudget, budget_for
from candorlm.training.callbacks import Manifest, MetricsFile
from candorlm.training.compile_fallback import CompileFailed, CompileFallback
from candorlm.training.compile_policy import CompileWhenItPays, compile_upfront
from candorlm.training.distributed import World, resumable
from candorlm.training.loop import Callback, Loop, LoopResult
from candorlm.training.objectives import make_objective
from candorlm.training.optim import build_optimizer, lr_at
from candorlm.training.ramp import batch_shape, ramped_batch

log = logging.getLogger("candorlm")

StepFn = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]


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


class Trainer:
    """One pretraining run. `callbacks` attach to the loop (before the manifest); a plug-in may
    replace the step (`use_step`): DP-SGD does."""

    def __init__(self, config: RunConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False,
                 callbacks: Sequence[Callback] = ()):
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
        self.resume, self.overwrite = resume, overwrite
        self.resume_from: Path | None = None  # the checkpoint to continue from, once fit has claimed the run
        self.replace_existing = False
        self.replaced: Path | None = None  # the run --overwrite replaces, set aside until this one is saved
        self.callbacks = list(callbacks)
        self.world = World.from_env(config.train.strategy, config.train.device)  # one process unless under torchrun
        self.agree = self.world.agree
        if config.train.dp_epsilon is not None and self.world.distributed:  # before the model is wrapped
            raise CandorError(f"--dp-epsilon trains in one process: its privacy accounting assumes one process drawing "
                              f"Poisson-sampled batches, and clipping and noise across {self.world.world_size} "
                              f"processes is not implemented. Drop --nproc (or torchrun), or drop --dp-epsilon.")
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
        # train.compile unset: where it pays (compile_policy.py); on the CPU a step-count run decides after its first steps
        compile = compile_upfront(config, self.device, self.world.distributed)
        self.compile_later = compile is None
        self.forward = self.world.wrap(self.model, self.precision, bool(compile))
        self.forward_compiled = bool(compile)  # until compiling fails (compile_fallback.py)
        self.optimizer = build_optimizer(self.model, config)
        self.loop: Loop | None = None  # the run's loop, once it starts (a Ctrl-C during a compile: compile_fallback.py)
        self.compiling = CompileFallback(self.optimizer, compiled=self._compiled, to_eager=self._to_eager,
                                         snapshot=self._snapshot, rewind=self._rewind, explicit=t.compile is True,
                                         distributed=self.world.distributed,
                                         interrupted=lambda: self.loop is not None and self.loop.interrupted)
        self.train_windows = self.data.windows("train", config.seq_len, aligned=t.align_windows)
        self.val_windows = self.data.windows("val", config.seq_len)
        self.sampler = BatchSampler(self.train_windows, t.batch_size, t.seed, rank=self.world.rank,
                                    world_size=self.world.world_size)
        steps_per_epoch = self.sampler.steps_per_epoch(t.grad_accum)
        self.max_steps = math.ceil(t.epochs * steps_per_epoch) if t.epochs else t.max_steps
        self.warmup = min(t.warmup_steps, self.max_steps // 2)
        self.budget: TimeBudget | None = None  # train.time: set in fit; it ends the run when the time is up
        if t.time is not None:
            self.max_steps = NO_LIMIT
        self.token_bytes = self.tokenizer.token_byte_lengths()
        self.step = 0
        self.last_eval: tuple[int, float] | None = None  # (step, val loss): the retention policy keeps the best
        self.step_fn: StepFn = self._step
        self.private = False  # a DP-SGD step is attached (privacy/dp.py)

    def use_step(self, step: StepFn, private: bool = False) -> None:
        """Train with another step function (DP-SGD's); `private` says it honours train.dp_*."""
        self.step_fn, self.private = step, private

    # ------------------------------------------------------------ run directory
    def _claim_run_dir(self, config: RunConfig, resume: bool, overwrite: bool) -> Path | None:
        path = self.run.path
        if path.exists() and not path.is_dir():
            raise CandorError(f"{path} is a file, not a directory. Choose a new path for --out")
        occupied = path.exists() and any(path.iterdir())
        if resume:
            refuse_encrypted_resume(path)  # tampering named first; plain checkpoints never go into an encrypted run
            if not self.run.exists():
                raise CandorError(f"--resume: {path} holds no run to resume (no config.toml)")
            marker = read_marker(path)
            if marker is not None and marker["kind"] != "run":  # a backup or export: resuming would rewrite it
                raise CandorError(f"--resume: {path} holds candorlm {marker['kind']} output, not a run, and resuming "
                                  f"would change it; resume the run itself, or to go on from this copy: cp -r {path} "
                                  f"NEW && rm NEW/.candorlm.json, then --resume --out NEW")
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
        replace = claim_dir(path, "run", overwrite=overwrite, inputs=[config.data.path], legacy=looks_like_old_run,
                            foreign=foreign_entries)
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
        self.step = int(state["step"])
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

    def save(self, step: int | None = None) -> Path:
        self.step = self.step if step is None else step
        state = {"data": self.sampler.state_dict(), "precision": self.precision}
        if self.last_eval is not None and self.last_eval[0] == self.step:
            state["val_loss"] = self.last_eval[1]
        path = save_any_checkpoint(self.world, self.run.checkpoints, self.step, self.model, self.optimizer, state,
                                   keep=self.config.train.keep_checkpoints,
                                   keep_best=self.config.train.keep_best_checkpoint)
        return path

    # ------------------------------------------------------------ the step
    def _compiled(self) -> bool:
        return self.forward_compiled or is_compiled(self.model)  # compiled from the start, or by CompileWhenItPays

    def _to_eager(self) -> None:
        uncompile_blocks(self.model)
        self.forward, self.forward_compiled = self.model, False  # one process only (compile_fallback.py)

    def _snapshot(self) -> tuple[dict[str, int], torch.Tensor, list[torch.Tensor]]:
        cuda = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []
        return self.sampler.state_dict(), torch.get_rng_state(), cuda

    def _rewind(self, state: tuple[dict[str, int], torch.Tensor, list[torch.Tensor]]) -> None:
        data, rng, cuda = state
        self.sampler.load_state_dict(data)
        torch.set_rng_state(rng)
        if cuda:
            torch.cuda.set_rng_state_all(cuda)

    def _step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of the objective: accumulated micro-batches, clipping, AdamW."""
        t = self.config.train
        step_loss = torch.zeros((), device=self.device)
        for micro in range(t.grad_accum):
            x, y = self.next_batch(step)
            # Each rank masks its own windows with its own draw (encoder/seq2seq); one process: step*accum+micro.
            draw = (step * t.grad_accum + micro) * self.world.world_size + self.world.rank
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
        return step_loss, grad_norm

    def next_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampler's next batch; smaller, or of shorter windows, early in a run with a ramp (ramp.py)."""
        t = self.config.train
        if not (t.batch_warmup or t.seq_warmup):
            return self.sampler.next_batch()
        if self.budget:
            progress = self.budget.elapsed() / max(self.budget.end(), 1e-9)
        else:
            progress = step / max(1, self.max_steps)
        return ramped_batch(self.sampler, *batch_shape(t.batch_size, self.config.seq_len, progress,
                                                       t.batch_warmup, t.seq_warmup))

    def lr_at(self, step: int) -> float:
        """The schedule: by elapsed time with a time budget (budget.py), else by step."""
        t = self.config.train
        if self.budget:
            return self.budget.lr(step)
        return lr_at(step, t.lr, self.warmup, self.max_steps, t.min_lr_ratio, t.schedule)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One step outside the loop (the benches time it): the schedule's lr, the step, the count."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        out = self.step_fn(self.step)
        self.step += 1
        return out

    def ledger_figures(self) -> dict[str, Any] | None:
        """This session's own figures for the ledger: the time budget's, a failed compile's."""
        figures = {**(self.budget.record() if self.budget else {}), **self.compiling.record()}
        return figures or None

    def evaluate(self) -> dict[str, float]:
        t = self.config.train
        return evaluate_bpb(self.model, self.val_windows, self.token_bytes, batch_size=t.batch_size,
                            max_tokens=t.eval_tokens, precision=self.precision, make_batch=self.objective.eval_fn)

    # ------------------------------------------------------------ the run
    def fit(self) -> TrainResult:
        if self.config.train.dp_epsilon is not None and not self.private:
            raise CandorError("train.dp_epsilon is set but no DP-SGD step is attached: train with candorlm.train "
                              "(or `candorlm train`), which attaches candorlm.privacy.dp")
        # Every rank checks; if the check fails on any, every rank stops (none waits in a collective).
        self.resume_from = self.agree.on_every(lambda: self._claim_run_dir(self.config, self.resume, self.overwrite))
        if self.replace_existing:  # rank 0; the others wait in _write_run_files
            self.replaced = set_aside(self.run.path, "replaced")  # kept, not cleared, if this process is killed
        try:
            result = self._fit()
        except CollectiveFailed as exc:  # a rank died or the ranks disagreed: say what is left to resume
            self._put_back_replaced()
            raise CollectiveFailed(f"{exc}; {resumable(self.run.path)}") from None
        except CompileFailed as exc:  # train.compile = true, or several processes: say what the run kept
            self._put_back_replaced()
            if latest_checkpoint(self.run.checkpoints) is None:
                raise
            raise CompileFailed(f"{exc}; {resumable(self.run.path)}") from None
        except BaseException:
            self._put_back_replaced()
            raise
        if self.replaced is not None and result.interrupted:  # Ctrl-C or SIGTERM: saved, but not finished
            self._keep_replaced()
        elif self.replaced is not None:  # this run finished and saved: the old one goes now
            shutil.rmtree(self.replaced, ignore_errors=True)
        return result

    def _put_back_replaced(self) -> None:
        """A run that failed before its first checkpoint gives the place back to the run it replaced;
        one that failed after it stays (resumable), and the replaced run is kept beside it."""
        if self.replaced is None:
            return
        if latest_checkpoint(self.run.checkpoints) is not None:
            self._keep_replaced()
            return
        shutil.rmtree(self.run.path, ignore_errors=True)
        os.replace(self.replaced, self.run.path)
        log.warning("the new run failed before its first checkpoint; put back the run it was replacing in %s",
                    self.run.path)

    def _keep_replaced(self) -> None:
        """The new run stopped before its end but can be resumed: the whole run it was replacing
        moves from its hidden set-aside name to a visible sibling, for the user to keep or delete."""
        assert self.replaced is not None
        old = RunDir(self.replaced)
        if not old.weights.is_file() and latest_checkpoint(old.checkpoints) is None:  # no model in it to keep
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None
            return
        keep = keep_beside(self.replaced, self.run.path)
        self.replaced = None
        log.warning("the new run stopped before its end; the run it was replacing is kept whole in %s "
                    "(finish this one with --resume, then delete %s if you no longer need it)", keep, keep)

    def _fit(self) -> TrainResult:
        if self.resume_from is not None:
            self._restore(self.resume_from)
        self._write_run_files()
        t = self.config.train
        tokens_per_step = t.batch_size * t.grad_accum * self.config.seq_len * self.world.world_size
        self.budget = budget_for(self.config, tokens_per_step, self.run.path, self.resume_from is not None,
                                 eval_tokens=eval_window_count(len(self.val_windows), self.config.seq_len,
                                                               t.eval_tokens) * self.config.seq_len)
        log.info("training %s parameters for %s (%d tokens/step, %s, %s threads)", f"{self.model.num_params():,}",
                 f"{t.time}" if self.budget else f"{self.max_steps} steps", tokens_per_step, self.precision,
                 self.threads)
        self.model.train()
        own = _PretrainEvents(self)
        step_fn = self.step_fn
        if self.compile_later and self.budget is None and not self.private:
            step_fn = CompileWhenItPays(self.model, self.step, self.max_steps).wrap(step_fn)
        step_fn = self.compiling.wrap(step_fn)  # a compiler that fails: eager, or one line (compile_fallback.py)
        loop = Loop(step_fn, self.optimizer, schedule=self.lr_at, max_steps=self.max_steps, device=self.device,
                    first_step=self.step, log_every=t.log_every, eval_every=t.eval_every, save_every=t.save_every,
                    evaluate=self.evaluate, save=self.save, agree=self.agree, tokens_per_step=tokens_per_step,
                    grad_clip=t.grad_clip, precision=self.precision, stop_signals=self.world.stop_signals, peak_lr=t.lr,
                    model=self.model,
                    grace_s=30.0 if self.world.distributed else 0.0,
                    out_of_time=self.budget.after_step if self.budget else None,
                    callbacks=[own, MetricsFile(self.run.metrics), *self.callbacks, Manifest(self.run.path)])
        self.loop = loop
        done = loop.run()
        self.world.close()
        return TrainResult(self.run.path, done.steps, done.interrupted, done.final_eval, done.tokens_per_s,
                           done.wall_s, done.extra.get("ledger", {}), rank=self.world.rank)


class _PretrainEvents(Callback):
    """The trainer's own part of the run: the time budget's clock, validation figures in the row,
    the best evaluation for checkpoint retention, and the final weights before anything else ends."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_begin(self, loop: Loop) -> None:
        if self.trainer.budget:
            self.trainer.budget.begin(loop.step)

    def on_evaluate(self, loop: Loop, scores: dict[str, Any], row: dict[str, Any], seconds: float) -> None:
        row.update(val_loss=scores["loss"], val_bpb=scores["bpb"])
        self.trainer.last_eval = (loop.step, scores["loss"])
        log.info("step %d: val loss %.4f, val bits/byte %.4f", loop.step, scores["loss"], scores["bpb"])

    def on_end(self, loop: Loop, result: LoopResult) -> None:
        trainer = self.trainer
        trainer.step = loop.step
        if trainer.budget:
            trainer.max_steps = loop.step  # the steps the time held
        if not result.interrupted:
            export_weights(trainer.world, trainer.model, trainer.run.weights, lambda: build_model(trainer.config.model))
