"""The rules of the house (docs/architecture.md, "Rules"), checked by reading the source with ``ast``:
nothing is imported, so a broken or heavy module cannot hide a violation.

a. no import cycle among the modules of app/ and workers/ (module-level imports; ``from x import y`` where
   ``x.y`` is a module is an edge to ``x.y``; imports under ``if TYPE_CHECKING:`` do not count), nor among their
   folders (the rooms: ``workers/models/``, ``app/contract/``...; a module directly in app/ or workers/ is a node
   of its own): no folder imports a folder that imports it back, however many steps away;
b. app/ never imports workers; workers/ import from app only ``app.contract``; app/contract imports nothing
   from the rest of app;
c. no import inside a function body, except of a heavy library of :data:`LAZY_ALLOWED` (a deliberate lazy
   import that keeps a module light);
d. production code (app/, workers/, scripts/) never imports from tests/;
e. among production modules outside workers/demo/, only workers/models/sources.py names the ``workers.demo``
   package (in an import or a string).

Every failure lists the offending ``file:line`` and what to do about it.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "workers")
SCRIPTS = "scripts"
TESTS = ROOT / "tests"

#: Heavy libraries that a function may import lazily (and only these): importing them at module level
#: would make a light module (or the gateway) pay for them, or load them where they are not needed.
LAZY_ALLOWED = frozenset({"torch", "diffusers", "transformers", "controlnet_aux", "huggingface_hub", "onnxruntime",
                          "rembg", "pymatting", "spandrel"})

#: The one production module outside workers/demo/ that may name the demo package.
DEMO_PACKAGE = "workers.demo"
DEMO_GATE = "workers/models/sources.py"


@dataclass(frozen=True)
class Import:
    path: str          # file, relative to the repository root
    line: int
    target: str        # the module imported (resolved; the longest prefix that is one of ours, if any)
    in_function: bool
    type_checking: bool

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _files(*tops: str) -> tuple[Path, ...]:
    return tuple(sorted(p for top in tops for p in (ROOT / top).rglob("*.py")))


@cache
def _modules() -> dict[str, Path]:
    """Every module of app/ and workers/ by dotted name (packages by their own name)."""
    return {_module_name(p): p for p in _files(*PACKAGES)}


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, in_function: bool = False, type_checking: bool = False):
    """(node, in_function, type_checking) for every node under ``node``."""
    for child in ast.iter_child_nodes(node):
        yield child, in_function, type_checking
        child_fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, child_fn, True
                yield from _walk(stmt, child_fn, True)
            for stmt in child.orelse:
                yield stmt, child_fn, type_checking
                yield from _walk(stmt, child_fn, type_checking)
            continue
        yield from _walk(child, child_fn, type_checking)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def _imports(path: Path) -> tuple[Import, ...]:
    rel = path.relative_to(ROOT).as_posix()
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    ours = _modules()
    found = []
    for node, in_function, type_checking in _walk(_tree(path)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                targets.append(sub if sub in ours else base)
        for target in dict.fromkeys(targets):
            # ``import a.b.c``: an edge to the longest prefix that is one of our modules
            parts = target.split(".")
            for n in range(len(parts), 0, -1):
                if ".".join(parts[:n]) in ours:
                    target = ".".join(parts[:n])
                    break
            found.append(Import(rel, node.lineno, target, in_function, type_checking))
    return tuple(found)


def _all_imports(*tops: str) -> list[Import]:
    return [imp for p in _files(*tops) for imp in _imports(p)]


def _under(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def _report(title: str, lines: list[str], advice: str) -> str:
    return f"{title} ({len(lines)}):\n  " + "\n  ".join(lines) + f"\n{advice}"


# --- a. no cycles ------------------------------------------------------------------------------------------

def _find_cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan, iterative enough for a few hundred modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        # breadth-first from start back to start inside the component: the shortest cycle through it
        paths = {start: [start]}
        queue = [start]
        cycle = None
        while queue and cycle is None:
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    cycle = paths[v] + [start]
                    break
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
        cycles.append(cycle or [start, start])
    return cycles


def test_no_import_cycles():
    ours = _modules()
    graph: dict[str, dict[str, Import]] = {m: {} for m in ours}
    for imp in _all_imports(*PACKAGES):
        if imp.in_function or imp.type_checking or imp.target not in ours:
            continue
        source = _module_name(ROOT / imp.path)
        graph[source].setdefault(imp.target, imp)
    problems = []
    for cycle in _find_cycles(graph):
        steps = [f"{graph[a][b].where}: {a} -> {b}" for a, b in pairwise(cycle)]
        problems.append("cycle " + " -> ".join(cycle) + "\n    " + "\n    ".join(steps))
    assert not problems, _report(
        "import cycles among app/ and workers/", problems,
        "Break each cycle: move the shared piece down into a module both can import (app/contract for what "
        "gateway and worker share), or import under `if TYPE_CHECKING:` when only annotations need it.")



def _room(path: Path) -> str:
    """The node of ``path`` in the folder graph: its folder (``workers/models/``), or the module itself for one
    directly in a top package (``workers/runtime.py``: the top-level files are not one room)."""
    rel = path.relative_to(ROOT)
    if len(rel.parts) == 2 and rel.name != "__init__.py":
        return rel.as_posix()
    return rel.parent.as_posix() + "/"


def _room_graph() -> dict[str, dict[str, list[Import]]]:
    """Folder -> folder it imports -> the module-level imports that make the edge."""
    ours = _modules()
    graph: dict[str, dict[str, list[Import]]] = {_room(p): {} for p in ours.values()}
    for imp in _all_imports(*PACKAGES):
        if imp.in_function or imp.type_checking or imp.target not in ours:
            continue
        source, target = _room(ROOT / imp.path), _room(ours[imp.target])
        if source != target:
            graph[source].setdefault(target, []).append(imp)
    return graph


def _edge(graph: dict[str, dict[str, list[Import]]], a: str, b: str) -> str:
    imports = graph[a][b]
    more = f" (+{len(imports) - 6} more)" if len(imports) > 6 else ""
    return f"{a} -> {b}: " + ", ".join(imp.where for imp in imports[:6]) + more


def test_no_folder_cycles():
    graph = _room_graph()
    # every pair of folders importing each other, both directions named; then any longer cycle
    problems = [f"{a} <-> {b}\n    {_edge(graph, a, b)}\n    {_edge(graph, b, a)}"
                for a in sorted(graph) for b in sorted(graph[a]) if a < b and a in graph[b]]
    for cycle in _find_cycles(graph):
        if len(cycle) > 3:
            steps = [_edge(graph, a, b) for a, b in pairwise(cycle)]
            problems.append("cycle " + " -> ".join(cycle) + "\n    " + "\n    ".join(steps))
    assert not problems, _report(
        "folders of app/ and workers/ importing each other", problems,
        "Arrows between rooms point one way. Move what both sides need into a room below both (as "
        "workers/patching/ is below workers/models/, inference/ and submodels/), or import under "
        "`if TYPE_CHECKING:` when only annotations need it.")

# --- b. arrows point one way --------------------------------------------------------------------------------

def test_arrows_point_one_way():
    problems = []
    for imp in _all_imports(*PACKAGES):
        if imp.path.startswith("app/"):
            if _under(imp.target, "workers"):
                problems.append(f"{imp.where}: app/ imports {imp.target} (the gateway never imports workers)")
            elif imp.path.startswith("app/contract/") and _under(imp.target, "app") \
                    and not _under(imp.target, "app.contract"):
                problems.append(f"{imp.where}: app/contract imports {imp.target} (the contract imports only "
                                "app.contract)")
        elif imp.path.startswith("workers/") and _under(imp.target, "app") and not _under(imp.target, "app.contract"):
            problems.append(f"{imp.where}: workers/ imports {imp.target} (the worker imports from app only "
                            "app.contract)")
    assert not problems, _report(
        "imports against the arrows", problems,
        "What both sides need belongs in app/contract; gateway code stays out of the worker and vice versa.")


# --- c. no lazy imports but of heavy libraries ----------------------------------------------------------------

def test_imports_in_functions_are_only_heavy_libraries():
    problems = [f"{imp.where}: imports {imp.target or '.'} inside a function"
                for imp in _all_imports(*PACKAGES)
                if imp.in_function and imp.target.split(".")[0] not in LAZY_ALLOWED]
    assert not problems, _report(
        "imports inside function bodies", problems,
        "Move them to the top of the module. Only a heavy library may be imported lazily, deliberately, to keep "
        f"a module light ({', '.join(sorted(LAZY_ALLOWED))}); an import cycle is not a reason: break it.")


def test_lazy_allow_list_is_minimal():
    """Every library of the allow-list is lazily imported somewhere: a stale entry is removed."""
    used = {imp.target.split(".")[0] for imp in _all_imports(*PACKAGES) if imp.in_function}
    assert LAZY_ALLOWED <= used, f"LAZY_ALLOWED names libraries no function imports: {sorted(LAZY_ALLOWED - used)}"


# --- d. production code never imports tests ------------------------------------------------------------------

def test_production_code_never_imports_tests():
    # tests/ is on the test sys.path (pyproject: pythonpath), so its own top-level names are test code too
    test_names = {"tests", "conftest"} | {p.stem if p.suffix == ".py" else p.name for p in TESTS.iterdir()
                                           if p.suffix == ".py" or (p.is_dir() and any(p.glob("*.py")))}
    problems = [f"{imp.where}: imports {imp.target} (test code)"
                for imp in _all_imports(*PACKAGES, SCRIPTS)
                if imp.target.split(".")[0] in test_names]
    assert not problems, _report(
        "production code importing from tests/", problems,
        "Move what production needs into app/ or workers/ (and let tests/support import it from there).")


# --- e. the demo package is reached through one door -----------------------------------------------------------

def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_only_sources_names_the_demo_package():
    problems = []
    for path in _files(*PACKAGES):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("workers/demo/") or rel == DEMO_GATE:
            continue
        for imp in _imports(path):
            if _under(imp.target, DEMO_PACKAGE):
                problems.append(f"{imp.where}: imports {imp.target}")
        tree = _tree(path)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                    and ("workers.demo" in node.value or "workers/demo" in node.value):
                problems.append(f"{rel}:{node.lineno}: names the demo package in the string {node.value!r}")
    assert not problems, _report(
        f"production modules naming {DEMO_PACKAGE} outside {DEMO_GATE}", problems,
        f"Reach demo models through {DEMO_GATE} (a `demo:` source of models_config), so that a deployment of "
        "real models never imports the demo builders.")


# --- the checker itself --------------------------------------------------------------------------------------

def test_checker_sees_the_house():
    """The walk finds the modules and the edges it is meant to judge (a silent checker passes everything)."""
    ours = _modules()
    expected = {"app.main", "app.contract.jobs", "workers.tasks", "workers.demo", DEMO_GATE[:-3].replace("/", ".")}
    assert expected <= set(ours)
    tasks = {imp.target for imp in _imports(ours["workers.tasks"])}
    assert "app.contract.jobs" in tasks, sorted(tasks)


def test_checker_rules_on_a_sample(tmp_path):
    """Relative imports, ``from package import submodule``, TYPE_CHECKING and function bodies are told apart."""
    code = (
        "from typing import TYPE_CHECKING\n"
        "from . import base\n"
        "from app.contract import jobs\n"
        "import app.contract.limits as limits\n"
        "if TYPE_CHECKING:\n"
        "    from app.deps import Deps\n"
        "def f():\n"
        "    import torch\n"
        "    from ..contract import codes\n"
    )
    tree = ast.parse(code)
    seen = []
    for node, in_function, type_checking in _walk(tree):
        if isinstance(node, ast.ImportFrom):
            seen.append((_resolve("app.actions.generate", False, node), node.lineno, in_function, type_checking))
        elif isinstance(node, ast.Import):
            seen.append((node.names[0].name, node.lineno, in_function, type_checking))
    assert seen == [
        ("typing", 1, False, False), ("app.actions", 2, False, False), ("app.contract", 3, False, False),
        ("app.contract.limits", 4, False, False), ("app.deps", 6, False, True), ("torch", 8, True, False),
        ("app.contract", 9, True, False),
    ]
    cycles = _find_cycles({"a": {"b": None}, "b": {"c": None}, "c": {"a": None}, "d": {"a": None}})
    assert cycles == [["a", "b", "c", "a"]]


def test_checker_sees_the_rooms():
    """The folder graph has the rooms and the edges it is meant to judge."""
    assert _room(ROOT / "workers/models/speed.py") == "workers/models/"
    assert _room(ROOT / "workers/patching/__init__.py") == "workers/patching/"
    assert _room(ROOT / "workers/tasks.py") == "workers/tasks.py"
    graph = _room_graph()
    assert {"workers/inference/", "workers/patching/"} <= set(graph["workers/models/"]), graph["workers/models/"]
    assert "app/contract/" in graph["workers/patching/"]
    assert not graph["app/contract/"]
