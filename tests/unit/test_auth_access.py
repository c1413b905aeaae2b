"""One authentication result per request (app/auth.py): a token, a signed link, or anonymous."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from app.auth import ANONYMOUS, Gate, LinkAccess, Token, link_of
from app.errors import Forbidden, Gone, MethodNotAllowed, Unauthorized
from app.http import signing
from app.request import FileRequest
from tests.conftest import make_settings

KEY = "auth-access-signing-key-012345678"


def gate(tmp_path: Path, **overrides: object) -> Gate:
    return Gate(make_settings(tmp_path, **overrides))


def request(path: str, *, method: str = "GET", query: str = "", token: str | None = None) -> FileRequest:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": "/files/" + path,
        "query_string": query.encode(),
        "headers": headers,
        "client": ("192.0.2.1", 1),
    }
    return FileRequest.parse(scope, None)


def link(path: str, *, prefix: bool = False, ttl: int = 600, now: int | None = None) -> str:
    made = signing.new_link(path, ttl=ttl, now=int(time.time()) if now is None else now, prefix=prefix)
    return "&".join(f"{k}={v}" for k, v in signing.link_params(KEY.encode(), made))


def test_tokens(tmp_path: Path) -> None:
    g = gate(tmp_path, download_auth="token", read_tokens="reader", write_token="writer")
    assert g.authenticate(request("a", token="reader")) == Token(write=False)
    assert g.authenticate(request("a", token="writer")) == Token(write=True)
    assert g.authenticate(request("a", token="wrong")) is ANONYMOUS
    assert g.authenticate(request("a")) is ANONYMOUS
    with pytest.raises(Unauthorized):
        g.read(ANONYMOUS)
    g.read(Token(write=False))
    g.api(Token(write=False))
    with pytest.raises(Unauthorized):
        g.write(Token(write=False))  # a read token never writes
    g.write(Token(write=True))
    with pytest.raises(Unauthorized):
        g.mint(Token(write=False))


def test_signed_links(tmp_path: Path) -> None:
    g = gate(tmp_path, download_auth="signed", signing_keys=KEY)
    access = g.authenticate(request("docs/a.txt", query=link("docs/a.txt")))
    assert isinstance(access, LinkAccess) and access.prefix is None and link_of(access) is access
    folder = g.authenticate(request("docs/sub/b.txt", query=link("docs/", prefix=True)))
    assert isinstance(folder, LinkAccess) and folder.prefix == "/docs/"
    g.read(access)
    with pytest.raises(Unauthorized):
        g.api(access)  # a link never reads the JSON API
    with pytest.raises(Forbidden):
        g.authenticate(request("docs/b.txt", query=link("docs/a.txt")))
    with pytest.raises(Gone):
        g.authenticate(request("docs/a.txt", query=link("docs/a.txt", ttl=1, now=1000)))
    assert g.authenticate(request("docs/a.txt")) is ANONYMOUS
    with pytest.raises(Unauthorized, match="signed link"):
        g.read(ANONYMOUS)


def test_writes_never_look_at_links(tmp_path: Path) -> None:
    g = gate(tmp_path, download_auth="signed", signing_keys=KEY, write_token="writer")
    assert g.authenticate(request("a.txt", method="PUT", query="sig=forged")) is ANONYMOUS
    assert g.authenticate(request("a.txt", method="PUT", token="writer")) == Token(write=True)


def test_public_downloads_ignore_links_and_writes_may_be_off(tmp_path: Path) -> None:
    g = gate(tmp_path, signing_keys=KEY)
    assert g.authenticate(request("a.txt", query="sig=forged")) is ANONYMOUS
    g.read(ANONYMOUS)
    g.api(ANONYMOUS)
    with pytest.raises(MethodNotAllowed):
        g.write(Token(write=True))
