"""Checks of app/'s shape that `make lint` runs (`python -m tests.architecture`): no import cycle
between Ferry's modules, each layer importing only what lies below it (LAYERS), and no module too
long to read without a reason.

Every import counts, at the top of a module, under ``if TYPE_CHECKING:`` or inside a function:
deferring an import is the usual way a cycle is hidden from the interpreter, and the dependency is
there all the same, so a layer that needs a deferred import to load is already tangled.

The allowances below are today's exceptions, each named exactly: an allowed import that disappears,
or an allowed module that becomes short, must leave its list too, so the lists only shrink.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"
MAX_LINES = 300
LONG_REASON = "Long because:"  # in a module's docstring, says why it may exceed MAX_LINES

Graph = Mapping[str, frozenset[str]]

# Imports that close a cycle today (none: any import that closes one fails the check).
KNOWN_CYCLE_IMPORTS: frozenset[tuple[str, str]] = frozenset()

# Modules over MAX_LINES today, without a reason of their own; issue 14's redesign splits them.
KNOWN_LONG: frozenset[str] = frozenset(
    {
        "app/views/html.py",
    }
)


# What each layer may import of Ferry's (its own modules always): pure HTTP logic nothing else,
# storage nothing about HTTP or requests, the transfer layer nothing of the routes or the app.
LAYERS: Mapping[str, frozenset[str]] = {
    "app.http": frozenset(),
    "app.archives": frozenset(),  # archive layouts: pure format logic, like app.http
    "app.storage": frozenset({"app.metrics"}),
    "app.transfer": frozenset(
        {"app.http", "app.archives", "app.storage", "app.errors", "app.settings", "app.metrics"}
    ),
}


@dataclass(frozen=True, slots=True)
class Module:
    name: str  # dotted, e.g. app.storage.index
    path: Path
    tree: ast.Module
    lines: int


def load(root: Path = APP) -> dict[str, Module]:
    """Every module below `root` (a package directory), by dotted name."""
    modules: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        text = path.read_text(encoding="utf-8")
        modules[name] = Module(name, path, ast.parse(text, str(path)), len(text.splitlines()))
    return modules


def imports(module: Module, known: Iterable[str]) -> frozenset[str]:
    """The modules among `known` that `module` imports, wherever the import statement is."""
    names = set(known)
    is_package = module.path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            found.update(_nearest(alias.name, names) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module.name, is_package)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in names else _nearest(base, names))
    found.discard("")
    found.discard(module.name)
    return frozenset(found)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _nearest(dotted: str, names: set[str]) -> str:
    """The longest prefix of `dotted` that is one of `names` ("" for a module outside them)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if (candidate := ".".join(parts[:end])) in names:
            return candidate
    return ""


def graph(modules: Mapping[str, Module]) -> dict[str, frozenset[str]]:
    return {name: imports(module, modules) for name, module in modules.items()}


def cycles(edges: Graph) -> list[list[str]]:
    """One import cycle per tangle (strongly connected component of more than one module), each as
    the path of modules that leads back to its first, sorted so the report is stable."""
    found = []
    for component in _components(edges):
        if len(component) > 1:
            found.append(_cycle_through(min(component), component, edges))
    return sorted(found)


