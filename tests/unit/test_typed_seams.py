"""The seams between Ferry's layers are typed: services in one dataclass, never in `.state`."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.main import create_app
from app.services import Services
from tests.architecture import load, untyped_state_problems
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
