"""Fine-tuning, one entry point for every task: start from a run (or from scratch), train on the
task's training split, keep the epoch that scores best on the dev split, write a new run
directory, and evaluate it on the test split.

The loop is the trunk's recipe (AdamW with decay on matrices only, linear warmup then cosine
decay, gradient clipping, bf16 autocast where the hardware has it) over batches of task
examples instead of token windows. The new run directory is written into a temporary sibling
and renamed into place at the end, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator, get_args

import numpy as np
import torch

from candorlm.config import RunConfig, TrainConfig
from candorlm.device import autocast, pick_device, resolve_precision, set_threads
from candorlm.checkpoint.run import SOURCE_TOKENIZER, TASK_FILE
from candorlm.checkpoint.weights import save_weights
from candorlm.io.files import atomic_write_text, swapped_into_place, write_json
from candorlm.io.manifest import write_manifest
from candorlm.io.outputs import claim_dir, write_marker
from candorlm.rundir import RunDir, foreign_entries, looks_like_old_run
from candorlm.tasks.base import Prepared, load_base
from candorlm.tasks.mlm_stage import masked_lm_stage, stage_steps
from candorlm.tasks.overlap import overlap_warning, pretraining_overlap
from candorlm.tasks.registry import get_task
from candorlm.errors import CandorError
from candorlm.forecast import parse_duration, say_duration
from candorlm.tasks.pace import BUDGET_STEPS, Pace, eval_forecast, train_forecast
from candorlm.training.callbacks import MetricsFile
from candorlm.training.loop import Callback, Loop
from candorlm.training.optim import build_optimizer

log = logging.getLogger("candorlm")


# The training settings finetune takes as flags (what `--set train.KEY` would have meant).
_FLAGS = {"lr": "--lr", "batch_size": "--batch-size", "epochs": "--epochs", "max_steps": "--max-steps",
          "time": "--time", "seed": "--seed", "precision": "--precision", "device": "--device", "threads": "--threads",
          "warmup_steps": "--warmup-fraction"}


def _check_settings(overrides: list[str] | None, **numbers: Any) -> None:
    """Refuse, before any work, what finetune would otherwise ignore or trip over: `--set` of a
    section other than [model] (its training settings are flags), and flags out of range."""
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        if not key.startswith("model."):
            name = key.split(".", 1)[-1]
            use = f"; use {_FLAGS[name]}" if key.startswith("train.") and name in _FLAGS else ""
            raise CandorError(f"--set {key}: finetune takes only model.* settings from --set (its training settings "
                              f"are the flags --lr, --batch-size, --epochs, --max-steps, --time, --warmup-fraction, "
                              f"--seed, --precision, --device, --threads), so this one would be ignored{use}")
    rules = {"epochs": (0, False, "--epochs"), "lr": (0, False, "--lr"), "batch_size": (1, True, "--batch-size"),
             "threads": (1, True, "--threads"), "seed": (0, True, "--seed"),
             "pretrain_mlm": (0, True, "--pretrain-mlm"), "mlm_weight": (0, True, "--mlm-weight"),
             "warmup_fraction": (0, True, "--warmup-fraction")}
    for name, (low, inclusive, flag) in rules.items():
        value = numbers.get(name)
        if value is None:
            continue
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            bound = f"at least {low}" if inclusive else f"above {low}"
            raise CandorError(f"{flag} must be a finite number {bound}, got {value}")
    if not numbers.get("warmup_fraction", 0) <= 1:
        raise CandorError(f"--warmup-fraction is a share of the steps, from 0 to 1; got {numbers['warmup_fraction']}")
    for name in ("precision", "device"):
        valid = get_args(TrainConfig.model_fields[name].annotation)
        if numbers.get(name) not in valid:
            raise CandorError(f"--{name} {numbers.get(name)}: choose one of {', '.join(valid)}")


def _check_splits(data: str, prepared: Prepared, needs_test: bool) -> None:
    """Refuse data too small to split: with no test example the score at the end is of nothing
    (a task whose dev split chooses what is kept checks that one itself)."""
    sizes = {name: len(prepared.records.get(name) or []) for name in ("train", "dev", "test")}
    empty = [name for name in ("train", *(("test",) if needs_test else ())) if not sizes[name]]
    if empty:
        split = ", ".join(f"{n} {name}" for name, n in sizes.items())
        raise CandorError(f"{data}: too few examples to split ({split}): the {' and '.join(empty)} split "
                          f"{'is' if len(empty) == 1 else 'are'} empty; give more examples (the test split takes "
                          f"about 10%)")


def finetune(run: str | Path | None, *, task: str, data: str, out: str | Path, scratch: bool = False,
             preset: str = "tiny", arch: str | None = None, epochs: float = 3.0, batch_size: int = 32,
             lr: float | None = None, warmup_fraction: float = 0.06, seed: int = 1337, precision: str = "auto",
             device: str = "auto", threads: int | None = None, overrides: list[str] | None = None, overwrite: bool = False,
             evaluate: bool = True, max_steps: int | None = None, time_budget: str | None = None,
             eval_limit: int | None = None, pretrain_mlm: float = 0.0, **options: Any) -> dict[str, Any]:
    """Fine-tune `run` (a run directory; None: a fresh `preset` model of `arch`) on `task` with
    `data`, and write the run directory `out`. Returns the test evaluation (`evals/<task>.json`).

        candorlm.tasks.finetune("runs/pd", task="sentiment", data="builtin:reviews", out="runs/pd-sentiment")

    Args:
        run: Pretrained run to start from (None: start from scratch).
        task: sentiment, translate, qa or chat.
        data: Task data: a JSONL/TSV file, or builtin:reviews | builtin:pinyin | builtin:qa | builtin:chat.
        out: New run directory to write.
        scratch: Use RUN's config and tokenizer but not its weights (a from-scratch control with the
            same shape).
        preset: Model size when there is no RUN.
        arch: Model family when there is no RUN: decoder, encoder or seq2seq (None: the task's default;
            translate --head tag: encoder).
        epochs: Passes over the training split.
        batch_size: Examples per step.
        lr: Peak learning rate (None: 5e-4 from a run, 1e-3 from scratch).
        warmup_fraction: Share of the steps that warm the learning rate up.
        seed: Random seed (head init, data order).
        precision: auto (bf16 where the hardware has it), fp32 or bf16.
        device: auto, cpu or cuda.
        threads: CPU threads (None: physical cores).
        overrides: Config values as section.key=value, e.g. model.dropout=0.1.
        overwrite: Replace the run in `out`.
        evaluate: Score the test split at the end (evals/<task>.json).
        max_steps: Stop after N optimizer steps, the schedule sized to them (None: EPOCHS passes).
        time_budget: Train for this long (90s, 5m, 1h): the first steps are timed, the schedule is
            sized to the steps that fit and the learning rate decays by elapsed time; dev evaluation
            counts against it, the test evaluation after it does not. Overrides epochs and max_steps.
        eval_limit: Score only N test examples at the end (None: all; sentiment: evenly spaced over
            the split, the other tasks: the first N).
        pretrain_mlm: Epochs of masked-LM training on the training split's texts (labels unused)
            before the task's training, an encoder only (sentiment); a time budget counts it.
        **options: The task's own options (see its `prepare`).
    """
    spec = get_task(task)
    out = Path(out)
    _check_settings(overrides, epochs=epochs, batch_size=batch_size, lr=lr, warmup_fraction=warmup_fraction,
                    seed=seed, threads=threads, pretrain_mlm=pretrain_mlm, mlm_weight=options.get("mlm_weight"),
                    precision=precision, device=device)
    claim_dir(out, "run", overwrite=overwrite, inputs=[p for p in (run, data) if p], legacy=looks_like_old_run,
              foreign=foreign_entries)
    default = spec.default_arch_for(**options) if hasattr(spec, "default_arch_for") else spec.default_arch
    base = load_base(run, scratch=scratch, preset=preset, arch=arch or default, overrides=overrides)
    torch.manual_seed(seed)
    prepared = spec.prepare(base, data, seed=seed, **options)
    _check_splits(data, prepared, needs_test=evaluate)
    if base.weights is not None and prepared.records.get("test"):
        _check_overlap(base, prepared)
    model = prepared.model
    lr = lr if lr is not None else (1e-3 if base.weights is None else 5e-4)
    steps_per_epoch = math.ceil(len(prepared.train) / batch_size)
    if max_steps is not None and max_steps < 1:
        raise CandorError(f"--max-steps must be at least 1, got {max_steps}")
    if eval_limit is not None and eval_limit < 1:
        raise CandorError(f"--eval-limit must be at least 1, got {eval_limit}")
    budget_s = parse_duration(time_budget) if time_budget is not None else None
    max_steps = max_steps or max(1, math.ceil(epochs * steps_per_epoch))
    if budget_s is not None:
        max_steps = BUDGET_STEPS  # sized by the pace once the first steps are timed
    train_cfg = TrainConfig(max_steps=max_steps, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                            warmup_steps=max(1, int(warmup_fraction * max_steps)), precision=precision,
                            device=device, threads=threads, weight_decay=0.01, beta2=0.98)
    config = RunConfig(model=prepared.model_config, data={"path": data}, train=train_cfg)
    dev = pick_device(device)
    threads = set_threads(threads) if dev.type == "cpu" else None
    prec = resolve_precision(precision, dev)
    model.to(dev)
    optimizer = build_optimizer(model, config)
    with swapped_into_place(out) as tmp:
        log.info("fine-tuning for %s: %s parameters, %s; %d training, %d dev examples, %s, %s, %s threads",
                 task, f"{sum(p.numel() for p in model.parameters()):,}",
                 f"from {base.run}" + (" (weights re-initialised)" if scratch else "") if base.run else "from scratch",
                 len(prepared.train), len(prepared.dev),
                 f"for {say_duration(budget_s)}" if budget_s else f"{max_steps:,} steps", prec, threads)
        if pretrain_mlm:
            budget_s = _pretrain_mlm(spec, prepared, model, base.arch, pretrain_mlm, config, dev, prec, tmp, budget_s)
        if budget_s is None:
            log.info("%s", train_forecast(base.run, prepared, max_steps, batch_size))
        pace = Pace(train_cfg, budget_s, warmup_fraction)
        history = _loop(spec, prepared, model, optimizer, train_cfg, dev, prec, tmp / "metrics.jsonl", pace)
        model.cpu().eval()
        if hasattr(spec, "finish"):  # a task's last step with the kept weights (translate --head tag: its n-gram LM)
            spec.finish(prepared, model, tmp)
        if budget_s is not None:  # the steps the budget held, not the placeholder count
            config = config.model_copy(update={"train": train_cfg.model_copy(
                update={"max_steps": max(1, pace.steps_done), "warmup_steps": pace.warmup})})
        _write_run(tmp, config, prepared, model, base, task, data, history, scratch, pace)
        write_manifest(tmp)  # SHA256SUMS: loading the run checks it
        write_marker(tmp, "run", "candorlm finetune", task=task)
    if not evaluate:
        return {}
    eval_options = spec.eval_options(options)
    if eval_limit is not None:
        eval_options["limit"] = eval_limit
    log.info("%s", eval_forecast(out, eval_options.get("limit")))
    return spec.evaluate(out, data=None, **eval_options)


def _check_overlap(base: Any, prepared: Any) -> None:
    """Test examples the start run was pretrained on (tasks/overlap.py): said in the log, kept in task.json."""
    overlap = pretraining_overlap(base.config, prepared.records["test"])
    prepared.info["pretraining_overlap"] = overlap
    warning = overlap_warning(overlap, base.run)
    if warning:
        log.warning("%s", warning)
    elif not overlap["checked"]:
        log.info("test split not checked against %s's pretraining text: %s", base.run, overlap["why"])


def _loop(spec: Any, prepared: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, t: TrainConfig,
          device: torch.device, precision: str, metrics_path: Path, pace: Pace | None = None) -> list[dict[str, Any]]:
    """The one training loop (training/loop.py) with a fine-tuning step: shuffled task examples,
    the dev split scored at the end of each epoch, the best epoch's weights kept. `pace` is the
    schedule and the clock (a step count, or a time budget that sizes and ends the run)."""
    pace = pace or Pace(t)
    rng = np.random.default_rng(t.seed)
    n = len(prepared.train)
    epochs = _Epochs(spec, prepared, model, device, pace)
    lengths = example_lengths(spec, prepared.train)

    def batches() -> Iterator[list[Any]]:
        while True:  # a permutation per epoch, drawn when the epoch starts
            order = rng.permutation(n)
            model.train()
            for idx in length_batches(order, lengths, t.batch_size, rng):
                yield [prepared.train[j] for j in idx]
            epochs.epoch += 1

    stream = batches()

    def step(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = next(stream)
        with autocast(precision, device):
            loss = spec.loss(model, batch, device, prepared)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach(), grad_norm

    def out_of_time(done: int) -> bool:
        pace.after_step(done)  # may size or end the run (a time budget)
        return done >= pace.max_steps

    Loop(step, optimizer, schedule=pace.lr, max_steps=t.max_steps, device=device, log_every=t.log_every,
         eval_every=math.ceil(n / t.batch_size), evaluate=epochs.score, grad_clip=t.grad_clip, precision=precision,
         stop_signals=(), peak_lr=t.lr, out_of_time=out_of_time, label="fine-tuning", model=model,
         show_total=not pace.budget_s, callbacks=[epochs, MetricsFile(metrics_path, mode="w")]).run()
    if epochs.best_state is not None:
        model.load_state_dict(epochs.best_state)
    return epochs.history


def _pretrain_mlm(spec: Any, prepared: Any, model: torch.nn.Module, arch: str, epochs: float, config: RunConfig,
                  device: torch.device, precision: str, tmp: Path, budget_s: float | None) -> float | None:
    """The masked-LM stage (tasks/mlm_stage.py) on `model`'s encoder, in the same loop with its own
    optimizer and schedule; returns what is left of the time budget for the task's training."""
    stage = masked_lm_stage(spec, prepared, arch)
    t = config.train
    steps = stage_steps(epochs, len(stage.train), t.batch_size)
    cfg = t.model_copy(update={"max_steps": steps, "warmup_steps": max(1, int(0.06 * steps))})
    log.info("masked-LM stage: %s epochs of the %d training texts, %d steps", f"{epochs:g}", len(stage.train), steps)
    pace = Pace(cfg)
    history = _loop(stage, stage, model, build_optimizer(model, config), cfg, device, precision,
                    tmp / "mlm_metrics.jsonl", pace)
    prepared.info["pretrain_mlm"] = {"epochs": epochs, "steps": steps, "seconds": round(pace.elapsed(), 1),
                                     "dev_mlm_loss": [h.get("dev_mlm_loss") for h in history]}
    if budget_s is None:
        return None
    left = budget_s - pace.elapsed()
    if left < 0.1 * budget_s:
        raise CandorError(f"the masked-LM stage took {say_duration(pace.elapsed())} of the {say_duration(budget_s)} "
                          f"budget, leaving too little for the task: give fewer --pretrain-mlm epochs or more --time")
    return left


