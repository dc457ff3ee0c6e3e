"""The layer rules hold for every module, imports inside functions included: ``common`` imports
no other layer; ``client`` and ``server`` never import each other; ``simulations`` imports no
CLI or benchmark; no import cycle; docs/architecture.md stays a five-minute read."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOPS = ("common", "client", "server", "simulations", "fedmm", "benchmarks")
FORBIDDEN = {"common": {"client", "server", "simulations", "fedmm", "benchmarks"},
             "client": {"server", "simulations", "fedmm", "benchmarks"},
             "server": {"client", "simulations", "fedmm", "benchmarks"},
             "simulations": {"fedmm", "benchmarks"}}


def _modules() -> dict[str, Path]:
    found = {}
    for top in TOPS:
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts).removesuffix(".__init__")] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its body."""
    names: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return {n for n in names if n in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_no_layer_imports_one_it_must_not() -> None:
    broken = [f"{module} -> {target}" for module, targets in _graph().items()
              for target in targets
              if target.split(".")[0] in FORBIDDEN.get(module.split(".")[0], set())]
    assert broken == []


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycle() -> None:
    assert find_cycles(_graph()) == []


def test_the_checks_see_a_cycle_and_a_function_level_import() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    modules = _modules()
    inside = _imports(REPO / "client" / "app.py", "client.app", modules)
    assert "client.training" in inside  # imported inside warm_client_app()


def test_the_architecture_doc_is_a_five_minute_read() -> None:
    words = len((REPO / "docs" / "architecture.md").read_text(encoding="utf-8").split())
    assert 0 < words <= 1200, words
