"""Imports between the packages of vos_det point one way, as detectron2's do.

The graph is read from the source with ``ast`` (function-local imports included, relative
imports resolved), so an import hidden inside a function to dodge a cycle counts too. A node
is a top-level package or module of vos_det (``config``, ``modeling``, ``cli``, ...);
``vos_det/__init__.py``, which only re-exports and registers, is left out.

    python tests/test_import_layers.py      # print the package graph
"""
import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "vos_det"

# The layers, bottom first: a package imports only the layers below its own, never one of its
# layer or above. As detectron2: utils -> config -> data -> {modeling, evaluation} -> engine
# -> tools (detectron2's evaluation reads the data catalog too); the metrics are pure
# functions at the bottom, and the classification task sits above the engine whose Trainer
# it extends.
LAYERS = (
    ("errors", "metrics"),
    ("utils",),
    ("config",),
    ("data",),
    ("modeling", "evaluation"),
    ("export",),
    ("engine",),
    ("classification",),
    ("cli", "lazyconfig", "reference_docs"),
)


def _module_of(path, package_dir):
    """``vos_det/engine/trainer.py`` -> (["vos_det", "engine", "trainer"], is a package)."""
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return parts[:-1], True
    return parts, False


def _imported_modules(node, module, is_package):
    """The dotted names an ``import`` / ``from ... import`` statement reads, resolved."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not node.level:
        return [node.module]
    package = module if is_package else module[:-1]
    base = package[: len(package) - node.level + 1]
    if node.module:
        return [".".join(base + [node.module])]
    return [".".join(base + [alias.name]) for alias in node.names]  # from . import x


def package_imports(package_dir=PACKAGE_DIR):
    """The package-level import graph of vos_det.

    Returns:
        dict[str, dict[str, list[str]]]: importing node -> imported node -> the places
        (``path:line``) of those imports.
    """
    graph = defaultdict(lambda: defaultdict(list))
    for path in sorted(package_dir.rglob("*.py")):
        module, is_package = _module_of(path, package_dir)
        if len(module) < 2:  # vos_det/__init__.py
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported_modules(node, module, is_package):
                parts = name.split(".")
                if parts[0] == "vos_det" and len(parts) > 1 and parts[1] != module[1]:
                    graph[module[1]][parts[1]].append(f"{path.relative_to(package_dir.parent)}:{node.lineno}")
    return graph


def cycles(graph):
    """Every strongly connected set of two or more nodes (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(set(graph) | {t for targets in graph.values() for t in targets}):
        if node not in index:
            visit(node)
    return found


def format_graph(graph):
    """One line per node: ``node -> imported, ...``."""
    return "\n".join(f"{node} -> {', '.join(sorted(graph[node]))}" for node in sorted(graph))


def _layer_of():
    return {node: rank for rank, layer in enumerate(LAYERS) for node in layer}


def _where(graph, source, target):
    return ", ".join(graph[source][target][:3])


def test_no_import_cycle_between_packages():
    graph = package_imports()
    found = cycles(graph)
    details = []
    for cycle in found:
        edges = [f"{a} -> {b} ({_where(graph, a, b)})" for a in cycle for b in cycle if b in graph[a]]
        details.append(" <-> ".join(cycle) + ": " + "; ".join(edges))
    assert not found, "package import cycles:\n" + "\n".join(details)


def test_every_package_has_a_layer():
    nodes = {path.stem if path.is_file() else path.name for path in PACKAGE_DIR.iterdir()}
    nodes = {n for n in nodes if not n.startswith("_")} - {"__pycache__"}
    assert nodes - set(_layer_of()) == set(), "add the new package to LAYERS"


def test_imports_point_down_the_layers():
    graph, layer = package_imports(), _layer_of()
    upward = [
        f"{source} -> {target} ({_where(graph, source, target)})"
        for source in graph
        for target in graph[source]
        if layer[target] >= layer[source]
    ]
    assert not upward, "imports that do not point down the layers:\n" + "\n".join(upward)


def test_the_bottom_imports_nothing_of_the_package():
    graph = package_imports()
    assert not graph.get("metrics") and not graph.get("errors")
    assert set(graph["config"]) <= {"errors"}, "the config imports no model, data or evaluation code"


def test_the_graph_reader_sees_local_and_relative_imports(tmp_path):
    package = tmp_path / "vos_det"
    for folder in ("a", "b", "c"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from . import a\n")
    (package / "a" / "x.py").write_text("def f():\n    from ..b import y\n")
    (package / "b" / "y.py").write_text("import vos_det.c.z\n")
    (package / "c" / "z.py").write_text("from .. import a\n")
    graph = package_imports(package)
    assert {node: set(targets) for node, targets in graph.items()} == {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert graph["a"]["b"] == ["vos_det/a/x.py:2"]
    assert cycles(graph) == [["a", "b", "c"]]


if __name__ == "__main__":
    graph = package_imports(Path(sys.argv[1]) / "vos_det" if len(sys.argv) > 1 else PACKAGE_DIR)
    print(format_graph(graph))
    print("cycles:", cycles(graph) or "none")
