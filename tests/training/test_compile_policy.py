"""When `train.compile` unset compiles (training/compile_policy.py): decided before the first step
where the run's length is known, else after timing the first eager steps."""

import pytest
import torch

from candorlm.config import resolve
from candorlm.errors import CandorError
from candorlm.model.compiled import is_compiled
from candorlm.training import compile_policy
from candorlm.training.compile_policy import PAYS_AFTER_S, CompileWhenItPays, compile_upfront

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_upfront_decisions():
    assert compile_upfront(resolve("nano", train={"compile": False}), CUDA) is False
    assert compile_upfront(resolve("nano", train={"compile": True}), CPU) is True
    assert compile_upfront(resolve("nano"), CUDA) is True
    assert compile_upfront(resolve("nano", train={"time": "5m"}), CPU) is False  # too short to earn a cold compile
    assert compile_upfront(resolve("nano", train={"time": f"{PAYS_AFTER_S:.0f}s"}), CPU) is True
    assert compile_upfront(resolve("nano"), CPU) is None  # a step-count run: measured first
    assert compile_upfront(resolve("nano"), CPU, distributed=True) is False  # every rank alike


def test_no_cxx_compiler_no_compile_unless_asked(monkeypatch):
    monkeypatch.setattr(compile_policy, "has_cxx", lambda: False)
    assert compile_upfront(resolve("nano", train={"time": "1h"}), CPU) is False
    assert compile_upfront(resolve("nano"), CPU) is False
    with pytest.raises(CandorError, match="needs a C\\+\\+ compiler"):
        compile_upfront(resolve("nano", train={"compile": True}), CPU)
    assert compile_upfront(resolve("nano", train={"compile": True}), CUDA) is True


class FakeClock:
    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.now


def run(monkeypatch, step_s: float, max_steps: int) -> tuple[CompileWhenItPays, torch.nn.Module]:
    from candorlm.model import build_model

    model = build_model(resolve("nano", model={"vocab_size": 64}).model)
    clock = FakeClock(step_s)
    monkeypatch.setattr(compile_policy.time, "perf_counter", clock)
    policy = CompileWhenItPays(model, first_step=0, max_steps=max_steps)

    def step(i):
        clock.now += step_s * (30 if i == 0 else 1)  # the first step pays one-off costs
        return torch.zeros(()), torch.zeros(())

    wrapped = policy.wrap(step)
    for i in range(compile_policy.MEASURE_STEPS + 3):
        wrapped(i)
    return policy, model


def test_long_step_count_run_compiles_after_measuring(monkeypatch):
    # 0.5 s steps, 2000 steps: about 1000 s left after the measured ones
    policy, model = run(monkeypatch, 0.5, 2000)
    assert policy.decided is True and is_compiled(model)


def test_short_step_count_run_stays_eager(monkeypatch):
    policy, model = run(monkeypatch, 0.5, 200)  # about 100 s
    assert policy.decided is False and not is_compiled(model)
