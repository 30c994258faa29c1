"""The package's layers import only downwards: every import in src/prolificli, those inside
functions included, read from the source with `ast`."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "prolificli"

# (importer, imported): layers that must not depend on each other in this direction
FORBIDDEN = {
    "evaluation": {"stages", "distill", "optimize"},
    "scene": {"stages", "distill", "optimize", "evaluation"},
    "render": {"scene", "distill", "stages"},
    "prior": {"scene", "distill", "stages"},
    "distill": {"stages"},
}


def unit_of(module: str) -> str:
    """prolificli.scene.nerf -> scene; prolificli.config -> config."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every prolificli module `path` imports, at any depth of its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("prolificli")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("prolificli"):
                found.add(target)
    return found


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        importer = unit_of(module_name(path))
        for target in imports_of(path):
            imported = unit_of(target)
            if imported not in (importer, "prolificli"):
                graph[importer].add(imported)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
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
                out.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return out


def test_the_import_walk_sees_imports_inside_functions():
    # stages/common.py imports the prior inside start_session only; the walk must see that
    assert "prolificli.prior" in imports_of(PACKAGE / "stages" / "common.py")
    assert {"render", "config"} <= unit_graph()["stages"]


def test_no_layer_imports_upwards():
    graph = unit_graph()
    wrong = sorted((importer, imported) for importer, banned in FORBIDDEN.items()
                   for imported in graph.get(importer, ()) if imported in banned)
    assert not wrong, f"upward imports: {wrong}"


def test_no_cycle_between_subpackages():
    assert not cycles(unit_graph())


def test_benchmarks_and_tests_import_only_names_that_exist():
    """Moving a name must move its users: every `from prolificli... import name` in benchmarks/
    and tests/, inside functions too, names a module and attribute that exist."""
    import importlib
    import importlib.util

    missing = []
    for folder in ("benchmarks", "tests"):
        for path in sorted((PACKAGE.parent.parent / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prolificli"):
                    module = importlib.import_module(node.module)
                    missing += [f"{path.name}: {node.module}.{alias.name}" for alias in node.names
                                if not hasattr(module, alias.name)
                                and importlib.util.find_spec(f"{node.module}.{alias.name}") is None]
    assert not missing, missing


def module_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (`from . import name` resolved to the submodule
    `name` where there is one), at any depth of its code."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, path in modules.items():
        package = importer if path.name == "__init__.py" else importer.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # a name that is itself a submodule is an import of it
                submodule = f"{target}.{alias.name}"
                imported = submodule if submodule in modules else target
                if imported in modules and imported != importer:
                    graph[importer].add(imported)
    return graph


def test_no_cycle_inside_a_subpackage():
    """Within one subpackage too, modules import one way: no two modules of it import each other,
    directly or around a loop (the package's own __init__ counts as one of its modules)."""
    graph = module_graph()
    inside = {importer: {m for m in imported if unit_of(m) == unit_of(importer)} for importer, imported in graph.items()}
    assert not cycles(inside), cycles(inside)
