"""The seams between Ferry's layers are typed: services in one dataclass, never in `.state`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.main import create_app
from app.services import Services
from tests.architecture import load, seam_problems, untyped_state_problems
from tests.conftest import make_settings


def test_untyped_state_is_reported(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").touch()
    (pkg / "route.py").write_text("def f(request):\n    return request.app.state.indx_typo\n")
    (pkg / "fine.py").write_text("def g(cycle):\n    return {'state': cycle}['state']\n")
    problems = untyped_state_problems(load(pkg), base=tmp_path)
    assert problems == ["pkg/route.py:2 uses the untyped `.state`: reach the typed Services instead"]


def test_app_keeps_no_services_in_state() -> None:
    assert untyped_state_problems(load()) == []


def test_the_app_holds_its_services_typed(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    settings = make_settings(tmp_path / "root", index_path=tmp_path / "index.sqlite3", watch=False)
    app = create_app(settings)
    assert isinstance(app.services, Services)
    assert app.services.settings is settings
    assert app.services.index.policy is app.services.policy
    with pytest.raises(AttributeError):
        app.services.indx_typo  # type: ignore[attr-defined]  # noqa: B018


def test_uvicorn_internals_and_the_bootstrap_stay_out_of_the_transfer_layer(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "transfer").mkdir(parents=True)
    for name in ("__init__.py", "main.py", "transfer/__init__.py", "transfer/uvicorn_adapter.py"):
        (app / name).write_text("from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol\n")
    (app / "transfer" / "protocol.py").write_text("from uvicorn._types import ASGI3Application\n")
    (app / "transfer" / "server.py").write_text(
        "import uvicorn.config\n\ndef f():\n    from app.main import x\n"
    )
    assert seam_problems(load(app)) == [
        "app imports uvicorn.protocols.http.httptools_impl: only app.transfer.uvicorn_adapter may",
        "app.main imports uvicorn.protocols.http.httptools_impl: only app.transfer.uvicorn_adapter may",
        "app.transfer imports uvicorn.protocols.http.httptools_impl: only app.transfer.uvicorn_adapter may",
        "app.transfer.protocol imports uvicorn._types: only app.transfer.uvicorn_adapter may",
        "app.transfer.server imports app.main: the transfer layer sits below it",
    ]
    assert seam_problems(load()) == []


def test_plain_asgi_answers_are_not_half_made_responses() -> None:
    """Ferry's own ASGI answers initialise fully and define __call__; none subclasses Starlette's
    Response without running its __init__ (whose `.headers` would then raise)."""
    subclasses = []
    for module in load().values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(base) for base in node.bases]
                if any(base.endswith("Response") for base in bases):
                    subclasses.append(f"{module.name}.{node.name}")
    assert subclasses == []
