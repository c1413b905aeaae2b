"""The shape checks `make lint` runs (tests/architecture.py): they find what they are for."""

from __future__ import annotations

from pathlib import Path

from tests import architecture
from tests.architecture import cycle_problems, cycles, graph, layer_problems, load, size_problems


def _package(root: Path, files: dict[str, str]) -> Path:
    """A package `pkg` under `root` with the given modules (paths relative to it)."""
    pkg = root / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    for folder in {(pkg / name).parent for name in files}:
        (folder / "__init__.py").touch()
    return pkg


def test_every_kind_of_import_is_an_edge(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        {
            "a.py": "import pkg.b\nfrom pkg import c\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.d import X\n",
            "c.py": "def f():\n    from . import a\n",
            "sub/d.py": "from ..b import thing\nfrom . import e\nimport os\n",
            "sub/e.py": "from .. import c\n",
        },
    )
    edges = graph(load(pkg))
    assert edges["pkg.a"] == {"pkg.b", "pkg.c"}
    assert edges["pkg.b"] == {"pkg.sub.d"}  # under TYPE_CHECKING
    assert edges["pkg.c"] == {"pkg.a"}  # inside a function, relative
    assert edges["pkg.sub.d"] == {"pkg.b", "pkg.sub.e"}  # a name from a module; a module; no os
    assert edges["pkg.sub.e"] == {"pkg.c"}


def test_a_cycle_is_reported_as_its_path() -> None:
    edges = {
        "m.a": frozenset({"m.b"}),
        "m.b": frozenset({"m.c"}),
        "m.c": frozenset({"m.a", "m.d"}),
        "m.d": frozenset(),
        "m.e": frozenset({"m.d"}),
    }
    assert cycles(edges) == [["m.a", "m.b", "m.c", "m.a"]]
    assert cycle_problems(edges, frozenset()) == ["import cycle: m.a -> m.b -> m.c -> m.a"]


def test_an_allowed_import_hides_only_its_own_cycle() -> None:
    edges = {"m.a": frozenset({"m.b"}), "m.b": frozenset({"m.a"})}
    allowed = frozenset({("m.b", "m.a")})
    assert cycle_problems(edges, allowed) == []
    # A new import closing another cycle through the same modules is caught.
    tangled = {**edges, "m.b": frozenset({"m.a", "m.c"}), "m.c": frozenset({"m.b"})}
    assert cycle_problems(tangled, allowed) == ["import cycle: m.b -> m.c -> m.b"]


def test_a_stale_cycle_allowance_is_reported() -> None:
    allowed = frozenset({("m.b", "m.a")})
    gone = {"m.a": frozenset({"m.b"}), "m.b": frozenset()}
    assert cycle_problems(gone, allowed) == ["m.b no longer imports m.a: remove it from KNOWN_CYCLE_IMPORTS"]
    harmless = {"m.a": frozenset(), "m.b": frozenset({"m.a"})}
    assert cycle_problems(harmless, allowed) == [
        "m.b -> m.a closes no cycle now: remove it from KNOWN_CYCLE_IMPORTS"
    ]


def test_a_long_module_needs_a_reason_or_an_allowance(tmp_path: Path) -> None:
    body = "x = 1\n" * 10
    pkg = _package(
        tmp_path,
        {
            "short.py": '"""Short."""\n',
            "long.py": '"""Long."""\n' + body,
            "reasoned.py": '"""Long.\n\nLong because: one table.\n"""\n' + body,
            "allowed.py": body,
        },
    )
    modules = load(pkg)
    allowed = frozenset({"pkg/allowed.py"})
    too_long = (
        'pkg/long.py has 11 lines (over 5): split it, or say why in its docstring ("Long because: ...")'
    )
    assert size_problems(modules, allowed, limit=5, base=tmp_path) == [too_long]
    stale = allowed | {"pkg/short.py", "pkg/reasoned.py", "pkg/gone.py"}
    assert size_problems(modules, stale, limit=5, base=tmp_path) == [
        "pkg/gone.py does not exist: remove it from KNOWN_LONG",
        too_long,
        "pkg/reasoned.py needs no allowance now: remove it from KNOWN_LONG",
        "pkg/short.py needs no allowance now: remove it from KNOWN_LONG",
    ]


def test_app_has_no_cycle_or_long_module_beyond_the_known_ones() -> None:
    modules = load()
    assert cycle_problems(graph(modules), architecture.KNOWN_CYCLE_IMPORTS) == []
    assert size_problems(modules, architecture.KNOWN_LONG) == []


def test_an_import_from_above_a_layer_is_reported(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        {
            "http/pure.py": "from pkg.http import other\n",
            "http/other.py": "def f():\n    from pkg.errors import NotFound\n",  # deferred counts too
            "storage/index.py": "from pkg import metrics\nfrom pkg.http import pure\n",
            "errors.py": "",
            "metrics.py": "",
        },
    )
    layers = {"pkg.http": frozenset(), "pkg.storage": frozenset({"pkg.metrics"})}
    assert layer_problems(graph(load(pkg)), layers) == [
        "pkg.http.other imports pkg.errors: pkg.http sits below it",
        "pkg.storage.index imports pkg.http.pure: pkg.storage sits below it",
    ]


def test_app_layers_import_only_what_lies_below_them() -> None:
    assert layer_problems(graph(load())) == []
