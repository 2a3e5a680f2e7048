"""The `candorlm` command line: a table of command names -> the functions that implement them.

Each function lives in a module by area (data, train, inference, tasks, insight, privacy,
serve), parses nothing itself and calls the library; its docstring is its --help, and its options
come from the library function it calls (candorlm/cli/options.py). Errors a user can fix print
one line and exit 2; Ctrl-C exits 130; nothing prints a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import Sequence

import typer
import typer.core

from candorlm.cli import extras
from candorlm.cli.dispatch import Table, table_group
from candorlm.errors import CandorError

COMMANDS: Table = {
    "prepare": "data:prepare",
    "tokenizer": ("Train tokenizers.", {"train": "data:train_tokenizer"}),
    "train": "train:train",
    "generate": "inference:generate",
    "chat": "inference:chat",
    "export": "data:export",
    "import": "data:import_hf",
    "demo": "train:demo",
    "finetune": "tasks:finetune",
    "eval": "tasks:evaluate",
    "predict": "tasks:predict",
    "explain": "insight:explain",
    "estimate": "insight:estimate",
    "ledger": "insight:ledger",
    "sweep": "train:sweep",
    "plan": "train:plan",
    "report": "insight:report",
    "scrub": "privacy:scrub",
    "keygen": "privacy:keygen",
    "encrypt": "privacy:encrypt",
    "decrypt": "privacy:decrypt",
    "verify": "privacy:verify",
    "backup": "privacy:backup",
    "audit": "privacy:audit",
    "serve": "serve:serve",
    "keys": ("Manage API keys for `candorlm serve`.",
             {"add": "serve:add_key", "list": "serve:list_keys", "revoke": "serve:revoke_key"}),
}

HELP_WIDTH = 100  # --help's width when stdout is not a terminal: wide enough that no word is cut

app = typer.Typer(
    cls=table_group(COMMANDS),
    name="candorlm",
    help="Train transformer language models from raw text, and be honest about their limits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _setup() -> None:
    from rich.logging import RichHandler

    from candorlm.progress import log_console

    handler = RichHandler(console=log_console, show_time=False, show_path=False, markup=False)
    # Our own messages at INFO; other libraries' only from WARNING up (fontTools' subsetter alone
    # logs a hundred lines per page at INFO).
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("candorlm").setLevel(logging.INFO)


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit with `code`."""
    from rich.markup import escape

    from candorlm.progress import console

    console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


# A path the user named that cannot be read or written is the user's to fix, not a bug: one line each.
_PATH_ERRORS = {
    errno.ENOENT: "check that the path and the folders on the way exist",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder: name a file",
    errno.EEXIST: "something of that name is already there: choose another path",
    errno.EACCES: "no permission there: choose a path you can write, or change its permissions",
    errno.EPERM: "not permitted there: choose a path you can write",
    errno.EROFS: "that file system is read-only: choose another path",
    errno.ENOSPC: "the disk is full: free some space and run it again",
    errno.EDQUOT: "your disk quota is used up: free some space and run it again",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ELOOP: "its symbolic links go round in a loop: choose another path",
}


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; every way it can end is an exit status and at most one line of error."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not sys.stdout.isatty() and not os.environ.get("TERMINAL_WIDTH"):
        from typer import rich_utils

        rich_utils.MAX_WIDTH = HELP_WIDTH  # off a terminal Rich would cut help at 80 columns, mid-word
    click = _click()
    aborted = (typer.Abort, getattr(click.exceptions, "Abort", typer.Abort), KeyboardInterrupt)
    try:
        code = typer.main.get_command(app).main(args, prog_name="candorlm", standalone_mode=False)
    except CandorError as exc:
        fail(str(exc), exc.exit_code)
    except click.exceptions.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(exc.exit_code)  # the help was printed
        where = exc.ctx.command_path if exc.ctx else "candorlm"
        fail(f"{exc.format_message()} (see `{where} --help`)", exc.exit_code)
    except click.exceptions.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except aborted:
        fail("interrupted", 130)  # (each command has cleaned up after itself by now)
    except ModuleNotFoundError as exc:
        extra = extras.extra_for(exc.name)
        if extra is None or os.environ.get("CANDORLM_DEBUG"):
            raise
        fail(str(extras.MissingExtra(exc.name or "?", extra, " ".join(args[:1]) or None)))
    except Exception as exc:  # noqa: BLE001 (a bug: say so in one line; the traceback on request)
        if os.environ.get("CANDORLM_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename is not None and exc.errno in _PATH_ERRORS:
            where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else f"{exc.filename}"
            fail(f"{exc.strerror}: {where}; {_PATH_ERRORS[exc.errno]}")
        fail(f"unexpected {type(exc).__name__}: {exc} (a bug in candorlm; CANDORLM_DEBUG=1 shows the traceback)", 1)
    if code == 130:  # Ctrl-C (click hands it back as a status): one line, not silence
        fail("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


def _click():
    """The click that typer runs on: its own copy (typer._click) in recent versions, else click."""
    vendored = getattr(typer.core, "_click", None)
    if vendored is not None:
        return vendored
    import click

    return click
