"""Fixtures shared by the generation tests."""

import pytest
import torch


@pytest.fixture
def eager_dynamo(monkeypatch):
    """torch.compile with dynamo's own "eager" backend: dynamo traces, guards and counts graphs as ever,
    but no C++ is compiled (seconds, not a minute). Dynamo's graphs of other tests are dropped first:
    they would count against the limit, which is per function, not per model."""
    real = torch.compile

    def compile_eager(fn, *, options=None, recompile_limit=None, **kw):
        return real(fn, backend="eager", recompile_limit=recompile_limit, **kw)

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", compile_eager)
    yield
    torch._dynamo.reset()

