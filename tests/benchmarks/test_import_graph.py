"""The modules of deeplense_tf.benchmarks import each other downward only: no cycle.

Imports inside functions count too: a cycle through them fails only later, at call
time, but it still ties the modules together so that none can be read, moved or
tested alone. Parsed with `ast`, nothing is imported.
"""

import ast
import os

PACKAGE = "deeplense_tf.benchmarks"
PACKAGE_DIR = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, *PACKAGE.split("."))


def _imported_names(tree: ast.AST, package: str):
    """Every dotted name an import statement anywhere in `tree` may load."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from . import x` and `from .x import y`, relative to `package`
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            yield base
            # `from package import x` loads the module x when x is one.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(sources: dict[str, str], package: str = PACKAGE) -> dict[str, set[str]]:
    """{module: the modules of `package` it imports}, from {module: source text}."""
    prefix = package + "."
    graph = {}
    for module, source in sources.items():
        imported = {name[len(prefix):].split(".")[0]
                    for name in _imported_names(ast.parse(source), package)
                    if name.startswith(prefix)}
        graph[module] = {name for name in imported if name in sources and name != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Modules [a, b, ..., a] that import one another in a ring, or None."""
    on_path, done, path = set(), set(), []

    def visit(module):
        on_path.add(module)
        path.append(module)
        for imported in sorted(graph[module]):
            if imported in on_path:
                return path[path.index(imported):] + [imported]
            if imported not in done:
                cycle = visit(imported)
                if cycle:
                    return cycle
        on_path.discard(module)
        done.add(module)
        path.pop()
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def _package_sources() -> dict[str, str]:
    sources = {}
    for name in sorted(os.listdir(PACKAGE_DIR)):
        if name.endswith(".py") and name != "__init__.py":
            with open(os.path.join(PACKAGE_DIR, name)) as f:
                sources[name[:-3]] = f.read()
    return sources


def test_benchmark_modules_have_no_import_cycle():
    graph = import_graph(_package_sources())
    assert {"suite", "training", "cells", "data_chain"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in deeplense_tf.benchmarks: " + " -> ".join(cycle)


def test_the_check_sees_function_level_relative_and_aliased_imports():
    sources = {
        "a": "from deeplense_tf.benchmarks import b\nimport numpy as np\n",
        "b": "def f():\n    from deeplense_tf.benchmarks import c as other\n",
        "c": "import deeplense_tf.benchmarks.a\nfrom deeplense_tf import benchmark\n",
        "d": "from . import a\nfrom .b import f\nfrom deeplense_tf.benchmarks.c import g\n",
    }
    graph = import_graph(sources)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "b", "c"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({**graph, "c": set()}) is None
