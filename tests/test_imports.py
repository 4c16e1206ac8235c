"""The import rules of docs/STYLE.md, read from the source with ``ast`` (no module is imported,
no service is touched: a pure test, see tests/purity.py).

- No import cycle among our modules (module-level imports; ``if TYPE_CHECKING:`` ones are not
  run).
- No import of our own modules inside a function, except the CLI's few lazy ones listed in
  ``CLI_LAZY`` with their reason (start-up time, never a cycle broken).
- ``domain`` imports nothing of ours but ``domain``, and no I/O library; ``infra`` never
  imports ``actors`` or ``services``, and only the CLI loads a module by name (``importlib``:
  the CLI may send by actor name); ``services`` never imports ``actors``.
- Nothing a worker imports (``actors``) imports ``prometheus_client`` when it is imported:
  the workers' multiprocess metrics are set up first (``infra.middleware.metrics``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Our packages.  ``bench`` is in the graph (no cycle, layering) but keeps its lazy imports:
#: a benchmark imports what it measures when it runs (actors registered on the run's broker).
PACKAGES = ("domain", "infra", "services", "actors", "schedules", "bench")
NO_LAZY_RULE = ("bench",)

#: (module, module it imports inside a function) -> why.  The only place such imports are
#: allowed; each one keeps the CLI's start-up short and none breaks a cycle (tested).
CLI_LAZY = {
    ("infra.cli.main", "infra.demo.target"): "the demo only: alembic (logs its set-up on import)",
    ("infra.cli.main", "infra.demo.runner"): "the demo only: alembic (logs its set-up on import)",
    ("infra.cli.ops", "infra.db.migrate"): "`ballast migrate` only: alembic",
    ("infra.web.cli", "infra.web.app"): "`ballast web` only: Flask and the console's pages",
}

#: What ``domain`` may not import (STYLE.md: no SQLAlchemy, Dramatiq, pika, redis, structlog).
IO_LIBRARIES = ("sqlalchemy", "dramatiq", "pika", "redis", "structlog", "psycopg", "httpx",
                "alembic", "flask", "prometheus_client", "requests", "urllib3", "socket")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # an absolute dotted name (ours resolved to one of our modules)
    line: int
    in_function: bool
    type_checking: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _ours(name: str) -> str | None:
    """The module of ours that importing ``name`` runs last (``infra.alerts.Alert`` is
    ``infra.alerts``), or None for a library."""
    if name.split(".")[0] not in PACKAGES:
        return None
    mods = modules()
    while name not in mods and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in mods else None


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    # ``from infra import alerts`` imports the module infra.alerts; ``from infra.alerts
    # import Alert`` the module infra.alerts.
    return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules() else prefix
            for a in node.names]


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


@lru_cache(maxsize=1)
def imports() -> tuple[Import, ...]:
    out: list[Import] = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"

        def walk(node: ast.AST, in_function: bool, type_checking: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    walk(child, True, type_checking)
                elif isinstance(child, ast.If) and _is_type_checking(child.test):
                    walk(child, in_function, True)
                elif isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(module, child, is_package):
                        out.append(Import(module, _ours(target) or target, child.lineno,
                                          in_function, type_checking))
                else:
                    walk(child, in_function, type_checking)

        walk(tree, False, False)
    return tuple(out)


def _graph(extra: set[tuple[str, str]] = frozenset()) -> dict[str, set[str]]:
    """Module -> our modules it imports when it is imported."""
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for i in imports():
        if not i.in_function and not i.type_checking and i.target in graph and i.target != i.module:
            graph[i.module].add(i.target)
    for a, b in extra:
        graph[a].add(b)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and the modules
    importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read():
    """The parser finds our modules and their imports (a rule checked on nothing proves nothing)."""
    assert {"domain.money", "infra.uow", "infra.broker", "actors.alerts",
            "schedules.runner"} <= set(modules())
    graph = _graph()
    assert "infra.broker" in graph["infra.uow"]
    assert "infra.alerts" in graph["services.conditions"]


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(_graph()) == []


def test_no_function_level_imports_of_our_modules():
    lazy = sorted(f"{i.module}:{i.line} imports {i.target}" for i in imports()
                  if i.in_function and _ours(i.target) and (i.module, i.target) not in CLI_LAZY
                  and not any(_in(i.module, p) for p in NO_LAZY_RULE))
    assert lazy == [], "import at the top of the module (no cycle is left to break)"


def test_the_cli_lazy_imports_exist_and_break_no_cycle():
    """Each allowed lazy import is still there (else it leaves the list), and it would be no
    cycle at the top of its module."""
    used = {(i.module, i.target) for i in imports() if i.in_function}
    assert set(CLI_LAZY) <= used
    assert all(_in(m, "infra.cli") or _in(m, "infra.web.cli") for m, _ in CLI_LAZY)
    assert cycles(_graph(set(CLI_LAZY))) == []


def test_domain_imports_only_domain_and_no_io():
    wrong = sorted(f"{i.module}:{i.line} imports {i.target}" for i in imports()
                   if _in(i.module, "domain") and (
                       (_ours(i.target) and not _in(i.target, "domain"))
                       or i.target.split(".")[0] in IO_LIBRARIES))
    assert wrong == []


def test_infra_never_imports_actors():
    wrong = sorted(f"{i.module}:{i.line} imports {i.target}" for i in imports()
                   if _in(i.module, "infra") and _in(i.target, "actors"))
    assert wrong == []


def test_infra_never_imports_services_and_services_never_import_actors():
    wrong = sorted(f"{i.module}:{i.line} imports {i.target}" for i in imports()
                   if (_in(i.module, "infra") and _in(i.target, "services"))
                   or (_in(i.module, "services") and _in(i.target, "actors")))
    assert wrong == []


#: Calls that import a module named by a value, which an import statement would show.
BY_NAME = ("importlib.import_module", "import_module", "__import__")


def _loads_by_name() -> list[tuple[str, int]]:
    found = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in BY_NAME:
                found.append((module, node.lineno))
    return found


def test_only_the_cli_loads_a_module_by_name():
    """A module loaded by name is an import this file cannot follow: the CLI alone may (it
    sends by actor name, docs/STYLE.md), so the layering above cannot be got round."""
    found = _loads_by_name()
    assert ("infra.cli.in_process" in {m for m, _ in found})  # the rule sees the one there is
    wrong = sorted(f"{m}:{line}" for m, line in found
                   if _in(m, "infra") and not _in(m, "infra.cli") and not _in(m, "bench"))
    wrong += sorted(f"{m}:{line}" for m, line in found
                    if not _in(m, "infra") and not _in(m, "bench"))
    assert wrong == []


def test_workers_import_no_prometheus_client_on_import():
    graph = _graph()
    seen, todo = set(), [m for m in graph if _in(m, "actors")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    wrong = sorted(f"{i.module}:{i.line}" for i in imports() if i.module in seen
                   and not i.in_function and i.target.split(".")[0] == "prometheus_client")
    assert wrong == []
