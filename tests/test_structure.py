"""How the code is put together, checked from its source: imports flow one way (STYLE.md §9) and form
no circle, and one module alone writes a job's status.

Every import counts, wherever it is written: at module level, inside a function or a method, under
an `if` or a `try`, and under `if TYPE_CHECKING:` too (a type checker follows it, and nothing here
needs one to close a circle). An import inside a function runs later, but it is a dependency all
the same: the circles this test once missed were all made of them."""

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("coordination", "workflows")

# STYLE.md §9, "Data <- Rules <- Services <- API / Console / Work", lowest first, as docs/design.md
# lists them: a module may import its own layer and the ones below, never one above. A module no layer
# names is in the top one: the API, the console, the work (tasks, recovery, providers) and the outbox
# that runs after commit (events, webhooks), not ordered among themselves (the outbox renders jobs
# with the API's serializer; recovery's background pass sends the webhooks that are due).
LAYERS = (
    ("data", (
        "coordination.models", "coordination.exceptions", "workflows.models", "coordination.provider_catalog",
        "coordination.writes",
    )),
    # Code that calls a model (Work): handed all it needs, it imports nothing else of ours, so a
    # service may use it too (a workflow's steps).
    ("runners", ("coordination.runners",)),
    # What runs under the coordinator lock: no estimate, no payload, no API is within its reach.
    ("rules", (
        "coordination.queue", "coordination.transitions", "coordination.kinds",
        "coordination.webhook_targets",
    )),
    # The writes, and beside them the reads, which never write.
    ("services and reads", (
        "coordination.services", "coordination.maintenance", "coordination.seed", "coordination.selectors",
        "coordination.estimates", "workflows.services", "workflows.selectors", "workflows.seed",
    )),
)
TOP = "API, console, work and outbox"


def sources(root: Path = ROOT, apps=APPS):
    for app in apps:
        for path in sorted((root / app).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
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


def import_graph(root: Path = ROOT, apps=APPS) -> dict[str, dict[str, str]]:
    """module -> {module it imports: where (file:line of the first such import)}, for every import
    statement anywhere in the module's tree (ast.walk: functions, methods, if, try, TYPE_CHECKING)."""
    paths = list(sources(root, apps))
    known = {module_name(path, root) for path in paths}
    graph: dict[str, dict[str, str]] = {}
    for path in paths:
        name = module_name(path, root)
        # A module's own packages are initialised before it (python imports a.b before a.b.c).
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        targets: dict[str, str] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            for target in imported(node, name, path.name == "__init__.py"):
                # Importing a.b.c runs a's and a.b's __init__ first.
                parts = target.split(".")
                for module in sorted({".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known):
                    if module != name and module not in ancestors:
                        targets.setdefault(module, f"{path.relative_to(root)}:{node.lineno}")
        graph[name] = targets
    return graph


def tangles(graph: dict[str, dict[str, str]]) -> list[set[str]]:
    """The groups of modules that import one another, directly or not (the graph's strongly
    connected components of two or more modules, by Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return groups


def circles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One circle through each tangle, as a path that ends where it starts."""
    return [_circle_through(graph, group) for group in tangles(graph)]


def _circle_through(graph: dict[str, dict[str, str]], group: set[str]) -> list[str]:
    """The shortest way from the group's first module back to itself, inside the group."""
    start = min(group)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for target in sorted(graph[module]):
            if target == start:
                path = [module]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target in group and target not in came_from:
                came_from[target] = module
                queue.append(target)
    raise AssertionError(f"no circle through {sorted(group)}")  # a strongly connected group has one


def described(graph: dict[str, dict[str, str]], circle: list[str]) -> str:
    steps = [circle[0]] + [f"{after} ({graph[before][after]})" for before, after in zip(circle, circle[1:])]
    return " -> ".join(steps)


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return rank
    return len(LAYERS)


def layer_name(rank: int) -> str:
    return LAYERS[rank][0] if rank < len(LAYERS) else TOP


def upward_imports(graph: dict[str, dict[str, str]]) -> list[str]:
    """Each import of a module in a higher layer than the importer's, named with where it is. An app's
    own package (`coordination`, `workflows`) is initialised before any of its modules, whatever
    their layer: it is not counted as a target (what its __init__ imports is checked as its own)."""
    found = []
    for module, targets in sorted(graph.items()):
        for target, where in sorted(targets.items()):
            if target not in APPS and layer_of(target) > layer_of(module):
                found.append(
                    f"{where}: {module} ({layer_name(layer_of(module))}) imports {target} ({layer_name(layer_of(target))})"
                )
    return found


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


def test_imports_form_no_circle_wherever_they_are_written():
    graph = import_graph()
    found = [
        described(graph, _circle_through(graph, group)) + f"\n  (all that import one another there: {', '.join(sorted(group))})"
        for group in tangles(graph)
    ]
    assert found == [], "import circle(s):\n" + "\n".join(found)


def test_imports_flow_down_the_layers():
    found = upward_imports(import_graph())
    assert found == [], "imports against STYLE.md §9's layers:\n" + "\n".join(found)


def test_every_layer_names_modules_that_exist():
    """A layer that names a module which was moved or renamed would check nothing."""
    graph = import_graph()
    missing = [prefix for _, prefixes in LAYERS for prefix in prefixes if prefix not in graph]
    assert missing == []


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_circle_closed_by_an_import_inside_a_function_is_found_and_named(tmp_path):
    """The checks above can fail: a circle whose one import is written inside a function, or in a
    method under a `try` and an `if`, or under TYPE_CHECKING, is found, and named with its lines."""
    _tree(tmp_path, {
        "app/__init__.py": "",
        "app/low.py": "def later():\n    from app.high import value\n    return value\n",
        "app/high.py": "from app.low import later\n\nvalue = 1\n",
        "app/deep.py": (
            "class Holder:\n    def method(self):\n        try:\n            if self:\n"
            "                from . import other\n        except ImportError:\n            pass\n"
        ),
        "app/other.py": "import app.deep\n",
        "app/typed.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from app.hinted import Hint\n",
        "app/hinted.py": "from app import typed\n",
        "app/alone.py": "from app.low import later\n",
    })
    graph = import_graph(tmp_path, ("app",))

    found = circles(graph)

    assert sorted(found) == [
        ["app.deep", "app.other", "app.deep"],
        ["app.high", "app.low", "app.high"],
        ["app.hinted", "app.typed", "app.hinted"],
    ]
    assert described(graph, ["app.high", "app.low", "app.high"]) == (
        "app.high -> app.low (app/high.py:1) -> app.high (app/low.py:2)"
    )


def test_an_import_of_a_higher_layer_inside_a_function_is_found_and_named():
    """Code under the coordinator lock that reads an estimate, as queue.locked once did."""
    graph = {
        "coordination.queue.locked": {"coordination.estimates": "coordination/queue/locked.py:164"},
        "coordination.estimates": {"coordination.queue.lines": "coordination/estimates.py:27"},
    }
    assert upward_imports(graph) == [
        "coordination/queue/locked.py:164: coordination.queue.locked (rules) imports coordination.estimates "
        "(services and reads)"
    ]


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
