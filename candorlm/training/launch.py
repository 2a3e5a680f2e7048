"""`candorlm train --nproc N`: start N training processes on this machine through torchrun.

This process becomes torchrun's agent (torch.distributed.run, in-process): it starts the
workers (`python -m candorlm train ...` with the same arguments, less --nproc), watches them,
and reports how they ended in one line rather than torchrun's report. A Ctrl-C reaches the
workers, which save a checkpoint at the same step and stop; the agent waits for them (up to
TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds, here 300 unless set) before it kills them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from candorlm.device import physical_cores
from candorlm.errors import CandorError
from candorlm.training.distributed import launched_by_torchrun, resumable

log = logging.getLogger("candorlm")

INTERRUPTED = 130


def strip_option(argv: Sequence[str], name: str) -> list[str]:
    """argv without `name VALUE` and `name=VALUE`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def option_value(argv: Sequence[str], *names: str) -> str | None:
    """The value of the last `NAME VALUE` or `NAME=VALUE` in argv, for any of `names`."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg[len(name) + 1:]
    return value


def torchrun_args(nproc: int, candorlm_args: Sequence[str]) -> list[str]:
    """torchrun's arguments for `nproc` processes on this machine running `python -m candorlm ARGS`."""
    return ["--standalone", f"--nproc-per-node={nproc}", "--module", "candorlm", *candorlm_args]


def launch(nproc: int, candorlm_args: Sequence[str]) -> int:
    """Run `candorlm ARGS` in `nproc` processes under torchrun; returns the exit status to use
    (0 done, 130 interrupted after saving, else the first failed worker's status)."""
    if nproc < 1:
        raise CandorError(f"--nproc must be at least 1, got {nproc}")
    if launched_by_torchrun():
        raise CandorError("--nproc starts torchrun itself; under torchrun (or SLURM's srun with torchrun) leave "
                          "--nproc out")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # Each CPU worker sets its own thread count (the node's cores shared among them); setting the
    # variable here also keeps torchrun from printing its OMP_NUM_THREADS banner.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, physical_cores() // nproc)))
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "300")  # time for the workers' last save
    args = get_args_parser().parse_args(torchrun_args(nproc, candorlm_args))
    try:
        run(args)
    except SignalException as exc:
        log.warning("stopped by %s; the workers saved a checkpoint at the step they reached", exc.sigval.name)
        return INTERRUPTED
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in sorted(exc.failures.items())}
        if all(code == INTERRUPTED for code in codes.values()):
            return INTERRUPTED
        listed = ", ".join(f"rank {rank}: exit {code}" for rank, code in codes.items())
        out = option_value(candorlm_args, "--out", "-o")
        left = f"; {resumable(Path(out))}" if out else ""
        log.error("training processes failed (%s; their messages are above)%s", listed, left)
        # A negative code is a worker torchrun stopped because another failed: report the one that failed.
        failed = [code for code in codes.values() if code and code > 0]
        return failed[0] if failed else 1
    return 0
