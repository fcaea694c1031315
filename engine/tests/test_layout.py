"""The engine's module layout: no import cycle, module-level or inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tuckerize"
NAME = PACKAGE.name


def _module_name(path: Path) -> str:
    return path.stem


def imports_of(source: str, modules: set[str]) -> set[str]:
    """Modules of the package that `source` imports anywhere (top level, functions, classes, conditions).

    `from . import x`, `from .x import y`, `import tuckerize.x` and `from tuckerize.x import y` all
    count; the package's __init__ does not (every submodule import runs it).
    """
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith(NAME):
                continue
            if node.level > 1:
                raise AssertionError(f"relative import beyond the package: level {node.level}")
            parts = (node.module or "").split(".")
            if node.level == 0:
                parts = parts[1:]
            if parts and parts[0]:
                found.add(parts[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == NAME and len(parts) > 1:
                    found.add(parts[1])
    return found & modules


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.glob("*.py"))
    modules = {_module_name(p) for p in paths} - {"__init__"}
    return {_module_name(p): imports_of(p.read_text(), modules) for p in paths if p.stem != "__init__"}


def find_cycle(graph: dict[str, set[str]]):
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_no_module_takes_part_in_an_import_cycle():
    graph = import_graph()
    assert {"cli", "run", "candidates", "plan"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_function_level_and_absolute_imports_are_seen():
    modules = {"cli", "run", "plan", "finetune"}
    source = (
        "from .plan import make_plan\n"
        "def f():\n"
        "    from . import finetune\n"
        "    import tuckerize.run\n"
        "    if True:\n"
        "        from tuckerize.cli import main\n"
        "import numpy\n"
        "from os import path\n")
    assert imports_of(source, modules) == {"plan", "finetune", "run", "cli"}


def test_find_cycle_reports_a_hidden_cycle():
    # The layout this test guards against: cli -> run at the top, run -> cli inside a function.
    graph = {"cli": {"run"}, "run": {"candidates"}, "candidates": {"cli", "plan"}, "plan": set()}
    cycle = find_cycle(graph)
    assert cycle[0] == cycle[-1] and sorted(cycle[1:]) == ["candidates", "cli", "run"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_run_pipeline_and_the_cli_share_one_plan_mapping():
    graph = import_graph()
    assert "options" in graph["cli"] and "options" in graph["run"]
    assert "atomic" in graph["run"] and "atomic" in graph["candidates"] and "cli" not in graph["candidates"]
