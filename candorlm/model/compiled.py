"""The training forward with its blocks compiled: one `torch.compile`d function that every block
runs through (regional compilation).

Why blocks, not the whole model: on the CPU, compiling the whole model graph-breaks at the
chunked loss (model/loss.py asks whether every token counts) and unrolls every block into one
graph (178 s of cold compile at the small preset, against 85 s for the blocks, both in wall
seconds on a loaded core); one function that takes the block as an argument is traced once and
serves every block of the model (the parameters are inputs of the graph, not constants), so its
cold compile does not grow with the depth. Inductor fuses the elementwise chains (RMSNorm,
rotary positions, SwiGLU's gate, the residual adds) into generated C++ loops; the written-out
operators of model/ops.py step aside while it traces (their composites fuse better). Embedding,
final norm and loss stay eager.

Only the training pass goes through it: with gradients on, no KV cache, and no hook on the
block (a hook point with a function attached, or a module hook: Opacus, explain/) — anything
else (evaluation, generation, interpretability) runs the eager blocks, so that they never
trigger a compile of their own. The compiled function is kept in the model's `__dict__`, not as
a module: parameter names, the state dict and checkpoints are exactly the eager model's.

Compiling costs time once per process (a cold cache: tens of seconds on one core; inductor keeps
its kernels on disk, so a later process with the same shapes starts in seconds). Whether that
pays depends on the width and the run's length: training/trainer.py decides (`compile_pays`).

`compile_errors()`: what torch.compile raises when it cannot compile, for a caller that then runs
eagerly (generate.py's decode step, training/compile_fallback.py's training step); anything else
a compiled call raises is a real error. `failure_reason` names one in a line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from candorlm.model.fused import watched
from candorlm.model.hooks import HookPoint

_KEY = "_compiled_block"  # in the model's __dict__: invisible to the state dict and to module traversal


def _run_block(block: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return block(x, *args, **kwargs)


def _trunks(model: nn.Module) -> list[nn.Module]:
    """`model` and every module in it that runs blocks (an encoder-decoder's encoder)."""
    return [m for m in model.modules() if isinstance(getattr(m, "blocks", None), nn.ModuleList)]


def compile_blocks(model: nn.Module, **options: Any) -> nn.Module:
    """Make `model`'s training passes run each block through one compiled function (in place;
    returns `model`); an encoder-decoder's encoder shares it. `options` go to `torch.compile`
    (mode, dynamic, options...)."""
    trunks = _trunks(model)
    if not trunks:
        raise TypeError(f"{type(model).__name__} has no `blocks` to compile")
    fn = torch.compile(_run_block, **options)
    for trunk in trunks:
        trunk.__dict__[_KEY] = fn
    return model


def uncompile_blocks(model: nn.Module) -> None:
    """Back to eager blocks (the compiled graphs are dropped with the function)."""
    for trunk in _trunks(model):
        trunk.__dict__.pop(_KEY, None)


def is_compiled(model: nn.Module) -> bool:
    return _KEY in model.__dict__


def block_runner(model: nn.Module, block: nn.Module, cached: bool) -> Callable[..., torch.Tensor]:
    """What runs `block` in this pass: the compiled function during a training pass of a compiled
    model, else the block itself (see the module's header for when)."""
    fn = model.__dict__.get(_KEY)
    if fn is None or cached or not torch.is_grad_enabled() or _hooked(block):
        return block
    return lambda x, *args, **kwargs: fn(block, x, *args, **kwargs)


def compile_errors() -> tuple[type[BaseException], ...]:
    """The exceptions by which torch.compile says it could not compile: dynamo cannot trace the
    code (`Unsupported`; `UserError`, "valid in eager, but not supported in TorchDynamo"), its own
    bug (`InternalTorchDynamoError`), the backend failed (`BackendCompilerFailed`: inductor wraps
    everything that fails while it compiles, a missing or broken C++ compiler included, in its
    subclass `InductorError`), the recompile limit reached under fullgraph=True, a size marked
    dynamic that the trace made constant (raised as the guards are made), and inductor's compiler
    errors should one come unwrapped. Not among them: `TorchRuntimeError`, which is the traced
    code's own error met while tracing (a shape mismatch: eager raises it too), nor anything the
    compiled code raises when it runs (an out-of-memory, a KeyboardInterrupt).

    A function, not a constant: torch._dynamo and torch._inductor are imported only when asked
    (`except compile_errors():` evaluates it only when something was raised)."""
    from torch._dynamo import exc as dynamo
    from torch._inductor import exc as inductor
    from torch.fx.experimental import symbolic_shapes

    names = ((dynamo, ("Unsupported", "UserError", "InternalTorchDynamoError", "BackendCompilerFailed",
                       "FailOnRecompileLimitHit")),
             (inductor, ("InvalidCxxCompiler", "CppCompileError", "CppWrapperCodegenError")),
             (symbolic_shapes, ("ConstraintViolationError",)))  # a size marked dynamic that the trace fixed
    # getattr: the package accepts torch >= 2.4, and not every name is in every release
    return tuple(cls for module, found in names for name in found if (cls := getattr(module, name, None)) is not None)


def failure_reason(error: BaseException) -> str:
    """The first line of what a compile failure says, for a one-line warning or error: a backend's
    failure ("backend='inductor' raised:" and then the cause) is named by its cause."""
    cause = getattr(error, "inner_exception", None)
    text = f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
    line = (text.strip().splitlines() or [type(error).__name__])[0]
    output = getattr(cause if cause is not None else error, "output", None)  # CppCompileError: the compiler's words
    if isinstance(output, str):
        said = [s.strip() for s in output.splitlines() if s.strip()]
        line += next((f": {s}" for s in said if "error" in s.lower()), f": {said[0]}" if said else "")
    return line


def cxx_failed(error: BaseException) -> str | None:
    """Whether `error` (one of `compile_errors()`) is the C++ compiler's: "InvalidCxxCompiler" when
    none works ($CXX, g++), "CppCompileError" when it failed on inductor's code (a missing header,
    an internal error), else None."""
    from torch._inductor import exc as inductor

    for name in ("InvalidCxxCompiler", "CppCompileError"):
        cls = getattr(inductor, name, None)
        if cls is not None and (isinstance(error, cls) or isinstance(getattr(error, "inner_exception", None), cls)):
            return name
    return None


def recompile_limit_hit(error: BaseException) -> bool:
    """Whether `error` says a fullgraph function reached its recompile limit (the graphs dynamo keeps
    per function; past it nothing more is compiled for it): torch 2.13's FailOnRecompileLimitHit."""
    from torch._dynamo import exc as dynamo

    limit = getattr(dynamo, "FailOnRecompileLimitHit", None)
    return limit is not None and isinstance(error, limit)


def _hooked(block: nn.Module) -> bool:
    modules = list(block.modules())
    return watched(*modules) or any(m.fns for m in modules if isinstance(m, HookPoint))
