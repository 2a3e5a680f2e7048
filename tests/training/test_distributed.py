"""Training in several processes on the CPU with gloo: DDP and FSDP2 against one process with
gradient accumulation over the same windows, checkpoints across world sizes, Ctrl-C, and the
GPU bench's dry run. Real torchrun processes throughout (2 ranks), tiny model, a few steps."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from candorlm.errors import CandorError
from candorlm.lm import load
from candorlm.shards import BatchSampler, ShardSet
from candorlm.pretrain import train
from candorlm.checkpoint.retention import list_checkpoints
from candorlm.training.distributed import World
from candorlm.training.launch import launch, strip_option
from tests.conftest import ROOT, TINY_MODEL, TINY_TRAIN

STEPS = 6
TOL = 1e-5  # fp32: the same arithmetic summed in another order
# The reference: 1 process, 2 micro-batches of 4 windows per step.
REF = dict(TINY_TRAIN, grad_accum=2, save_every=3)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "candorlm"]
CANDORLM = [sys.executable, "-m", "candorlm"]


def _env():
    return dict(os.environ, CANDORLM_PROGRESS="0", OMP_NUM_THREADS="1")


def _train_args(data_dir, out, steps=STEPS, **train_settings):
    settings = {**TINY_TRAIN, "save_every": 3, **train_settings}
    sets = [f"--set=model.{k}={v}" for k, v in TINY_MODEL.items()]
    sets += [f"--set=train.{k}={json.dumps(v)}" for k, v in settings.items()]
    return ["train", "--data", str(data_dir), "--out", str(out), "--max-steps", str(steps), *sets]


def _run(cmd, timeout=300):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run, key="loss"):
    return {r["step"]: r[key] for r in _rows(run) if key in r}


def _assert_same_trajectory(run, ref, steps=range(1, STEPS + 1)):
    a, b = _losses(run), _losses(ref)
    for s in steps:
        assert abs(a[s] - b[s]) <= TOL, (s, a[s], b[s])


def _assert_plain_model_like(run, ref):
    """run/model.safetensors is one plain file, with the weights the single process trained."""
    assert not (run / "model").exists() and not list(run.glob("*.safetensors.index.json"))
    ours, theirs = load_file(run / "model.safetensors"), load_file(ref / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[k], theirs[k], atol=TOL) for k in ours)


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("dist") / "ref"
    train(out, data=data_dir, model=TINY_MODEL, max_steps=STEPS, **REF)
    return out


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("dist") / "fsdp"
    _run(TORCHRUN + _train_args(data_dir, out, strategy="fsdp"))
    return out


# ---------------------------------------------------------------- equivalence


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process_accumulating(tmp_path, data_dir, ref_run):
    out = tmp_path / "ddp"
    _run(TORCHRUN + _train_args(data_dir, out, strategy="ddp"))
    _assert_same_trajectory(out, ref_run)
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # rank 0 alone writes metrics
    assert abs(_losses(out, "val_loss")[STEPS] - _losses(ref_run, "val_loss")[STEPS]) <= TOL
    assert rows[-1]["tokens_seen"] == STEPS * 2 * 4 * 32  # both ranks' tokens
    state = json.loads((list_checkpoints(out / "checkpoints")[-1] / "state.json").read_text())
    assert state["world_size"] == 2 and state["data"] == {"epoch": 0, "position": STEPS * 8}
    assert (list_checkpoints(out / "checkpoints")[-1] / "model.safetensors").is_file()  # the single-file format
    total = json.loads((out / "ledger.json").read_text())["train"]["total"]
    assert "x 2 processes" in total["device"]["method"]
    assert total["tokens"]["value"] == STEPS * 8 * 32
    assert total["device_time"]["value"] > total["wall_time"]["value"]  # two processes' time, whatever their timing
    for name in ("model.safetensors", "tokenizer.json", "config.toml", "ledger.json"):
        assert (out / name).is_file()


@pytest.mark.slow
def test_fsdp_two_ranks_match_one_process_accumulating(fsdp_run, ref_run):
    _assert_same_trajectory(fsdp_run, ref_run)
    assert [r["step"] for r in _rows(fsdp_run)] == list(range(1, STEPS + 1))
    last = list_checkpoints(fsdp_run / "checkpoints")[-1]
    shards = sorted(p.name for p in (last / "model").iterdir())
    assert len(shards) == 2 and all(n.endswith(".safetensors") for n in shards)  # one per rank, no pickle
    assert not (last / "model.safetensors").exists()
    state = json.loads((last / "state.json").read_text())
    assert state["format"] == "sharded" and state["strategy"] == "fsdp" and len(state["sha256"]) == 4
    # The exported model is one plain file with the same weights as the single process's.
    _assert_plain_model_like(fsdp_run, ref_run)


# ---------------------------------------------------------------- world-size changes


def _copy_at_step_3(src, run):
    """A copy of run `src` that holds only its step-3 checkpoint (no final weights): a run
    interrupted after 3 steps."""
    shutil.copytree(src, run)
    for ckpt in list_checkpoints(run / "checkpoints"):
        if ckpt.name != "step-000003":
            shutil.rmtree(ckpt)
    (run / "model.safetensors").unlink()
    return run


@pytest.mark.slow
def test_fsdp_run_of_two_resumes_in_one_process(tmp_path, data_dir, fsdp_run, ref_run):
    run = _copy_at_step_3(fsdp_run, tmp_path / "two-to-one")
    # One process keeps the global batch with 2 micro-batches; the data cursor is global.
    train(run, data=data_dir, model=TINY_MODEL, max_steps=STEPS, resume=True, **dict(REF, strategy="fsdp"))
    assert sorted(_losses(run)) == list(range(1, STEPS + 1))
    _assert_same_trajectory(run, ref_run)
    _assert_plain_model_like(run, ref_run)


@pytest.mark.slow
def test_one_process_run_resumes_in_two_fsdp_ranks(tmp_path, data_dir, ref_run):
    run = _copy_at_step_3(ref_run, tmp_path / "one-to-two")
    # `candorlm train --nproc 2`: 2 ranks x 2 micro-batches of 2 windows = the same 8 windows a step.
    args = _train_args(data_dir, run, strategy="fsdp", batch_size=2, grad_accum=2)
    _run(CANDORLM + [*args, "--nproc", "2", "--resume"])
    assert sorted(_losses(run)) == list(range(1, STEPS + 1))
    _assert_same_trajectory(run, ref_run)
    assert (list_checkpoints(run / "checkpoints")[-1] / "model").is_dir()  # now saved sharded
    _assert_plain_model_like(run, ref_run)


@pytest.mark.slow
def test_sharded_checkpoint_loads_for_generation(tmp_path, fsdp_run):
    from candorlm.explain.subject import load_subject
    from candorlm.tasks.base import load_base

    run = tmp_path / "ckpt-only"
    shutil.copytree(fsdp_run, run)
    (run / "model.safetensors").unlink()  # as while it trains: the newest checkpoint is read
    (run / "SHA256SUMS").unlink()  # (training writes the manifest at the end)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        a, b = load(run).model(ids), load(fsdp_run).model(ids)
        assert torch.equal(a, b)
        # Every reader opens runs through load_run, so explain and fine-tuning read sharded checkpoints too.
        assert torch.equal(load_subject(run).model(ids), b)
        assert torch.equal(load_base(run).build().eval()(ids), b)


# ---------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_at_the_same_step(tmp_path, data_dir, ref_run):
    run = tmp_path / "interrupted"
    args = _train_args(data_dir, run, steps=100000, strategy="ddp", batch_size=2, grad_accum=2, save_every=1)
    # A new session, so that the signal below reaches the launcher and both workers, as Ctrl-C in a terminal does.
    proc = subprocess.Popen(CANDORLM + [*args, "--nproc", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=ROOT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            found = list_checkpoints(run / "checkpoints")
            if found and int(found[-1].name[5:]) >= 2:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-4000:]
    assert "Traceback" not in err and "--resume" in out + err
    last = list_checkpoints(run / "checkpoints")[-1]
    steps = [r["step"] for r in _rows(run)]
    assert int(last.name[5:]) == steps[-1] == len(steps)
    # DDP with 2 micro-batches of 2 on each rank (no_sync between them) is still the same run.
    _assert_same_trajectory(run, ref_run, steps=range(1, min(STEPS, steps[-1]) + 1))


# ---------------------------------------------------------------- the end of a run, many times over

REPEATS = 5  # per strategy: a run that failed 4 times in 10 would pass 10 in a row with chance 0.6**10 < 1%


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_rank_runs_end_with_model_and_ledger_every_time(tmp_path, data_dir, strategy):
    """`candorlm train --nproc 2` with the CLI's default threads (no one-thread override) and no
    save or evaluation before the end, as in the issue: every run ends with its model and ledger.
    The first FSDP run names any mismatched collectives (TORCH_DISTRIBUTED_DEBUG=DETAIL: its
    wrapper checks that every collective's kind and sizes match across ranks; under it torch
    2.13's DDP segfaults while it logs its construction, so DDP runs without it)."""
    env = {k: v for k, v in _env().items() if k != "OMP_NUM_THREADS"}
    for i in range(REPEATS):
        out = tmp_path / f"run{i}"
        args = _train_args(data_dir, out, steps=4, strategy=strategy, save_every=1000, eval_every=1000)
        run_env = dict(env, TORCH_DISTRIBUTED_DEBUG="DETAIL") if i == 0 and strategy == "fsdp" else env
        proc = subprocess.run(CANDORLM + [*args, "--nproc", "2"], capture_output=True, text=True, timeout=300,
                              env=run_env, cwd=ROOT)
        assert proc.returncode == 0, f"run {i}: " + proc.stdout[-2000:] + proc.stderr[-6000:]
        for name in ("model.safetensors", "ledger.json", "SHA256SUMS"):
            assert (out / name).is_file(), (i, name)
        assert json.loads((out / "ledger.json").read_text())["train"]["total"]["tokens"]["value"] == 4 * 2 * 4 * 32
        assert [c.name for c in list_checkpoints(out / "checkpoints")] == ["step-000004"]


def test_a_failed_run_says_what_is_left_to_resume(tmp_path):
    from candorlm.training.distributed import resumable

    assert "no complete checkpoint yet" in resumable(tmp_path / "nothing")


# ---------------------------------------------------------------- pieces, in this process


def test_ranks_split_the_single_process_batch(data_dir):
    windows = ShardSet(data_dir).windows("train", 32)
    one = BatchSampler(windows, 4, seed=3)
    ranks = [BatchSampler(windows, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(len(windows) // 4 + 3):  # across an epoch boundary
        x, _ = one.next_batch()
        parts = [s.next_batch()[0] for s in ranks]
        assert torch.equal(torch.stack([parts[0], parts[1]], 1).reshape(4, -1), x)
    assert ranks[0].state_dict() == ranks[1].state_dict() == one.state_dict()
    assert one.steps_per_epoch(2) == ranks[0].steps_per_epoch(2) == -(-len(windows) // 8)


def test_a_world_of_one_is_the_identity():
    world = World()
    t = torch.tensor(2.5)
    assert world.agree.mean(t) == 2.5 and world.any(True) and not world.any(False)
    assert world.agree.from_main([3.0]) == [3.0] and world.agree.flags(True, False) == [True, False]
    assert world.reduce([1.0, 2.0], "max") == [1.0, 2.0]
    assert not world.distributed and world.is_main and world.cpu_threads(None) is None


def test_launcher_arguments(monkeypatch):
    assert strip_option(["train", "--nproc", "2", "--out", "r", "--nproc=4"], "--nproc") == ["train", "--out", "r"]
    with pytest.raises(CandorError, match="at least 1"):
        launch(0, ["train"])
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(CandorError, match="leave --nproc out"):
        launch(2, ["train"])


# ---------------------------------------------------------------- the GPU bench


@pytest.mark.slow
def test_gpu_bench_dry_run(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], capture_output=True, text=True,
                          timeout=300, env=dict(_env(), WORK=str(tmp_path), PYTHON=sys.executable), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("json "))
    result = json.loads(line[5:])
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1 and result["peak_memory_gib"] > 0
    assert result["fused_adamw"] and result["timed_steps"] == 3
    assert all(torch.isfinite(torch.tensor(result["loss_first_last"])))


def test_dp_sgd_is_refused_with_several_processes(tmp_path, data_dir, monkeypatch):
    # A world of 2 as torchrun would make it, without starting processes: the refusal comes first.
    monkeypatch.setattr(World, "from_env", classmethod(lambda cls, strategy, device: cls(world_size=2, strategy=strategy)))
    monkeypatch.setattr(World, "barrier", lambda self: None)
    with pytest.raises(CandorError, match="--dp-epsilon trains in one process"):
        train(tmp_path / "dp", data=data_dir, model=TINY_MODEL, max_steps=2, dp_epsilon=8.0, **TINY_TRAIN)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_meet_through_torchrun_rendezvous(tmp_path, data_dir):
    """README's multi-node recipe, with both "nodes" on this machine: two torchrun agents,
    --nnodes 2 and a c10d rendezvous, one process each."""
    out = tmp_path / "two-nodes"
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "test",
             "-m", "candorlm", *_train_args(data_dir, out, steps=3, strategy="fsdp")]
    nodes = [subprocess.Popen(agent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
             for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=240) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    assert [node.returncode for node in nodes] == [0, 0], [o[1][-3000:] for o in outputs]
    assert "x 2 processes" in json.loads((out / "ledger.json").read_text())["train"]["total"]["device"]["method"]
    assert [r["step"] for r in _rows(out)] == [1, 2, 3]
    assert len(list((list_checkpoints(out / "checkpoints")[-1] / "model").iterdir())) == 2


def test_slurm_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(ROOT / "docs" / "slurm.sbatch")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
