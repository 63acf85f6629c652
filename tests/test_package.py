"""The package's shape: no import cycle, no function over 100 lines (issue 17's "done when")."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dmrilib"
MODULES = sorted(PACKAGE.rglob("*.py"))

#: A function longer than this is split into named steps (ARCHITECTURE.md, Conventions).
MAX_FUNCTION_LINES = 100


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """Name -> lines of every function (methods and nested ones included) longer than ``limit``."""
    return {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit}


def test_long_functions_counts_decorators_out_and_nested_functions_in():
    body = "\n".join(f"    x = {i}" for i in range(101))
    source = f"def outer():\n    def inner():\n{body.replace('    ', '        ')}\n    return inner\n"
    assert long_functions(source) == {"outer": 104, "inner": 102}
    assert long_functions("def short():\n    return 1\n") == {}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_function_is_over_100_lines(path):
    long = long_functions(path.read_text())
    assert not long, f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


# --------------------------------------------------------------------------- import cycles

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lazy_api(path: Path) -> dict[str, str]:
    """Name -> module of a package's PEP 562 ``_API`` table (``dmrilib``, ``dmrilib.groundtruth``)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_API" for t in node.targets):
            return {name: module for module, names in ast.literal_eval(node.value).items() for name in names}
    return {}


def import_graph() -> dict[str, set[str]]:
    """dmrilib module -> the dmrilib modules it imports, at module level or inside functions.

    Imports under ``if TYPE_CHECKING:`` are not run and are left out; ``from
    package import name`` counts as an import of the submodule ``name`` or,
    for a lazily loaded name, of the module the package's ``_API`` table
    takes it from.
    """
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    packages = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
    apis = {name: _lazy_api(paths[name]) for name in packages}
    graph = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text())
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
        base = module if module in packages else module.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in paths)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")[:len(base.split(".")) - node.level + 1]
                    source = ".".join(parts + ([node.module] if node.module else []))
                else:
                    source = node.module
                if source not in paths:
                    continue
                for alias in node.names:
                    if f"{source}.{alias.name}" in paths:
                        edges.add(f"{source}.{alias.name}")
                    else:
                        edges.add(apis.get(source, {}).get(alias.name, source))
        edges.discard(module)
        graph[module] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_import_graph_sees_module_and_function_level_imports():
    graph = import_graph()
    assert "dmrilib.layout" in graph["dmrilib.pipeline"]  # module level
    assert "dmrilib.figures" in graph["dmrilib.pipeline"]  # inside run_figures
    assert "dmrilib.groundtruth.segmentation" in graph["dmrilib.pipeline"]  # through groundtruth's _API
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_figures_and_export_do_not_import_pipeline():
    graph = import_graph()
    assert "dmrilib.pipeline" not in graph["dmrilib.figures"]
    assert "dmrilib.pipeline" not in graph["dmrilib.export"]


def test_dmrilib_has_no_import_cycle():
    cycles = import_cycles(import_graph())
    assert not cycles, f"import cycles in dmrilib: {cycles}"
