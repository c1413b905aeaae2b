"""Ferry's own GET of presigned URLs (app/storage/s3_http.py) against a scripted loopback store:
kept-alive connections reused, a connection the store closed replaced, an answer cut short or a
cancelled GET never handed back to the pool, the store's statuses as storage errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from app.storage.errors import Changed, NotServable, Refused, Unreachable
from app.storage.s3_http import Signer, Upstream, raise_for

pytestmark = pytest.mark.anyio

Reply = Callable[[int, bytes], bytes | None]  # (request number, request) → answer; None: hang


def answer(body: bytes, status: str = "206 Partial Content", *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", 'ETag: "abc"', *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Store:
    """A loopback 'store' answering each request as `reply` says; counts its connections."""

    reply: Reply
    close_after: bool = False  # close every connection after its first answer (without saying so)
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # a connection has ended
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    request = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                self.requests.append(request)
                out = self.reply(len(self.requests), request)
                if out is None:
                    await reader.read()  # hang until Ferry closes its end
                    return
                writer.write(out)
                await writer.drain()
                if self.close_after:
                    return
        finally:
            writer.close()
            self.ended.set()


Launch = Callable[..., Awaitable[Store]]


@pytest.fixture
async def store() -> AsyncIterator[Launch]:
    """Starts a `Store` on a free loopback port; all are closed after the test."""
    servers: list[asyncio.Server] = []

    async def launch(reply: Reply, close_after: bool = False) -> Store:
        s = Store(reply, close_after)
        server = await asyncio.start_server(s.serve, "127.0.0.1", 0)
        s.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return s

    yield launch
    for server in servers:
        server.close()


def url(s: Store) -> str:
    return f"http://127.0.0.1:{s.port}/bucket/key?X-Amz-Signature=x"


async def test_a_kept_alive_connection_is_reused(store: Launch) -> None:
    s = await store(lambda n, _: answer(b"x" * n))
    up = Upstream(f"http://127.0.0.1:{s.port}")
    for n in (1, 2, 3):
        got = await up.get(url(s), {"Range": "bytes=0-9", "If-Match": '"abc"'})
        assert (got.status, bytes(got.body), got.header(b"etag")) == (206, b"x" * n, '"abc"')
    assert (up.dialled, s.connections, up.idle()) == (1, 1, 1)
    first = s.requests[0].decode()
    assert first.startswith("GET /bucket/key?X-Amz-Signature=x HTTP/1.1\r\n")
    assert "\r\nRange: bytes=0-9\r\n" in first and '\r\nIf-Match: "abc"\r\n' in first
    up.close()


async def test_a_connection_the_store_closed_is_replaced(store: Launch) -> None:
    s = await store(lambda n, _: answer(b"hello"), close_after=True)
    up = Upstream(f"http://127.0.0.1:{s.port}")
    assert bytes((await up.get(url(s), {})).body) == b"hello"
    await asyncio.wait_for(s.ended.wait(), 30)  # the store has closed the idle connection
    assert bytes((await up.get(url(s), {})).body) == b"hello"  # retried on a new one
    assert (up.dialled, s.connections) == (2, 2)
    up.close()


async def test_connection_close_is_not_kept(store: Launch) -> None:
    s = await store(lambda n, _: answer(b"bye", "200 OK", "Connection: close"))
    up = Upstream(f"http://127.0.0.1:{s.port}")
    await up.get(url(s), {})
    assert up.idle() == 0


async def test_an_answer_cut_short_is_unreachable_and_its_connection_dropped(
    store: Launch,
) -> None:
    s = await store(lambda n, _: answer(b"x" * 100)[:-90], close_after=True)
    up = Upstream(f"http://127.0.0.1:{s.port}")
    with pytest.raises(Unreachable):
        await up.get(url(s), {})
    assert up.idle() == 0


async def test_a_cancelled_get_closes_its_connection(store: Launch) -> None:
    s = await store(lambda n, _: None)
    up = Upstream(f"http://127.0.0.1:{s.port}")
    task = asyncio.ensure_future(up.get(url(s), {}))
    while not s.requests:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(s.ended.wait(), 30)  # the store saw Ferry's end close (else it hangs)
    assert up.idle() == 0


async def test_a_store_that_does_not_answer_is_unreachable() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(Unreachable):
        await Upstream(f"http://127.0.0.1:{port}").get(f"http://127.0.0.1:{port}/b/k", {})


def test_statuses_are_storage_errors() -> None:
    raise_for(200)
    raise_for(206)
    for status, error in (
        (404, NotServable),
        (412, Changed),
        (403, Refused),
        (500, Unreachable),
        (503, Unreachable),
    ):
        with pytest.raises(error):
            raise_for(status)


def test_a_presigned_url_is_reused_for_a_while() -> None:
    signed: list[str] = []

    def sign(key: str) -> str:
        signed.append(key)
        return f"http://s/{key}?n={len(signed)}"

    signer = Signer(sign, reuse=600.0)
    assert signer.url("a") == signer.url("a") == "http://s/a?n=1"
    assert signer.url("b") == "http://s/b?n=2"
    assert Signer(sign, reuse=0.0).url("a") != Signer(sign, reuse=0.0).url("a")
