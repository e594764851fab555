"""The project's shape, read from the sources (no import runs): the torch-free rule at any depth, no
import cycle, and the size limits of docs/CONTRIBUTING.md."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_FREE = ("common", "infer", "evaluate", "bench")
TORCH_ALLOWED = {"bench/export.py"}  # `bench export` traces a model: the one benchmark that needs the train extra
TORCH = ("torch", "torchvision", "timm", "torchinfo")
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_COMMAND_LINES, MAX_CLI_LINES = 400, 60, 40, 150


def package_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if not {".venv", "venv", ".git", "tests", "build"}
                  & set(p.relative_to(ROOT).parts))


def module_name(path: Path) -> str:
    parts = ["dpcompat", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement anywhere in the file, functions included;
    a relative ``from . import a`` yields the package and each name (a name may be a module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if not node.level:
                found.append((node.lineno, node.module))
                continue
            package = module_name(path).split(".")[:None if path.name == "__init__.py" else -1]
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def test_torch_free_folders_never_import_torch_at_any_depth():
    offenders = []
    for path in package_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.split("/")[0] not in TORCH_FREE or rel in TORCH_ALLOWED:
            continue
        offenders += [f"{rel}:{line} imports {name}" for line, name in imports(path)
                      if name.split(".")[0] in TORCH]
    assert not offenders, "\n".join(offenders)


def test_the_static_check_sees_an_import_in_a_branch_that_never_runs(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    if False:\n        from torchvision import datasets\n    import torch.nn as nn\n")
    assert sorted(name for _, name in imports(probe)) == ["torch.nn", "torchvision"]


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in package_files()}
    return {m: {name for _, name in imports(p) if name in files and name != m} for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_even_through_imports_inside_functions():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_dependencies_flow_one_way():
    """common imports no stage; infer imports only common; evaluate only infer and common; train
    never imports export, infer or evaluate."""
    allowed = {"common": {"common"}, "infer": {"common", "infer"}, "evaluate": {"common", "infer", "evaluate"},
               "train": {"common", "train"}}
    wrong = []
    for path in package_files():
        stage = path.relative_to(ROOT).parts[0]
        if stage not in allowed:
            continue
        for line, name in imports(path):
            parts = name.split(".")
            if parts[0] == "dpcompat" and len(parts) > 1 and parts[1] not in allowed[stage] and parts[1] != "__init__":
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, node.end_lineno - node.lineno + 1


def is_command(node) -> bool:
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
               for d in node.decorator_list)


@pytest.mark.parametrize("limit", ["module", "function", "command", "cli"])
def test_size_limits(limit):
    too_long = []
    for path in package_files():
        rel = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if limit == "module" and lines > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {lines} lines")
        if limit == "cli" and rel == "cli.py" and lines > MAX_CLI_LINES:
            too_long.append(f"{rel}: {lines} lines")
        for node, length in functions(path):
            if limit == "function" and length > MAX_FUNCTION_LINES:
                too_long.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
            if limit == "command" and is_command(node) and length > MAX_COMMAND_LINES:
                too_long.append(f"{rel}:{node.lineno} {node.name}: {length} lines without its decorators")
    assert not too_long, "\n".join(too_long)
