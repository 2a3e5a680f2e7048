"""A command's options come from the library function it calls.

    @options_from("candorlm.prepare:prepare")
    def prepare(key_file: KeyFile = None, **options: Any) -> None:
        ...

When the command is built (only when it runs or its --help is shown, so `candorlm --help` imports
no library), each parameter of `candorlm.prepare.prepare` that the command does not declare
itself becomes a flag: its type and default from the signature, its help from the docstring's
`Args:` section (Google style). So a default lives in one place, the library, and a new library
parameter documented under `Args:` is a new flag with nothing to change here. What a command
declares itself wins: a CLI-only flag, or a library parameter the command line takes differently.

Conventions, here for every command: a parameter without a default is a positional argument
(inputs), except `out` and those given flag names, which are required options; `out` is
`-o/--out` and `overrides` is `--set`; a bool is `--name/--no-name`, or one flag when it is named
`no_...` or given one flag name; an option named preset or presets lists the presets.
"""

from __future__ import annotations

import collections.abc
import copy
import importlib
import inspect
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, List, Literal, Optional, TypeVar, Union

import typer
from rich.markup import escape

from candorlm.errors import CandorError

F = TypeVar("F", bound=Callable)

# flag names every command spells the same way
CONVENTIONS: dict[str, tuple[str, ...]] = {"out": ("-o", "--out"), "overrides": ("--set",)}

KeyFile = Annotated[Optional[Path], typer.Option(
    "--key-file", help="Key file (from `candorlm keygen`) for encrypted files; without it, the key in $CANDORLM_KEY, "
    "$CANDORLM_KEY_FILE or $CANDORLM_PASSPHRASE, if one is set.")]
NoVerify = Annotated[bool, typer.Option(
    "--no-verify", help="Load the run without checking its files against its SHA256SUMS (only if you know why).")]
Overrides = Annotated[List[str], typer.Option("--set", help="Override a config value: --set train.lr=1e-3 "
                                              "(repeatable).")]


@dataclass(frozen=True)
class Source:
    """Where a command's derived options come from: `module:name` of a function or class."""

    target: str
    skip: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    help_prefix: str = ""

    def resolve(self) -> Callable:
        module, _, name = self.target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj


def options_from(target: str, *, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                 flags: dict[str, str | tuple[str, ...]] | None = None, help_prefix: str = "") -> Callable[[F], F]:
    """Give the command the parameters of `target` ("module:function") as options.

    skip: parameters the command line does not offer. only: offer just these. flags: other flag
    names than the parameter's (`{"hardware_name": "--hardware"}`); a parameter given a flag
    name is an option even without a default. help_prefix: put before each help (`"--domains: "`).
    A command may take options from several targets (decorate it once per target); the first wins.
    """
    named = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in (flags or {}).items()}
    source = Source(target, tuple(skip), tuple(only) if only is not None else None, named, help_prefix)

    def mark(func: F) -> F:
        # decorators apply bottom-up: keep the order they are written in
        func.__candorlm_options__ = [source, *getattr(func, "__candorlm_options__", [])]  # type: ignore[attr-defined]
        return func

    return mark


