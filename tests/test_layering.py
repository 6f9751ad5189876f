"""Layering: diagnostics uses only lanczos_optim's public names; lanczos_optim never diagnostics."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(source: str, package: str = "lanczos_optim") -> list[str]:
    """Imports in ``source`` of a private module or name of ``package`` (a ``_`` component)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [(node.module, [a.name for a in node.names])]
        else:
            continue
        for module, names in modules:
            parts = module.split(".")
            if parts[0] != package:
                continue
            bad = [p for p in parts if _is_private(p)] + [n for n in names if _is_private(n)]
            if bad:
                found.append(f"line {node.lineno}: {module} ({', '.join(bad)})")
    return found


def _dotted(node: ast.AST) -> list[str]:
    """``a.b.c`` as ``["a", "b", "c"]`` (empty when the chain does not start at a name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else []


def _absolute_module(node: ast.ImportFrom, package: str) -> bool:
    return node.level == 0 and (node.module or "").split(".")[0] == package


def private_attributes(source: str, package: str = "lanczos_optim") -> list[str]:
    """Private names of ``package`` reached past the import statements.

    Attribute chains on a name bound to ``package`` or one of its modules
    (``lanczos_optim._precision.X``, ``operators._base``) and module paths in strings
    (``importlib.import_module("lanczos_optim._precision")``).
    """
    tree, bound = ast.parse(source), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == package:
                    bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else package
        elif isinstance(node, ast.ImportFrom) and _absolute_module(node, package):
            bound.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    found = []
    for node in ast.walk(tree):
        parts = []
        if isinstance(node, ast.Attribute) and (chain := _dotted(node)) and chain[0] in bound:
            parts = chain[1:]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            words = node.value.split(".")
            if words[0] == package and all(w.isidentifier() for w in words):
                parts = words
        if bad := [p for p in parts if _is_private(p)]:
            found.append(f"line {node.lineno}: {', '.join(bad)}")
    return sorted(set(found))


def imports_of(source: str, package: str) -> list[str]:
    """Imports in ``source`` of ``package`` or any of its modules."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == package]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == package
        ):
            found.append(node.module)
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from lanczos_optim import curvature_mode, HessianOperator", []),
        ("import lanczos_optim\nfrom lanczos_optim.flatten import unflatten_vector", []),
        ("from lanczos_optim import __version__", []),
        ("from torch.nn.modules import _functions", []),
        ("from lanczos_optim._model_state import curvature_mode", ["_model_state"]),
        ("from lanczos_optim.operators._base import check_data", ["_base"]),
        ("import lanczos_optim._graph_products as gp", ["_graph_products"]),
        ("from lanczos_optim.lanczos import _eigh_tridiagonal", ["_eigh_tridiagonal"]),
        ("def f():\n    from lanczos_optim.operators import _graph_cache", ["_graph_cache"]),
    ],
)
def test_the_checker_finds_private_imports(source: str, expected: list[str]) -> None:
    found = private_imports(source)
    assert len(found) == len(expected)
    for hit, name in zip(found, expected, strict=True):
        assert name in hit


def _sources(package: str) -> list[Path]:
    paths = sorted((ROOT / package).rglob("*.py"))
    assert paths, f"no sources under {package}/"
    return paths


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import lanczos_optim\nlanczos_optim._precision.check_precision('x')", ["_precision"]),
        ("from lanczos_optim import operators\noperators._base.check_data", ["_base"]),
        ("import lanczos_optim.operators as ops\nops._graph_cache", ["_graph_cache"]),
        (
            "import importlib\nimportlib.import_module('lanczos_optim._model_state')",
            ["_model_state"],
        ),
        ("getattr(importlib.import_module('lanczos_optim'), 'LanczosNewton')", []),
        ("import lanczos_optim\nlanczos_optim.__version__, lanczos_optim.curvature.CURVATURES", []),
        ("import torch\ntorch._C, 'lanczos optim._x'", []),
    ],
)
def test_the_checker_finds_private_names_past_the_imports(source: str, expected: list[str]) -> None:
    found = private_attributes(source)
    assert len(found) == len(expected), found
    for hit, name in zip(found, expected, strict=True):
        assert name in hit


@pytest.mark.parametrize("path", _sources("diagnostics"), ids=lambda p: p.name)
def test_diagnostics_imports_only_public_lanczos_optim(path: Path) -> None:
    source = path.read_text()
    assert private_imports(source) == [], path.relative_to(ROOT)
    assert private_attributes(source) == [], path.relative_to(ROOT)


def test_lanczos_optim_never_imports_diagnostics() -> None:
    offenders = {
        str(p.relative_to(ROOT)): hits
        for p in _sources("lanczos_optim")
        if (hits := imports_of(p.read_text(), "diagnostics"))
    }
    assert offenders == {}


def test_the_diagnostics_checker_fails_on_a_planted_import() -> None:
    planted = "from lanczos_optim import lanczos\nfrom lanczos_optim._precision import PRECISIONS\n"
    assert private_imports(planted) == ["line 2: lanczos_optim._precision (_precision)"]
    assert imports_of("from diagnostics.analysis import Spectrum", "diagnostics") == [
        "diagnostics.analysis"
    ]