def _components(edges: Graph) -> list[frozenset[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[frozenset[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(edges.get(start, ())))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(edges.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(frozenset(component))
    return components


def _cycle_through(start: str, component: frozenset[str], edges: Graph) -> list[str]:
    """The shortest path from `start` back to itself inside `component` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges.get(node, ())):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt in component and nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in no cycle")  # a component of 2+ modules always has one


def without(edges: Graph, allowed: Iterable[tuple[str, str]]) -> dict[str, frozenset[str]]:
    drop = set(allowed)
    return {name: frozenset(t for t in targets if (name, t) not in drop) for name, targets in edges.items()}


def cycle_problems(edges: Graph, allowed: frozenset[tuple[str, str]]) -> list[str]:
    problems = [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(without(edges, allowed))]
    for importer, imported in sorted(allowed):
        if imported not in edges.get(importer, frozenset()):
            problems.append(f"{importer} no longer imports {imported}: remove it from KNOWN_CYCLE_IMPORTS")
        elif not cycles(without(edges, allowed - {(importer, imported)})):
            problems.append(
                f"{importer} -> {imported} closes no cycle now: remove it from KNOWN_CYCLE_IMPORTS"
            )
    return problems


def size_problems(
    modules: Mapping[str, Module], allowed: frozenset[str], *, limit: int = MAX_LINES, base: Path = APP.parent
) -> list[str]:
    problems = []
    for module in modules.values():
        where = module.path.relative_to(base).as_posix()
        reason = LONG_REASON in (ast.get_docstring(module.tree) or "")
        if where in allowed:
            if module.lines <= limit or reason:
                problems.append(f"{where} needs no allowance now: remove it from KNOWN_LONG")
        elif module.lines > limit and not reason:
            problems.append(
                f"{where} has {module.lines} lines (over {limit}): split it, or say why in its "
                f'docstring ("{LONG_REASON} ...")'
            )
    known = {module.path.relative_to(base).as_posix() for module in modules.values()}
    problems += [f"{where} does not exist: remove it from KNOWN_LONG" for where in sorted(allowed - known)]
    return sorted(problems)


def untyped_state_problems(modules: Mapping[str, Module], *, base: Path = APP.parent) -> list[str]:
    """Uses of Starlette's untyped `.state` (app.state, request.state): mypy --strict cannot see a
    typo there, so Ferry's services live in the typed `Services` (app/services.py) instead."""
    problems = []
    for module in modules.values():
        where = module.path.relative_to(base).as_posix()
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Attribute) and node.attr == "state":
                problems.append(
                    f"{where}:{node.lineno} uses the untyped `.state`: reach the typed Services instead"
                )
    return sorted(problems)


UVICORN_ADAPTER = "app.transfer.uvicorn_adapter"  # the one module that reaches uvicorn's internals
BOOTSTRAP = frozenset({"app.main", "app.server"})  # what app/transfer/ sits below


def seam_problems(modules: Mapping[str, Module], *, adapter: str = UVICORN_ADAPTER) -> list[str]:
    """uvicorn's private modules (its protocols, `uvicorn._*`) imported outside the adapter, and
    the transfer layer importing the app or the server bootstrap above it."""
    problems = []
    names = set(modules)
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            private = [t for t in targets if t.startswith("uvicorn.") and _uvicorn_private(t)]
            if private and module.name != adapter:
                problems.append(f"{module.name} imports {private[0]}: only {adapter} may")
            if module.name.startswith("app.transfer."):
                upward = {_nearest(t, names) for t in targets} & BOOTSTRAP
                problems += [f"{module.name} imports {u}: the transfer layer sits below it" for u in upward]
    return sorted(set(problems))


def layer_problems(edges: Graph, layers: Mapping[str, frozenset[str]] = LAYERS) -> list[str]:
    """Imports that reach above their layer: a module of a layer in `layers` importing a module of
    Ferry's outside that layer and outside what the layer may use."""
    problems = []
    for importer, targets in edges.items():
        for layer, allowed in layers.items():
            if not _within(importer, layer):
                continue
            for target in sorted(targets):
                if not any(_within(target, ok) for ok in (layer, *allowed)):
                    problems.append(f"{importer} imports {target}: {layer} sits below it")
    return sorted(problems)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _uvicorn_private(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[1] == "protocols" or any(part.startswith("_") for part in parts[1:])


def main() -> int:
    modules = load()
    problems = cycle_problems(graph(modules), KNOWN_CYCLE_IMPORTS) + size_problems(modules, KNOWN_LONG)
    problems += untyped_state_problems(modules) + seam_problems(modules) + layer_problems(graph(modules))
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
