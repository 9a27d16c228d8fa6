"""The package's layers run one way (docs/architecture.md): checked by import-linter and by an AST walk.

import-linter reads the ``layers`` contract in pyproject.toml; the AST walk uses the same list and also
fails on an import of a ralbook module inside a function (which hides cycles from every tool).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ralbook"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def layers() -> list[list[str]]:
    """The contract's layers, top first; each a list of module names (``a | b`` are siblings)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [[name.strip() for name in layer.split("|")] for layer in contract["layers"]]


def layer_of(module: str, order: list[list[str]]) -> Optional[int]:
    """Index of the layer holding ``module`` (0 = top); None for modules outside every layer."""
    for i, names in enumerate(order):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The ralbook modules an Import / ImportFrom node names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "ralbook"]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] == "ralbook":
            return [target] + [f"{target}.{a.name}" for a in node.names]
    return []


def problems(source: str, module: str, order: list[list[str]], is_package: bool = False) -> list[str]:
    """Upward imports and function-local ralbook imports in one module's source."""
    found = []
    own = layer_of(module, order)
    tree = ast.parse(source)
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        targets = imported_modules(node, module, is_package)
        if targets and id(node) in local:
            found.append(f"{module}:{node.lineno}: function-local import of {targets[0]}")
        for target in targets:
            theirs = layer_of(target, order)
            if own is not None and theirs is not None and theirs < own:
                found.append(f"{module}:{node.lineno}: upward import of {target} (layer {theirs} above {own})")
                break
    return found


def test_the_checker_finds_upward_and_local_imports():
    order = [["ralbook.cli"], ["ralbook.retrieval"], ["ralbook.data"]]
    upward = "from ralbook.retrieval.index import Index\n"
    local = "def f():\n    from ralbook.data import Collection\n    return Collection\n"
    assert problems(upward, "ralbook.data.collection", order) == [
        "ralbook.data.collection:1: upward import of ralbook.retrieval.index (layer 1 above 2)"]
    assert problems(local, "ralbook.retrieval.index", order) == [
        "ralbook.retrieval.index:2: function-local import of ralbook.data"]
    assert problems("from ralbook.data import Collection\nimport torch\n", "ralbook.cli.train", order) == []
    assert problems("from . import index\n", "ralbook.data", order, is_package=True) == []  # ralbook.data.index


def test_no_upward_or_function_local_imports():
    order = layers()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += problems(path.read_text(encoding="utf-8"), module_name(path), order, path.name == "__init__.py")
    assert not found, "\n".join(found)


def test_every_module_sits_in_a_layer():
    order = layers()
    loose = [module_name(p) for p in sorted(PACKAGE.rglob("*.py"))
             if module_name(p) not in ("ralbook", "ralbook.__main__") and layer_of(module_name(p), order) is None]
    assert not loose, f"modules outside the layers of pyproject.toml: {loose}"


def test_import_linter_keeps_the_layers_contract(monkeypatch, capsys):
    """import-linter is in the test extra (pip install -e '.[test]'); it reads the files, needs no network."""
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # lint_imports puts the working folder first
    status = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert status == 0, capsys.readouterr().out
