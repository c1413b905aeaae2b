"""What a connection on FerryProtocol tells the rest of Ferry: the `Connection` in each request's
scope (what became of the connection while the app answered, for the access log), and the whole
answers the protocol sends of its own before closing (`refusal`)."""

from __future__ import annotations

from typing import Any

from app.transfer.uvicorn_adapter import Cycle, HttpToolsAdapter

CONNECTION = "ferry.connection"


class Connection:
    """What became of one request's connection while the app handled it (read by app/access.py)."""

    __slots__ = ("_cycle", "answered")

    def __init__(self, cycle: Cycle) -> None:
        self._cycle = cycle
        # A status the protocol answered itself while the app had not (400: a malformed body),
        # or 408 for an upload body it closed the connection on because it stalled.
        self.answered = 0

    @property
    def gone(self) -> bool:
        """Whether the connection closed before the response was complete."""
        return self._cycle.disconnected


def connection_of(scope: Any) -> Connection | None:
    """The request's `Connection`, when it runs on FerryProtocol."""
    found = scope.get("extensions", {}).get(CONNECTION, {}).get("state")
    return found if isinstance(found, Connection) else None


def refusal(status: int, message: str) -> bytes:
    """A whole answer of the protocol's own, before the connection closes."""
    body = message.encode()
    return b"".join(
        [
            HttpToolsAdapter.status_line(status),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )
