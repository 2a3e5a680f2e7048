"""The one training loop (candorlm/training/loop.py) with a toy step: what runs when, in one
process. The real steps (pretraining, DP-SGD, fine-tuning) are tested through their commands."""

import math

import pytest
import torch

from candorlm.training.health import Diverged
from candorlm.training.loop import Callback, Loop


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_start(self, loop):
        self.events.append(("start", loop.step))

    def on_begin(self, loop):
        self.events.append(("begin", loop.step))

    def on_log(self, loop, row):
        self.events.append(("log", loop.step))
        row["seen_by_recorder"] = True

    def on_evaluate(self, loop, scores, row, seconds):
        self.events.append(("evaluate", loop.step, scores["score"]))

    def on_row(self, loop, row):
        self.events.append(("row", loop.step, sorted(row)))

    def on_save(self, loop, seconds):
        self.events.append(("save", loop.step))

    def on_end(self, loop, result):
        self.events.append(("end", result.steps, result.interrupted))


def _toy(lr_scale=1.0):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def step(index):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach(), norm

    return model, optimizer, step


def test_the_loop_logs_evaluates_saves_and_ends_in_order():
    model, optimizer, step = _toy()
    rec, saved, lrs = Recorder(), [], []

    def schedule(s):
        lrs.append(s)
        return 0.1

    result = Loop(step, optimizer, schedule=schedule, max_steps=5, device=torch.device("cpu"), log_every=2,
                  eval_every=4, save_every=3, evaluate=lambda: {"score": 1.0}, save=saved.append,
                  callbacks=[rec], model=model).run()
    assert lrs == [0, 1, 2, 3, 4] and saved == [3, 5] and result.steps == 5 and not result.interrupted
    kinds = [e[:2] for e in rec.events]
    assert kinds == [("start", 0), ("begin", 0), ("log", 2), ("row", 2), ("save", 3), ("log", 4), ("evaluate", 4),
                     ("row", 4),
                     ("log", 5), ("evaluate", 5), ("row", 5), ("save", 5), ("end", 5)]
    assert "seen_by_recorder" in rec.events[3][2] and "loss" in rec.events[3][2]


def test_a_resumed_loop_does_not_save_again_the_step_it_resumed_from():
    _, optimizer, step = _toy()
    saved = []
    Loop(step, optimizer, schedule=lambda s: 0.1, max_steps=4, first_step=4, device=torch.device("cpu"),
         save=saved.append).run()
    assert saved == []


def test_a_non_finite_loss_stops_the_loop_naming_the_step():
    model, optimizer, _ = _toy()
    saved = []

    def step(index):
        loss = torch.tensor(math.nan if index == 2 else 1.0)
        return loss, torch.tensor(0.5)

    with pytest.raises(Diverged, match=r"diverged at step 3: loss nan.*train.lr=0.5.*train.grad_clip=0"):
        Loop(step, optimizer, schedule=lambda s: 0.1, max_steps=10, device=torch.device("cpu"), save_every=1,
             save=saved.append, peak_lr=0.5, model=model).run()
    assert saved == [1, 2]  # nothing of step 3


def test_non_finite_weights_are_never_saved():
    model, optimizer, _ = _toy()
    saved = []

    def step(index):
        if index == 1:
            with torch.no_grad():
                model.weight.fill_(math.inf)  # a finite loss, then an update that overflows
        return torch.tensor(1.0), torch.tensor(0.5)

    with pytest.raises(Diverged, match="step 2: its update left non-finite weights"):
        Loop(step, optimizer, schedule=lambda s: 0.1, max_steps=10, device=torch.device("cpu"), save_every=1,
             save=saved.append, model=model, grad_clip=1.0).run()
    assert saved == [1]


def test_out_of_time_ends_the_run_evaluated_and_saved():
    _, optimizer, step = _toy()
    rec, saved = Recorder(), []
    result = Loop(step, optimizer, schedule=lambda s: 0.1, max_steps=1000, device=torch.device("cpu"), log_every=100,
                  eval_every=100, save_every=100, evaluate=lambda: {"score": 0.0}, save=saved.append,
                  out_of_time=lambda done: done >= 3, callbacks=[rec]).run()
    assert result.steps == 3 and saved == [3] and ("evaluate", 3, 0.0) in rec.events and not result.interrupted
