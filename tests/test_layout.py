"""The shape of the package, checked: stages and tasks as docs/architecture.md draws them."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgekd"
TASK_NAMES = ("text-classification", "causal-lm", "image-classification")
ADAPTERS = ("edgekd.tasks.", "edgekd.lm", "edgekd.vision")  # what one task alone uses


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Which edgekd modules each module imports, at the top or inside a function."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgekd"):
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    imported.add(submodule if submodule in modules else node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names if alias.name.startswith("edgekd"))
        graph[name] = {module for module in imported if module in modules and module != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_stages_import_neither_each_other_nor_tasks_pipelines():
    stages = ("edgekd.training", "edgekd.exporting", "edgekd.benchmarking")
    for module, imported in import_graph().items():
        stage = next((s for s in stages if module.startswith(s)), None)
        if stage is None:
            continue
        others = {m for m in imported if m.startswith(stages) and not m.startswith(stage)}
        assert not others, f"{module} imports the stage {sorted(others)}"
        adapters = {m for m in imported if m.startswith(ADAPTERS) or m == "edgekd.api"}
        assert not adapters, f"{module} imports a task's adapter {sorted(adapters)}"


def test_shared_modules_import_no_task_adapter():
    for module, imported in import_graph().items():
        if module in ("edgekd.config", "edgekd.data", "edgekd.models", "edgekd.pixels", "edgekd.sessions",
                      "edgekd.manifest", "edgekd.metrics", "edgekd.targets"):
            assert not {m for m in imported if m.startswith(ADAPTERS)}, module


def test_no_task_name_is_compared_outside_the_tasks():
    names = "|".join(re.escape(name) for name in TASK_NAMES)
    comparison = re.compile(rf"""(==|!=)\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    found = [f"{path.relative_to(PACKAGE.parent)}:{number}"
             for path in PACKAGE.rglob("*.py") if "tasks" not in path.relative_to(PACKAGE).parts
             for number, line in enumerate(path.read_text().splitlines(), 1) if comparison.search(line)]
    assert not found


def test_no_class_name_is_defined_twice():
    names = Counter(node.name for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ClassDef))
    assert [name for name, count in names.items() if count > 1] == []


def test_the_command_line_only_parses_and_calls_the_api():
    """cli/ imports nothing of edgekd but the API, the tasks' data and its own helpers."""
    allowed = ("edgekd.cli", "edgekd.api", "edgekd", "edgekd.errors", "edgekd.tasks", "edgekd.tasks.shared",
               "edgekd.progress", "edgekd.targets", "edgekd.benchmarking.gates", "edgekd.lm.generate")
    for module, imported in import_graph().items():
        if module.startswith("edgekd.cli"):
            assert {m for m in imported if m not in allowed and not m.startswith("edgekd.cli")} == set(), module
