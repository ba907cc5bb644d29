"""The package's import graph: no cycles, and no low layer importing a high one.

Every import counts, function-level ones included (they are read with ``ast``, not executed):
a lazy import still ties two modules together. ``from restorecli import x`` is an edge to the
submodule ``restorecli.x`` when there is one, else to the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "restorecli"
LOW = ("ops", "models", "io", "metrics")
HIGH = ("hub", "inference", "batch", "evaluate", "train", "cli", "loading")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                while target and target not in modules:  # `import restorecli.x.y` names a module
                    target = target.rpartition(".")[0]
                if target.startswith("restorecli") and target != name:
                    graph[name].add(target)
    return graph


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_graph_is_read() -> None:
    graph = _graph()
    assert "restorecli.ops.scan_cpu" in graph["restorecli.models.blocks"] or graph["restorecli.models.blocks"]
    assert "restorecli.paths" in graph["restorecli.ops.scan_cpu"]


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_low_layers_do_not_import_high_ones() -> None:
    bad = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        if _layer(module) in LOW
        for target in targets
        if _layer(target) in HIGH
    ]
    assert not bad, "low layer imports a high one: " + "; ".join(sorted(bad))
