"""A compiler that fails inside a training step (training/compile_fallback.py): by default the run
goes on eagerly with an eager run's losses and one warning; `train.compile = true` stops in one
line (exit 2 through the CLI); an error that is not the compiler's goes on up as it is.

In-process, torch.compile is replaced by a function that runs the block eagerly and raises one of
compile_errors() at a chosen call (as inductor does in the forward, or in the backward that
AOTAutograd compiles lazily); the CLI tests reach inductor's real C++ build with CXX=/bin/false."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from candorlm.checkpoint.retention import latest_checkpoint, list_checkpoints
from candorlm.config import resolve
from candorlm.errors import CandorError
from candorlm.pretrain import attach_features
from candorlm.training import compile_policy
from candorlm.training.compile_fallback import CompileFallback
from candorlm.training.trainer import Trainer
from tests.conftest import TINY_MODEL, TINY_TRAIN, assert_clean_error, run_cli

STEPS = 8


def no_cxx() -> Exception:
    """What inductor raises without a working C++ compiler: InvalidCxxCompiler, wrapped (as everything
    that fails while inductor compiles) in an InductorError."""
    from torch._inductor.exc import InductorError, InvalidCxxCompiler

    return InductorError(InvalidCxxCompiler(), None)


NO_CXX = "InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx"


class _FailsInBackward(torch.autograd.Function):
    """Identity forward; its backward raises, as a backward graph that fails to compile does."""

    @staticmethod
    def forward(ctx, x, error):  # type: ignore[override]
        ctx.error = error
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        raise ctx.error


def compiling_fails(monkeypatch, error: BaseException, at_call: int, where: str = "forward") -> list[int]:
    """torch.compile gives functions that run eagerly and raise `error` at their `at_call`-th call (the
    count is over every compiled function), in the forward or in the backward; returns the count."""
    calls: list[int] = []

    def compile(fn, **kw):
        def run(*a, **k):
            calls.append(1)
            if len(calls) == at_call and where == "forward":
                raise error
            out = fn(*a, **k)
            return _FailsInBackward.apply(out, error) if len(calls) == at_call else out
        return run

    monkeypatch.setattr(torch, "compile", compile)
    return calls


def compiled_by_default(monkeypatch) -> None:
    """train.compile unset, and the policy compiles from the first step (as a --time of 10 minutes)."""
    monkeypatch.setattr("candorlm.training.trainer.compile_upfront", lambda *a, **k: True)


def make_trainer(tmp_path, data_dir, name: str, **train) -> Trainer:
    # On the CPU where CUDA is there too: the blocks compile there, and inductor's C++ is what fails.
    settings = {**TINY_TRAIN, "max_steps": STEPS, "save_every": 100, "eval_every": 100, "device": "cpu", **train}
    cfg = resolve(None, None, None, model=TINY_MODEL, train=settings)
    cfg.data.path = str(data_dir)
    return attach_features(Trainer(cfg, tmp_path / name))


def rows(run) -> list[float]:
    """Each logged step's loss and gradient norm, in one list."""
    out = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for r in out if "loss" in r for x in (r["loss"], r["grad_norm"])]


def compile_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "compil" in r.getMessage()]


@pytest.fixture(scope="module")
def eager_rows(tmp_path_factory, data_dir):
    """The losses and gradient norms of the same runs, eager (grad_accum 1 and 2)."""
    out = {}
    for accum in (1, 2):
        trainer = make_trainer(tmp_path_factory.mktemp("eager"), data_dir, "run", compile=False, grad_accum=accum)
        out[accum] = rows(trainer.fit().run_dir)
    return out


