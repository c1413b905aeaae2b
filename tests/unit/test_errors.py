"""app/errors.py: its docstring is the map of Ferry's errors, so it names every one."""

from __future__ import annotations

import re

import app.errors
from app.errors import FerryError


def _all_errors(cls: type[FerryError] = FerryError) -> list[type[FerryError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _all_errors(child))]


def test_the_module_docstring_lists_every_error_with_its_status() -> None:
    doc = app.errors.__doc__ or ""
    listed = dict(re.findall(r"^[│├└─ ]*(\w+)\s+(\d{3}|base):", doc, re.MULTILINE))
    defined = {cls.__name__: str(cls.status) for cls in _all_errors() if cls.__module__ == "app.errors"}
    assert listed.pop("FerryError") == "base"
    defined.pop("FerryError")
    assert listed == defined
