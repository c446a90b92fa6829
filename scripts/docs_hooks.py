"""MkDocs hook: the API reference of geohf's lazy packages, read from their ``_LAZY`` tables.

``geohf``, ``geohf.inference``, ``geohf.evaluation`` and ``geohf.training`` load their public names on
first access (a module ``__getattr__`` over a ``_LAZY`` name → module table), which mkdocstrings' static
analysis cannot see. A reference page line ``::: geohf.inference`` is expanded here into the package's
docstring and one ``:::`` block per public name, at the module that defines it, so the reference follows
the table when a name moves to another file. The top-level ``geohf`` lists its names, each with a link to
the page of the subpackage that exports it (``docs/reference/<package>.md``), and documents the others
itself. Read with ``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r"^::: (geohf(?:\.\w+)*)[ \t]*$", re.MULTILINE)


def _lazy_table(package: str) -> dict[str, str] | None:
    """The package's ``_LAZY`` table (name → absolute module), or None when it has none."""
    init = ROOT.joinpath(*package.split("."), "__init__.py")
    if not init.is_file():
        return None
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            table = ast.literal_eval(node.value)
            return {name: package + module if module.startswith(".") else module for name, module in table.items()}
    return None


def _exported(package: str) -> set[str]:
    """The names a package exports statically (its ``__all__``), or its lazy names."""
    init = ROOT.joinpath(*package.split("."), "__init__.py")
    if not init.is_file():
        return set()
    lazy = _lazy_table(package)
    if lazy is not None:
        return set(lazy)
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def _block(path: str) -> list[str]:
    return [f"::: {path}", "    options:", "      heading_level: 2", "      show_root_full_path: false", ""]


def _expand(package: str) -> str | None:
    table = _lazy_table(package)
    if table is None:
        return None
    lines = [f"::: {package}", "    options:", "      members: false", "      show_root_heading: false", ""]
    if package != "geohf":
        for name, module in sorted(table.items()):
            lines += _block(f"{module}.{name}")
        return "\n".join(lines)
    # the top level: a name its subpackage exports is documented on that subpackage's page, the others here
    here, rows = [], ["| name | documented in |", "|---|---|"]
    for name, module in sorted(table.items(), key=lambda item: item[0].lower()):
        subpackage = ".".join(module.split(".")[:2])
        if name in _exported(subpackage):
            page = f"{subpackage.split('.')[1]}.md"  # beside this page in docs/reference/
            rows.append(f"| `geohf.{name}` | [`{subpackage}`]({page}) |")
        else:
            rows.append(f"| `geohf.{name}` | [below](#{module}.{name}) |")
            here += _block(f"{module}.{name}")
    return "\n".join([*lines, *rows, "", *_block("geohf.register"), *here])


def on_page_markdown(markdown: str, page, config, files) -> str:  # MkDocs calls it with these names
    def replace(match: re.Match) -> str:
        return _expand(match.group(1)) or match.group(0)

    return DIRECTIVE.sub(replace, markdown)
