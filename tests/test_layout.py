"""The house rules of the code (CONTRIBUTING.md), checked on the source tree:

- no library or script file over 700 lines, except the model file in modeling/ (one file, as transformers' are);
- no function over 80 lines of code outside tests (its signature and docstring not counted: public API functions
  document every argument, as transformers' do);
- no import cycle inside the library, counting imports inside functions too;
- modeling/ imports nothing from convirt_hf (it is the remote code a Hub folder carries), and the library never
  imports the scripts in training/ (it reads only their preset YAML files, as package data).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the installed names of the source folders (pyproject.toml's package-dir)
PACKAGES = {"convirt_hf": "convirt_hf", "modeling": "convirt_hf.modeling", "training": "convirt_hf.training"}
SOURCE_FOLDERS = ["convirt_hf", "modeling", "training", "benchmarks"]
LIBRARY_FOLDERS = ["convirt_hf", "modeling"]
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 80
ONE_FILE_MODELS = {"modeling/modeling_convirt.py"}


def source_files(folders=SOURCE_FOLDERS) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = [*PACKAGES[relative.parts[0]].split("."), *relative.parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at load time or inside a function, with relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            origin = ".".join(base + ([node.module] if node.module else []))
            # `from . import x` names a module; `from .x import y` may too
            found.update([origin, *(f"{origin}.{alias.name}" for alias in node.names)])
    return found


def import_graph(folders=LIBRARY_FOLDERS) -> dict[str, set[str]]:
    """Library module -> the library modules it imports."""
    modules = {module_name(path): path for path in source_files(folders)}
    return {name: {target for target in imported_modules(path) if target in modules and target != name}
            for name, path in modules.items()}


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


def code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = function.body
    has_docstring = (len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                     and isinstance(body[0].value.value, str))
    first = body[1] if has_docstring else body[0]
    return function.end_lineno - first.lineno + 1


def test_the_library_has_no_import_cycle():
    graph = import_graph()
    assert "convirt_hf.data.sources.pipeline" in graph["convirt_hf.data.sources"]  # the graph sees the packages
    assert "convirt_hf.modeling" in graph["convirt_hf"]  # and the installed names
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_modeling_imports_nothing_from_the_package_and_the_library_no_script():
    for path in source_files(["modeling"]):
        outside = {m for m in imported_modules(path)
                   if m.split(".")[0] == "convirt_hf" and not m.startswith("convirt_hf.modeling")}
        assert not outside, (str(path.relative_to(ROOT)), outside)
    for path in source_files(["convirt_hf"]):
        scripts = {m for m in imported_modules(path)
                   if m.split(".")[0] == "training" or m.startswith("convirt_hf.training")}
        assert not scripts, (str(path.relative_to(ROOT)), scripts)


def test_no_source_file_is_over_700_lines():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in source_files()}
    assert len(sizes) > 50 and "convirt_hf/pretraining/loop.py" in sizes
    assert not {name: lines for name, lines in sizes.items() if lines > MAX_FILE_LINES and name not in ONE_FILE_MODELS}


def test_no_function_is_over_80_lines_of_code():
    long = {}
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and code_lines(node) > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = code_lines(node)
    assert not long, long
