"""The import graph points down (docs/architecture.md): no cycle between files, none between
packages, no arrow up the layers, no private name taken from another package.

Every `import` in candorlm counts, wherever it is: at the top, inside a function, under
TYPE_CHECKING. A violation that another helper is removing is listed in KNOWN with its owner;
the test fails on any violation not listed and on any listed one that no longer occurs, so the
list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import candorlm

ROOT = Path(candorlm.__file__).parent

# Bottom up. A module may import its own layer and those below. Keys are top-level names
# under candorlm (a package or a single module).
LAYERS: list[tuple[str, set[str]]] = [
    ("errors", {"errors"}),
    ("io", {"io"}),
    ("fonts", {"fonts"}),  # the bundled CJK font: figures and pages of every feature draw Chinese with it
    ("config", {"config", "rundir"}),
    ("data", {"corpus", "encodings", "tokenizer", "shards", "prepare", "device", "progress", "forecast"}),
    ("model", {"model"}),
    ("checkpoint", {"checkpoint"}),
    ("training | inference", {"training", "lm", "generate", "beam", "evaluate"}),
    ("features", {"tasks", "explain", "privacy", "ledger", "generalization", "scaling", "report", "interop",
                  "serve", "pretrain"}),  # pretrain: candorlm.train, the trainer with the ledger and DP attached
    ("cli", {"cli", "demo", "__main__"}),
]
INFERENCE = {"lm", "generate", "beam", "evaluate"}  # siblings of training that never import it

KNOWN: dict[str, str] = {
    # violation: the helper removing it (none left)
}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[tuple[str, str | None]]:
    """(imported module, imported name or None) for every candorlm import in one file."""
    def resolve(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {(resolve(a.name), None) for a in node.names if a.name.split(".")[0] == "candorlm"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != "candorlm":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add((sub, None) if sub in mods else (resolve(base), alias.name))
    return {(m, n) for m, n in found if m and m != name and m != "candorlm"}


def _top(module: str) -> str:
    return module.split(".")[1]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations() -> set[str]:
    mods = _modules()
    rank = {top: i for i, (_, tops) in enumerate(LAYERS) for top in tops}
    layer = {top: label for label, tops in LAYERS for top in tops}
    files: dict[str, set[str]] = {m: set() for m in mods if m != "candorlm"}
    found = set()
    for name in files:
        for target, imported in _imports(name, mods[name], mods):
            files[name].add(target)
            src, dst = _top(name), _top(target)
            if src == dst:
                continue
            if rank[dst] > rank[src]:
                found.add(f"up: {name} -> {target} ({layer[src]} -> {layer[dst]})")
            if src in INFERENCE and dst == "training":
                found.add(f"inference imports training: {name} -> {target}")
            if imported and imported.startswith("_") and not imported.startswith("__"):
                found.add(f"private: {name} -> {target}.{imported}")
    packages: dict[str, set[str]] = {}
    for name, targets in files.items():
        packages.setdefault(f"candorlm.{_top(name)}", set()).update(
            f"candorlm.{_top(t)}" for t in targets if _top(t) != _top(name))
    found |= {"file cycle: " + " <-> ".join(c) for c in _cycles(files)}
    found |= {"package cycle: " + " <-> ".join(c) for c in _cycles(packages)}
    return found


def test_every_module_has_a_layer():
    tops = {_top(m) for m in _modules() if m != "candorlm"}
    placed = {top for _, group in LAYERS for top in group}
    assert tops - placed == set(), "place these in LAYERS (docs/architecture.md says where)"


def test_imports_point_down_without_cycles_or_private_names():
    found = violations()
    new = sorted(found - KNOWN.keys())
    gone = sorted(KNOWN.keys() - found)
    assert not new, "new import violations (fix them; see docs/architecture.md):\n  " + "\n  ".join(new)
    assert not gone, "fixed: remove these from KNOWN in tests/test_layers.py:\n  " + "\n  ".join(gone)


def test_the_check_sees_every_kind_of_import(tmp_path):
    # The parser must see imports inside functions, under TYPE_CHECKING and relative ones.
    pkg = tmp_path / "candorlm"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from candorlm.a import X\n"
        "def f():\n    from ..a import _private\n    import candorlm.sub\n")
    mods = {"candorlm": pkg / "__init__.py", "candorlm.a": pkg / "a.py", "candorlm.sub": pkg / "sub" / "__init__.py",
            "candorlm.sub.b": pkg / "sub" / "b.py"}
    assert _imports("candorlm.sub.b", mods["candorlm.sub.b"], mods) == {
        ("candorlm.a", "X"), ("candorlm.a", "_private"), ("candorlm.sub", None)}
    assert _cycles({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [["a", "b"]]