def doc_args(obj: Any) -> dict[str, str]:
    """The `Args:` (or `Attributes:`) section of a docstring: parameter name -> its one-paragraph help."""
    found: dict[str, str] = {}
    section, name, indent = False, None, None
    for line in (inspect.getdoc(obj) or "").splitlines():
        if line.strip() in ("Args:", "Arguments:", "Attributes:", "Parameters:"):
            section, name, indent = True, None, None
            continue
        if not section:
            continue
        if line and not line[0].isspace():  # the next section (Returns:, Raises:, prose)
            section = False
            continue
        if not line.strip():
            name = None
            continue
        depth = len(line) - len(line.lstrip())
        entry = re.match(r"\s*\*{0,2}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if entry and (indent is None or depth <= indent):
            indent, name = depth, entry[1]
            found[name] = entry[2].strip()
        elif name is not None:
            found[name] = f"{found[name]} {line.strip()}".strip()
    return found


def cli_type(annotation: Any) -> Any:
    """The type the command line parses for a library annotation, or None when it has none."""
    if annotation in (bool, int, float, str, Path):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return annotation
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = Path if Path in rest else str if str in rest else cli_type(rest[0]) if len(rest) == 1 else None
        if inner is None:
            return None
        return Optional[inner] if len(rest) < len(args) else inner
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        item = cli_type(args[0]) if args else str
        return List[item] if item in (str, int, float, Path) else None  # type: ignore[valid-type]
    return None


def _annotations(obj: Any) -> dict[str, Any]:
    """Each parameter's annotation, evaluated one at a time (a forward reference spoils only its own)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    space = getattr(sys.modules.get(obj.__module__), "__dict__", {})
    out = {}
    for name, raw in getattr(target, "__annotations__", {}).items():
        try:
            out[name] = eval(raw, space) if isinstance(raw, str) else raw  # noqa: S307 (our own source)
        except Exception:  # noqa: BLE001
            out[name] = None
    return out


def _option_for(source: Source, param: inspect.Parameter, annotation: Any, help_text: str | None,
                where: str) -> inspect.Parameter:
    kind = cli_type(annotation)
    if kind is None:
        raise TypeError(f"{where}: parameter '{param.name}' ({annotation}) has no command-line form; "
                        f"skip it or declare it in the command")
    if not help_text:
        raise TypeError(f"{where}: parameter '{param.name}' has no help; document it under Args:")
    if source.help_prefix and help_text[1:2].islower():
        help_text = help_text[0].lower() + help_text[1:]
    help_text = source.help_prefix + help_text
    decls = source.flags.get(param.name) or CONVENTIONS.get(param.name, ())
    required = param.default is inspect.Parameter.empty
    default = ... if required else param.default
    positional = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
    if required and positional and not decls:
        info = typer.Argument(default, help=help_text, show_default=False)
    else:
        if kind is bool and not decls and param.name.startswith("no_"):
            decls = ("--" + param.name.replace("_", "-"),)
        info = typer.Option(default, *decls, help=help_text)
    return inspect.Parameter(param.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind)


def derived_parameters(func: Callable, declared: set[str]) -> list[inspect.Parameter]:
    """The options `func`'s `@options_from` sources give it, less what it declares itself."""
    params: list[inspect.Parameter] = []
    taken = set(declared)
    for source in getattr(func, "__candorlm_options__", []):
        target = source.resolve()
        where = source.target
        helps, hints = doc_args(target), _annotations(target)
        for param in inspect.signature(target).parameters.values():
            if (param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name in taken
                    or param.name in source.skip or (source.only is not None and param.name not in source.only)):
                continue
            params.append(_option_for(source, param, hints.get(param.name), helps.get(param.name), where))
            taken.add(param.name)
        missing = set(source.only or ()) - taken
        if missing:
            raise TypeError(f"{where} has no parameter(s) {sorted(missing)}")
    return params


def _render(info: Any, name: str) -> Any:
    """A copy of an option whose help shows whole (Rich markup escaped, so `[model]` stays); an option
    named preset(s) lists the presets. Shared options such as KeyFile are never changed."""
    if not isinstance(info, typer.models.ParameterInfo) or not info.help:
        return info
    info = copy.copy(info)
    # a library docstring says what None means as "(None: ...)"; on the command line there is no None
    text = info.help.replace("(None: ", "(default: ")
    if name in ("preset", "presets"):
        from candorlm.config import preset_names

        text = f"{text} Presets: {', '.join(preset_names())}."
    info.help = escape(text)
    return info


def _place(param: inspect.Parameter) -> int:
    """Help order: arguments, required options, the rest as declared, shared options (--key-file) last."""
    info = param.default
    if typing.get_origin(param.annotation) is Annotated:
        info = next((m for m in typing.get_args(param.annotation)[1:] if isinstance(m, typer.models.ParameterInfo)),
                    info)
    if isinstance(info, typer.models.ArgumentInfo):
        return 0
    if param.name == "key_file":
        return 3
    return 1 if isinstance(info, typer.models.OptionInfo) and info.default is ... else 2


def command_callback(func: Callable) -> Callable:
    """`func` with the signature typer reads: its own parameters, then the derived options."""
    own = [p for p in inspect.signature(func, eval_str=True).parameters.values()
           if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    params = []
    for p in sorted([*own, *derived_parameters(func, {p.name for p in own})], key=_place):
        annotation = p.annotation
        if typing.get_origin(annotation) is Annotated:
            base, *meta = typing.get_args(annotation)
            annotation = Annotated[(base, *(_render(m, p.name) for m in meta))]
        default = _render(p.default, p.name)
        params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default))

    def callback(**kwargs: Any) -> Any:
        return func(**kwargs)

    callback.__name__, callback.__qualname__, callback.__module__ = func.__name__, func.__qualname__, func.__module__
    callback.__doc__ = escape(inspect.getdoc(func) or "")
    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__annotations__ = {p.name: p.annotation for p in params}
    return callback


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the command's option `name` was given (on the command line or from the environment)
    rather than left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def key_from(key_file: Path | None, passphrase: str | None = None, required: bool = False):
    """The key a command was given (--key-file, a passphrase, else the environment's)."""
    from candorlm.io.sealed import resolve_key

    key = resolve_key(key_file, passphrase)
    if key is None and required:
        raise CandorError("no key: give --key-file FILE (make one with `candorlm keygen -o FILE`), --passphrase, "
                          "or set CANDORLM_KEY")
    return key


def reading_with(key_file: Path | None, no_verify: bool = False):
    """Within this block the library reads encrypted files with --key-file's key (else the environment's),
    and, with --no-verify, loads runs without checking them against their manifest."""
    import contextlib

    from candorlm.io.sealed import use_key

    stack = contextlib.ExitStack()
    stack.enter_context(use_key(key_from(key_file)))
    if no_verify:
        from candorlm.checkpoint.run import unverified

        stack.enter_context(unverified())
    return stack
