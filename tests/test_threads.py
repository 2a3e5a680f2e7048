"""The default thread count leaves out the cores other work is using."""

import os

import pytest
import torch

from candorlm import device


@pytest.fixture(autouse=True)
def _keep_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_idle_cpus_reads_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    assert device.idle_cpus(0.0, str(stat)) is None  # no time passed between the two reads
    assert device.idle_cpus(0.0, str(tmp_path / "missing")) is None
    if os.path.exists("/proc/stat"):
        idle = device.idle_cpus(0.05)
        assert idle is not None and 0 <= idle <= (os.cpu_count() or 1) + 1e-6


@pytest.mark.parametrize("idle, expected", [(2.0, 2), (1.6, 2), (1.1, 1), (0.9, 1), (0.1, 1), (None, 2)])
def test_busy_cores_are_left_out_by_default(monkeypatch, idle, expected):
    monkeypatch.setattr(device, "physical_cores", lambda: 2)
    monkeypatch.setattr(device, "idle_cpus", lambda: idle)
    assert device.set_threads(None) == expected
    assert torch.get_num_threads() == expected


def test_threads_asked_for_are_used_whatever_the_load(monkeypatch):
    monkeypatch.setattr(device, "physical_cores", lambda: 2)
    monkeypatch.setattr(device, "idle_cpus", lambda: 0.0)
    assert device.set_threads(2) == 2 and torch.get_num_threads() == 2
