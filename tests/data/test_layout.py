"""The data package stays a house of small rooms: no module imports itself back through others, no file is huge."""

from __future__ import annotations

import ast
from pathlib import Path

import convirt_hf.data

DATA = Path(convirt_hf.data.__file__).resolve().parent
MAX_FILE_LINES = 700


def module_name(path: Path) -> str:
    parts = ("convirt_hf", "data", *path.relative_to(DATA).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of convirt_hf.data it imports, at load time or inside functions alike."""
    modules = {module_name(path): path for path in DATA.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                origin = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` names a module; `from .x import y` may too (then both are imported)
                targets = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
            graph[name].update(target for target in targets if target in modules and target != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_of_convirt_hf_data_imports_itself_back():
    graph = import_graph()
    assert "convirt_hf.data.sources.pipeline" in graph["convirt_hf.data.sources"]  # the graph sees the packages
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_file_of_convirt_hf_data_is_over_700_lines():
    sizes = {str(path.relative_to(DATA)): len(path.read_text().splitlines()) for path in DATA.rglob("*.py")}
    assert not {name: lines for name, lines in sizes.items() if lines > MAX_FILE_LINES}