def example_lengths(spec: Any, examples: list[Any]) -> list[int] | None:
    """The examples' lengths by the task's `example_length` (tasks/registry.py), by which their
    training batches are grouped; None where the task groups none: it has no such function, or it
    gives None for these examples (translate's seq2seq, which keeps the plain permutation)."""
    length = getattr(spec, "example_length", None)
    if length is None:
        return None
    lengths = [length(e) for e in examples]
    return None if None in lengths else lengths


BUCKET_BATCHES = 50  # batches per length bucket: sorted within, so a batch pads to its neighbours' length


def length_batches(order: np.ndarray, lengths: list[int] | None, batch_size: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches of the shuffled indices `order`. With `lengths`, each run of
    BUCKET_BATCHES batches is sorted by length before it is cut, and the batches are shuffled:
    a batch pads to its own longest example, not to the longest of a random draw (reviews: a
    median of 46 characters, a tail past 500; random batches of 32 were mostly padding). The
    number of batches is the same as without lengths, ceil(len(order) / batch_size)."""
    if lengths is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    chunk = batch_size * BUCKET_BATCHES
    out = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort([lengths[j] for j in part], kind="stable")]
        out.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [out[i] for i in rng.permutation(len(out))]


class _Epochs(Callback):
    """Epochs of a fine-tuning: the epoch in each logged row, the dev scores at each epoch's end
    (timed by the pace: they count against a time budget), and a copy of the best one's weights."""

    def __init__(self, spec: Any, prepared: Any, model: torch.nn.Module, device: torch.device, pace: Pace) -> None:
        self.spec, self.prepared, self.model, self.device, self.pace = spec, prepared, model, device, pace
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best_score, self.best_state = -math.inf, None

    def on_begin(self, loop: Loop) -> None:
        self.pace.begin(len(self.prepared.dev))

    def score(self) -> dict[str, Any]:
        with self.pace.evaluating(len(self.prepared.dev)):
            return self.spec.dev_metrics(self.model, self.prepared, self.device)

    def on_log(self, loop: Loop, row: dict[str, Any]) -> None:
        row["epoch"] = self.epoch

    def on_evaluate(self, loop: Loop, scores: dict[str, Any], row: dict[str, Any], seconds: float) -> None:
        done = self.epoch + 1  # this epoch ends here (or the run does, part way through it)
        entry = {"step": loop.step, "epoch": done, **{f"dev_{k}": v for k, v in scores.items()},
                 "elapsed_s": round(time.perf_counter() - loop.start_time, 3)}
        self.history.append(entry)
        row.update({k: v for k, v in entry.items() if k != "step"})
        log.info("epoch %d (step %d): %s", done, loop.step, ", ".join(f"dev {k} {v:.4f}" for k, v in scores.items()))
        if scores["score"] > self.best_score:
            self.best_score, self.best_state = scores["score"], copy.deepcopy(self.model.state_dict())
            entry["best"] = row["best"] = True


def _write_run(tmp: Path, config: RunConfig, prepared: Any, model: torch.nn.Module, base: Any, task: str, data: str,
               history: list[dict[str, Any]], scratch: bool, pace: Pace | None = None) -> None:
    rd = RunDir(tmp)
    atomic_write_text(rd.config, config.to_toml())
    prepared.tokenizer.save(rd.tokenizer)
    if prepared.source_tokenizer is not None:
        prepared.source_tokenizer.save(tmp / SOURCE_TOKENIZER)
    save_weights(model, rd.weights)
    best = max(history, key=lambda r: r.get("dev_score", -math.inf)) if history else {}
    write_json(tmp / TASK_FILE, {
        "task": task,
        "data": data,
        "base_run": str(base.run) if base.run else None,
        "init": "scratch" if (scratch or base.weights is None) else "pretrained",
        "best_epoch": best.get("epoch"),
        "splits": {k: len(getattr(prepared, k)) for k in ("train", "dev")},
        **prepared.info,
        **({"timing": pace.record()} if pace is not None else {}),
    })
