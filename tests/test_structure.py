"""How the code is put together, checked from its source: imports flow one way and form no circle,
and one module alone writes a job's status."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("coordination", "workflows")


def sources():
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(node: ast.AST, current: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = current.split(".") if is_package else current.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        # `from a.b import c` may import the module a.b.c: count both.
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    return []


def module_level_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    known = {module_name(path) for path in sources()}
    for path in sources():
        name = module_name(path)
        tree = ast.parse(path.read_text())
        targets = set()
        for node in tree.body:  # module level only: an import inside a function runs later
            for target in imported(node, name, path.name == "__init__.py"):
                # Importing a.b.c runs a's and a.b's __init__ first.
                parts = target.split(".")
                targets |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
        # A module's own packages are initialised before it (python imports a.b before a.b.c).
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = targets - {name} - ancestors
    return graph


def test_coordination_never_imports_workflows_not_even_inside_a_function():
    offenders = []
    for path in sources():
        name = module_name(path)
        if not name.startswith("coordination"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if any(target.split(".")[0] == "workflows" for target in imported(node, name, path.name == "__init__.py")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], "coordination must not import workflows (workflows registers itself): " + ", ".join(offenders)


def test_module_level_imports_form_no_circle():
    graph = module_level_imports()
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            pytest.fail("import circle: " + " -> ".join(circle))


def _writes_status(node: ast.AST) -> bool:
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in {
        "update", "create", "get_or_create", "update_or_create", "bulk_update",
    }:
        return any(keyword.arg == "status" for keyword in node.keywords)
    return False


def test_only_the_transitions_module_writes_a_jobs_status():
    writers = []
    for path in sources():
        if module_name(path) == "coordination.transitions":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if _writes_status(node):
                writers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert writers == [], "status written outside coordination/transitions.py: " + ", ".join(writers)