CASES = {  # compiled calls of the tiny model: 2 blocks per forward
    "first forward": (1, "forward", 1), "first backward": (2, "backward", 1),
    "a later step": (7, "forward", 1),  # a recompile in step 4 (a new batch shape) fails
    "second micro-batch": (3, "forward", 2),  # the first micro-batch's gradients are dropped
    "second micro-batch backward": (4, "backward", 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_by_default_a_compiler_failure_trains_on_eagerly(monkeypatch, caplog, tmp_path, data_dir, eager_rows, case):
    at_call, where, accum = CASES[case]
    compiled_by_default(monkeypatch)
    calls = compiling_fails(monkeypatch, no_cxx(), at_call, where)
    trainer = make_trainer(tmp_path, data_dir, "run", grad_accum=accum)
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    with caplog.at_level(logging.WARNING, logger="candorlm"):
        result = trainer.fit()
    assert result.steps == STEPS and len(calls) == at_call  # nothing compiled is called after the failure
    # The same batches, random state and (no) leftover gradients as the eager run: the same figures
    # (both are fp32 eager on the CPU in one thread: equal but for nothing; approx only for safety).
    assert rows(result.run_dir) == pytest.approx(eager_rows[accum], rel=1e-6)
    [warning] = compile_warnings(caplog)  # one
    assert warning.startswith(f"compiling the training step failed, training goes on without compiling: {NO_CXX}")
    assert warning.endswith("(set train.compile = false not to try)")
    held = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert list(map(id, held)) == list(map(id, params))  # the optimizer steps the model's own parameters
    assert sorted(map(id, held)) == sorted(map(id, trainer.model.parameters()))
    ledger = json.loads((result.run_dir / "ledger.json").read_text())
    assert ledger["train"]["total"]["compile"]["value"] == "failed, eager"
    assert f"at step {(at_call - 1) // (2 * accum) + 1} " in ledger["train"]["total"]["compile"]["method"]


@pytest.mark.slow
def test_a_step_count_run_that_compiles_later_falls_back_too(monkeypatch, caplog, tmp_path, data_dir, eager_rows):
    """The policy's own path (CompileWhenItPays): compiles after timing its first steps, then fails."""
    monkeypatch.setattr(compile_policy, "PAYS_AFTER_S", 0.0)  # whatever is left pays
    calls = compiling_fails(monkeypatch, no_cxx(), 1)
    with caplog.at_level(logging.WARNING, logger="candorlm"):
        result = make_trainer(tmp_path, data_dir, "run").fit()
    assert len(calls) == 1 and rows(result.run_dir) == pytest.approx(eager_rows[1], rel=1e-6)
    assert len(compile_warnings(caplog)) == 1
    assert f"at step {1 + compile_policy.MEASURE_STEPS + 1} " in json.loads(
        (result.run_dir / "ledger.json").read_text())["train"]["total"]["compile"]["method"]


@pytest.mark.slow
def test_asked_for_a_compiler_failure_stops_in_one_line_keeping_the_checkpoints(monkeypatch, tmp_path, data_dir):
    compiling_fails(monkeypatch, no_cxx(), 7)  # in step 4, after the checkpoint of step 2
    trainer = make_trainer(tmp_path, data_dir, "run", compile=True, save_every=2)
    with pytest.raises(CandorError) as raised:
        trainer.fit()
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"could not compile the training step: {NO_CXX}")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert message.endswith("install a C++ compiler (Debian: apt-get install g++) or point $CXX at a working one, "
                            "or set train.compile = false to train without compiling; the last checkpoint, "
                            f"{checkpoints / 'step-000002'}, is complete: continue with the same command and "
                            f"--resume (instead of --overwrite)")
    assert [c.name for c in list_checkpoints(checkpoints)] == ["step-000002"]
    assert latest_checkpoint(checkpoints).name == "step-000002"  # complete: what --resume continues from
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000002"]  # nothing half-written


@pytest.mark.slow
@pytest.mark.parametrize("error", [ValueError("shapes (3, 32) and (64, 96) do not match"),
                                   torch.OutOfMemoryError("out of memory"), KeyboardInterrupt()],
                         ids=["shape error", "out of memory", "interrupt"])
def test_an_error_that_is_not_the_compilers_goes_on_up(monkeypatch, caplog, tmp_path, data_dir, error):
    compiled_by_default(monkeypatch)
    for n, where in enumerate(("forward", "backward")):
        compiling_fails(monkeypatch, error, 1, where)
        with caplog.at_level(logging.WARNING, logger="candorlm"), pytest.raises(type(error)) as raised:
            make_trainer(tmp_path, data_dir, f"run{n}").fit()
        assert raised.value is error
    assert not compile_warnings(caplog)


@pytest.mark.slow
@pytest.mark.parametrize("explicit", [False, True], ids=["by default", "train.compile = true"])
def test_a_ctrl_c_that_kills_the_compiler_saves_and_stops_as_an_interrupt(monkeypatch, caplog, tmp_path, data_dir,
                                                                          eager_rows, explicit):
    """Ctrl-C reaches the C++ compiler too (one process group): inductor then reports a failed compile.
    That is the user's stop: the step is done eagerly, the run saves and stops, no compile failure said."""
    import signal

    from torch._inductor.exc import CppCompileError, InductorError

    killed = InductorError(CppCompileError(["g++"], "g++: fatal error: Killed signal terminated program cc1plus"), None)
    calls: list[int] = []

    def compile(fn, **kw):
        def run(*a, **k):
            calls.append(1)
            if len(calls) == 7:  # step 4's first block: the Ctrl-C arrives while it compiles
                os.kill(os.getpid(), signal.SIGINT)
                raise killed
            return fn(*a, **k)
        return run

    monkeypatch.setattr(torch, "compile", compile)
    compiled_by_default(monkeypatch)
    trainer = make_trainer(tmp_path, data_dir, "run", **({"compile": True} if explicit else {}))
    with caplog.at_level(logging.INFO, logger="candorlm"):
        result = trainer.fit()
    assert result.interrupted and result.steps == 4 and len(calls) == 7
    assert rows(result.run_dir) == pytest.approx(eager_rows[1][:8], rel=1e-6)  # step 4 trained, eagerly, once
    assert latest_checkpoint(result.run_dir / "checkpoints").name == "step-000004"  # what --resume continues
    assert not compile_warnings(caplog)
    assert any("interrupted while compiling" in r.getMessage() for r in caplog.records)
    assert "compile" not in json.loads((result.run_dir / "ledger.json").read_text())["train"]["total"]


def guarded(error: BaseException, explicit: bool, distributed: bool = False):
    """A step that fails with `error` inside a CompileFallback that believes it runs compiled code."""
    def step(index):
        raise error

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return CompileFallback(optimizer, compiled=lambda: True, to_eager=lambda: None, snapshot=lambda: None,
                           rewind=lambda s: None, explicit=explicit, distributed=distributed).wrap(step)


def test_several_processes_stop_in_one_line_even_by_default():
    """A rank cannot turn back alone while the others wait for it in the gradients' all-reduce."""
    from torch._dynamo.exc import Unsupported

    with pytest.raises(CandorError, match=r"^could not compile the training step: call to an unsupported function; "
                                          r"with several processes .*: set train.compile = false$"):
        guarded(Unsupported("call to an unsupported function"), explicit=False, distributed=True)(0)


def test_the_stop_line_says_what_failed_and_what_to_do():
    from torch._dynamo.exc import Unsupported
    from torch._inductor.exc import CppCompileError, InductorError

    header = InductorError(CppCompileError(["g++", "x.cpp"], "In file included from x.cpp:1:\n"
                                           "x.cpp:1:10: fatal error: Python.h: No such file or directory\n"), None)
    said = {}
    errors = {"no compiler": no_cxx(), "header": header, "dynamo": Unsupported("an unsupported call")}
    for name, error in errors.items():
        with pytest.raises(CandorError) as raised:
            guarded(error, explicit=True)(0)
        said[name] = str(raised.value)
        assert "\n" not in said[name] and said[name].endswith("set train.compile = false to train without compiling")
    assert said["no compiler"].startswith(f"could not compile the training step: {NO_CXX}")
    assert "; install a C++ compiler (Debian: apt-get install g++) or point $CXX at a working one, or " \
        in said["no compiler"]
    assert said["header"].startswith("could not compile the training step: CppCompileError: C++ compile error: "
                                     "x.cpp:1:10: fatal error: Python.h: No such file or directory; fix what the C++ "
                                     "compiler says")
    assert said["dynamo"] == ("could not compile the training step: an unsupported call; set train.compile = false to "
                              "train without compiling")  # not the C++ compiler's: nothing to install


# ------------------------------------------------------------ inductor's real C++ build, through the CLI
def broken_cxx(tmp_path) -> dict[str, str]:
    """A $CXX that fails, and an empty inductor cache (a cached kernel would need no compiler)."""
    return {**os.environ, "CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
            "CANDORLM_PROGRESS": "0", "COLUMNS": "200"}


def train_args(data_dir, out, *more: str) -> list[str]:
    sets = [f"--set=model.{k}={v}" for k, v in TINY_MODEL.items()]
    return ["train", "--data", str(data_dir), "--out", str(out), "--max-steps", str(STEPS), "--eval-every", "100",
            "--save-every", "100", "--seed", "7", "--set=train.threads=1", "--set=train.precision=fp32",
            "--set=train.device=cpu", *sets, *more]


@pytest.mark.slow
def test_cli_compile_true_with_a_broken_cxx_exits_2_in_one_line(tmp_path, data_dir):
    proc = subprocess.run([sys.executable, "-m", "candorlm", *train_args(data_dir, tmp_path / "r",
                                                                          "--set=train.compile=true")],
                          capture_output=True, text=True, env=broken_cxx(tmp_path))
    assert_clean_error(proc, "could not compile the training step:", "install a C++ compiler",
                       "train.compile = false")
    assert len([line for line in proc.stderr.splitlines() if "error:" in line]) == 1


@pytest.mark.slow
def test_cli_default_with_a_broken_cxx_trains_on_eagerly(tmp_path, data_dir):
    """The default policy's step-count path, compiling from step 7 (PAYS_AFTER_S patched to 0), reaches
    inductor's C++ build with CXX=/bin/false; the run ends well with the eager run's losses."""
    eager = run_cli(*train_args(data_dir, tmp_path / "eager", "--set=train.compile=false"))
    script = ("import sys; from candorlm.training import compile_policy; compile_policy.PAYS_AFTER_S = 0.0; "
              "from candorlm.cli import main; main(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", script, *train_args(data_dir, tmp_path / "r")],
                          capture_output=True, text=True, env=broken_cxx(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and eager.returncode == 0
    said = " ".join(proc.stderr.split())
    assert said.count("compiling the training step failed") == 1, proc.stderr
    assert rows(tmp_path / "r") == pytest.approx(rows(tmp_path / "eager"), rel=1e-6)
