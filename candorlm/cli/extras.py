"""Optional dependencies: which extra of `pip install 'candorlm[EXTRA]'` brings which module.

The core install trains, generates and exports; the rest comes in extras (pyproject.toml's
`[project.optional-dependencies]`, kept in step with EXTRAS by a test). A command that needs an
extra says so with `@needs("serve")` and is refused up front, before any long work, when one of
its modules is missing; an import that fails deeper down (`prepare --scrub` without the privacy
extra) is named the same way by the CLI's error handling.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, TypeVar

from candorlm.errors import CandorError

# extra -> the modules it provides, by import name (the distribution names are in pyproject.toml)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn"),
    "privacy": ("cryptography", "opacus", "scipy", "faker"),
    "explain": ("captum", "matplotlib", "jinja2", "noto_cjk_sans_jp_regular", "fontTools"),
    "tasks": ("pypinyin", "sacrebleu", "sklearn"),
    "report": ("matplotlib", "jinja2", "noto_cjk_sans_jp_regular", "fontTools", "jsonschema", "opencc"),
    "energy": ("codecarbon",),
}

F = TypeVar("F", bound=Callable)


class MissingExtra(CandorError):
    """A module of an optional extra is not installed."""

    def __init__(self, module: str, extra: str, command: str | None = None):
        module = module.partition(".")[0]
        who = f"`candorlm {command}`" if command else "this"
        super().__init__(f"{who} needs {module}, which is not installed: pip install 'candorlm[{extra}]'")
        self.module, self.extra = module, extra


def needs(*extras: str) -> Callable[[F], F]:
    """Mark a command as needing these extras; it is refused before it starts when one is missing."""
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown:
        raise ValueError(f"unknown extra(s) {unknown}; known: {', '.join(EXTRAS)}")

    def mark(func: F) -> F:
        func.__candorlm_needs__ = extras  # type: ignore[attr-defined]
        return func

    return mark


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check(extras: tuple[str, ...], command: str) -> None:
    """Raise MissingExtra for the first module of these extras that is not installed."""
    for extra in extras:
        for module in EXTRAS[extra]:
            if not installed(module):
                raise MissingExtra(module, extra, command)


def extra_for(module_name: str | None, prefer: tuple[str, ...] = ()) -> str | None:
    """The extra that provides `module_name` (a dotted name is fine), preferring those in `prefer`."""
    top = (module_name or "").partition(".")[0]
    owners = [extra for extra, modules in EXTRAS.items() if top in modules]
    for extra in owners:
        if extra in prefer:
            return extra
    return owners[0] if owners else None
