"""CORS in-process: no CORS header unless FERRY_CORS_ORIGINS names the origin, for downloads,
listings, the API and operations alike; preflights for the configured origin only, never with
credentials. tests/security/test_headers.py checks the same over a raw socket, head line by line."""

from __future__ import annotations

import httpx
import pytest

from tests.support.inprocess import AppPool, module_app_pool
from tests.support.servers import Server

ORIGIN = "https://a.example"
CORS = ("--cors-origins", ORIGIN)
TARGETS = ["/files/hello.txt", "/files/", "/api/files/", "/api/search?q=hello", "/healthz"]
OTHER_ORIGINS = [
    "https://b.example",
    "https://a.example.evil.example",
    "https://evil.example/https://a.example",
    "http://a.example",
    "https://a.example:8443",
    "null",
]

pool = module_app_pool("cors")


@pytest.fixture
def http(pool: AppPool) -> httpx.Client:
    return pool.client


def cors_fields(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def preflight(
    http: httpx.Client, server: Server, origin: str, target: str = "/files/hello.txt"
) -> httpx.Response:
    headers = {
        "origin": origin,
        "access-control-request-method": "GET",
        "access-control-request-headers": "range, if-range",
    }
    return http.options(server.url + target, headers=headers)


@pytest.mark.parametrize("target", TARGETS)
def test_no_cors_headers_by_default(pool: AppPool, http: httpx.Client, target: str) -> None:
    server = pool.get()
    for origin in (ORIGIN, "null", "http://127.0.0.1"):
        answer = http.get(server.url + target, headers={"origin": origin, "range": "bytes=0-1"})
        assert answer.status_code in (200, 206), answer.text[:300]
        assert cors_fields(answer) == {}, answer.headers
    refused = preflight(http, server, ORIGIN, target)
    assert refused.status_code < 500
    assert cors_fields(refused) == {}, refused.headers


@pytest.mark.parametrize("target", TARGETS)
def test_the_configured_origin_gets_cors_headers_everywhere(
    pool: AppPool, http: httpx.Client, target: str
) -> None:
    server = pool.get(*CORS)
    answer = http.get(server.url + target, headers={"origin": ORIGIN})
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in answer.headers
    assert "origin" in answer.headers["vary"].lower()


def test_cors_for_the_configured_origin_only(pool: AppPool, http: httpx.Client) -> None:
    server = pool.get(*CORS)
    allowed = http.get(server.url + "/files/hello.txt", headers={"origin": ORIGIN, "range": "bytes=0-4"})
    assert allowed.status_code == 206 and allowed.content == b"hello"
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in allowed.headers["access-control-expose-headers"].split(",")}
    assert {"content-range", "content-disposition", "etag"} <= exposed
    assert "access-control-allow-credentials" not in allowed.headers

    answered = preflight(http, server, ORIGIN)
    assert 200 <= answered.status_code < 300, answered.text[:300]
    assert answered.headers["access-control-allow-origin"] == ORIGIN
    methods = [m.strip() for m in answered.headers["access-control-allow-methods"].split(",")]
    assert "GET" in methods
    allowed_headers = {h.strip().lower() for h in answered.headers["access-control-allow-headers"].split(",")}
    assert {"range", "if-range"} <= allowed_headers
    assert "access-control-allow-credentials" not in answered.headers

    for origin in OTHER_ORIGINS:
        other = http.get(server.url + "/files/hello.txt", headers={"origin": origin, "range": "bytes=0-4"})
        assert other.status_code == 206
        assert cors_fields(other) == {}, (origin, other.headers)
        refused = preflight(http, server, origin)
        assert refused.status_code < 500
        assert cors_fields(refused) == {}, (origin, refused.headers)
