"""The package's layering as ``docs/architecture.md`` draws it holds in the code.

The architecture page lists the package top to bottom; a module may use only what is
listed above it (or inside its own folder). Imports inside functions count too: a lazy
import still ties the modules together. Also: no module imports itself back through others.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ghostnet"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _listed_groups() -> list[str]:
    """Top-level entries of the layer listing, in order ("errors", "layers", ...)."""
    text = ARCHITECTURE.read_text()
    block = text.split("```", 2)[1]  # the first code block is the layer listing
    groups = []
    for line in block.splitlines():
        match = re.match(r"^  ([a-z_]+)(\.py|/)\s", line + " ")
        if match:
            groups.append(match.group(1))
    return groups


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ghostnet module ``path`` imports, anywhere in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ghostnet")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("ghostnet"):
                target = node.module
            else:
                continue
            found.add(target)
            for alias in node.names:  # ``from . import cifar`` names a module
                if (
                    (PACKAGE.parent / (target + "." + alias.name).replace(".", "/"))
                    .with_suffix(".py")
                    .exists()
                ):
                    found.add(f"{target}.{alias.name}")
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_is_in_the_listing():
    groups = set(_listed_groups())
    unlisted = sorted({_group(m) for m in _graph()} - groups - {"", "__main__"})
    assert not unlisted, f"add these to docs/architecture.md's listing: {unlisted}"


def test_no_module_uses_one_listed_below_it():
    order = {group: rank for rank, group in enumerate(_listed_groups())}
    upward = []
    for module, imported in _graph().items():
        group = _group(module)
        if group in ("", "__main__"):  # the package root re-exports the public API
            continue
        for target in imported:
            if order.get(_group(target), -1) > order[group]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports of modules listed below the importer: " + ", ".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    cycles = []

    def visit(module: str, stack: list[str], done: set[str]) -> None:
        for target in sorted(graph.get(module, ())):
            target = target if target in graph else target.rsplit(".", 1)[0]
            if target in stack:
                cycle = [*stack[stack.index(target) :], target]
                # a package's __init__ importing its own children is not a cycle
                if not all(m.startswith(cycle[0] + ".") or m == cycle[0] for m in cycle):
                    cycles.append(" -> ".join(cycle))
            elif target not in done and target in graph:
                visit(target, [*stack, target], done)
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module], done)
    assert not cycles, "import cycles: " + "; ".join(sorted(set(cycles)))
