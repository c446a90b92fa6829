"""geohf's layers: every import of a geohf module (parsed with ``ast``, inside functions and ``TYPE_CHECKING``
blocks too) goes down or sideways in :data:`LAYERS`, and the top-level units import each other without cycles.

A unit is a top-level subpackage (``geohf.data``) or module (``geohf.errors``); ``__init__`` is the package
root (the public names). Imports inside one unit are its own business.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "geohf"

# unit -> layer; a unit may import units of its own layer or below, never above
LAYERS = {
    # helpers that import nothing of geohf above them: version, user errors, atomic files, bounded downloads,
    # image decoding
    "_version": 0,
    "downloads": 0,
    "_lazy": 0,
    "errors": 0,
    "files": 0,
    "images": 0,
    "malloc": 0,
    "engines": 0,
    # pure geography; the Hub cards and uploads (data writes dataset cards, training model cards)
    "geo": 1,
    "hub": 1,
    # maps and charts over geo's boundaries (dataset builds, reports and the app draw them)
    "plots": 2,
    # datasets, street-level collection and models
    "data": 3,
    "modeling": 3,
    "collect": 3,
    "inference": 4,
    # geohf.create_model: a model over the label space read from a dataset (data + modeling in one call)
    "create": 4,
    "evaluation": 5,
    # what runs on top of a model: training, the app, exports
    "training": 6,
    "app": 6,
    "export": 6,
    # the end-to-end demo (data, training, evaluation, prediction)
    "demo": 7,
    # the public names (the package root) and geohf.register()
    "__init__": 8,
    # the command line
    "commands": 9,
    "cli": 9,
    "__main__": 9,
}

# (file, imported module) pairs allowed against the rules, each with the issue that removes it
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    folder = PACKAGE.parent.joinpath(*name.split("."))
    return folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file()


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every geohf module ``path`` imports, relative imports resolved."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from . import plots` imports a module; `from .. import __version__` a name of the package
            names = [f"{module}.{alias.name}" for alias in node.names]
            modules = [name for name in names if is_module(name)]
            found += [(node.lineno, name) for name in modules] or [(node.lineno, module)]
    return [(line, name) for line, name in found if name.split(".")[0] == "geohf"]


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(unit, imported unit) -> ``file:line  module`` of each import between two units."""
    edges = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for line, module in imported_modules(path):
            src, dst = unit(module_name(path)), unit(module)
            if src != dst and (rel, module) not in KNOWN_EXCEPTIONS:
                edges[src, dst].append(f"geohf/{rel}:{line}  {module}")
    return edges


def cycles(edges) -> list[list[str]]:
    """The strongly connected components of more than one unit (Tarjan)."""
    graph = defaultdict(set)
    for src, dst in edges:
        graph[src].add(dst)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_unit_has_a_layer():
    units = {unit(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert units - set(LAYERS) == set(), "add the new units to LAYERS"
    assert set(LAYERS) - units == set(), "drop the units that are gone from LAYERS"


def test_no_import_goes_up_a_layer():
    edges = import_edges()
    upward = [
        f"{where}  ({src}, layer {LAYERS[src]} -> {dst}, layer {LAYERS[dst]})"
        for (src, dst), places in sorted(edges.items())
        if LAYERS.get(dst, -1) > LAYERS.get(src, -1)
        for where in places
    ]
    assert upward == [], "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_cycles_between_units():
    edges = import_edges()
    found = cycles(edges)
    detail = [
        f"  {src} -> {dst}: {places[0]}" + (f" (+{len(places) - 1} more)" if len(places) > 1 else "")
        for component in found
        for (src, dst), places in sorted(edges.items())
        if src in component and dst in component
    ]
    assert found == [], f"import cycles between {found}:\n" + "\n".join(detail)


def test_the_known_exceptions_still_exist():
    """An exception whose import is gone is dropped from :data:`KNOWN_EXCEPTIONS` (it would hide a new one)."""
    for file, module in KNOWN_EXCEPTIONS:
        assert module in {name for _, name in imported_modules(PACKAGE / file)}, (file, module)
