"""The status the access log and /metrics record (app/access.py): the one the client got."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from starlette.types import Message

from app import metrics
from app.access import _ESCAPES, CLIENT_CLOSED, Lines, Observed, _clean, answered_now
from app.transfer.connection import CONNECTION, Connection


class Records(logging.Handler):
    """Keeps what is logged, for a test to read."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Exchange:
    """One request through `Observed`, with the connection state a FerryProtocol would give it."""

    def __init__(self, method: str = "GET", path: str = "/files/f.bin") -> None:
        self.cycle = SimpleNamespace(disconnected=False)
        # A stand-in for uvicorn's RequestResponseCycle: Connection reads only `disconnected`.
        self.connection = Connection(self.cycle)  # type: ignore[arg-type]
        self.incoming: list[Message] = []
        self.delivered: list[Message] = []
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "headers": [],
            "client": ("127.0.0.1", 50000),
            "extensions": {CONNECTION: {"state": self.connection}},
        }
        self.observed = Observed(scope, self._send, self._receive)

    async def _receive(self) -> Message:
        return self.incoming.pop(0)

    async def _send(self, message: Message) -> None:
        if not self.cycle.disconnected:
            self.delivered.append(message)

    def run(self, *steps: Message | str) -> dict[str, Any]:
        """Play the steps ('receive', 'gone' or a message to send); the logged line."""

        async def play() -> None:
            for step in steps:
                if step == "receive":
                    await self.observed.receive()
                elif step == "gone":
                    self.cycle.disconnected = True
                elif not isinstance(step, str):
                    await self.observed(step)

        asyncio.run(play())
        return self.observed_line()

    def observed_line(self) -> dict[str, Any]:
        line: dict[str, Any] = json.loads(self.logged("json"))
        return line

    def logged(self, log_format: str) -> str:
        """The line `finish` logs in that format."""
        handler = Records()
        logger = logging.getLogger("ferry.access")
        logger.addHandler(handler)
        level = logger.level
        logger.setLevel(logging.INFO)  # setLevel, not .level: it also clears the logger's level cache
        try:
            self.observed.finish(log_format)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        (record,) = handler.records
        return record.getMessage()


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]}
PART = {"type": "http.response.body", "body": b"01234", "more_body": True}
END = {"type": "http.response.body", "body": b"56789", "more_body": False}


def requests_total(method: str, status: int) -> float:
    labels = {"method": method, "status": str(status)}
    return REGISTRY.get_sample_value("ferry_http_requests_total", labels) or 0.0


def test_a_complete_response_is_recorded_as_sent() -> None:
    line = Exchange().run(START, PART, END)
    assert (line["status"], line["bytes"], line["aborted"]) == (200, 10, False)


def test_a_body_cut_short_keeps_its_status_and_is_marked_aborted() -> None:
    exchange = Exchange()
    line = exchange.run(START, PART, "gone", END)
    assert (line["status"], line["bytes"], line["aborted"]) == (200, 5, True)  # the last 5 never left


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(("gone", START, PART, END), id="answer-prepared-after-the-client-left"),
        pytest.param(("gone",), id="no-answer-after-the-client-left"),
    ],
)
def test_a_client_gone_before_any_answer_is_499(steps: tuple[Message | str, ...]) -> None:
    before = requests_total("GET", CLIENT_CLOSED)
    line = Exchange().run(*steps)
    assert (line["status"], line["bytes"], line["aborted"]) == (CLIENT_CLOSED, 0, True)
    assert requests_total("GET", CLIENT_CLOSED) == before + 1


def test_a_disconnect_seen_while_reading_the_body_is_499_without_the_protocol() -> None:
    exchange = Exchange("PUT", "/files/up.bin")
    exchange.observed.connection = None  # another ASGI server: only `receive` tells
    exchange.incoming = [
        {"type": "http.request", "body": b"x", "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert exchange.run("receive", "receive")["status"] == CLIENT_CLOSED


def test_an_answer_of_the_protocol_is_recorded_as_that_answer() -> None:
    exchange = Exchange("PUT", "/files/up.bin")
    exchange.connection.answered = 400  # a malformed body: the parser answered and closed
    before = requests_total("PUT", 400)
    assert exchange.run("gone")["status"] == 400
    assert requests_total("PUT", 400) == before + 1


def test_no_answer_from_the_app_to_a_present_client_is_500() -> None:
    assert Exchange().run()["status"] == 500


def test_the_request_body_bytes_read_are_recorded_as_received() -> None:
    exchange = Exchange("PATCH", "/api/uploads/u1")
    exchange.incoming = [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.request", "body": b"defgh", "more_body": False},
    ]
    start = {"type": "http.response.start", "status": 204, "headers": []}
    line = exchange.run("receive", "receive", start, {"type": "http.response.body", "body": b""})
    assert (line["status"], line["bytes"], line["received"]) == (204, 0, 8)


def test_the_text_line_ends_with_the_bytes_received() -> None:
    exchange = Exchange("PUT", "/files/up.bin")
    exchange.incoming = [{"type": "http.request", "body": b"x" * 5, "more_body": False}]
    start = {"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"2")]}
    exchange.run("receive", start, {"type": "http.response.body", "body": b"ok"})
    line = exchange.logged("text")
    assert line.startswith('127.0.0.1:50000 "PUT /files/up.bin" 201 2 range="-" ')
    assert line.endswith(" aborted=no received=5")


def test_a_download_receives_nothing() -> None:
    assert Exchange().run(START, PART, END)["received"] == 0


@settings(max_examples=500)
@given(text=st.text(max_size=600))
def test_a_field_is_escaped_the_same_whichever_way_it_is_cleaned(text: str) -> None:
    """The shortcut for text with nothing to escape gives what escaping every character gives."""
    cleaned = _clean(text)
    assert cleaned == text[:512].translate(_ESCAPES)
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in cleaned)


def test_a_turn_s_protocol_answers_are_counted_and_logged_at_its_end_in_order() -> None:
    """`answered_now` with `Lines` (ferry serve): noted as the answer is written, settled with the
    turn's other lines at its end — the line in its place among them, the counters moved then."""
    stream = io.StringIO()
    lines = Lines(stream)
    scope = {
        "method": "GET",
        "path": "/files/turn.bin",
        "raw_path": b"/files/turn.bin",
        "headers": [(b"range", b"bytes=0-9"), (b"user-agent", b"aria2/1.37")],
        "client": ("127.0.0.1", 50001),
    }
    fields = [(b"content-range", b"bytes 0-9/100"), (b"content-length", b"10")]
    requests = (
        REGISTRY.get_sample_value("ferry_http_requests_total", {"method": "GET", "status": "206"}) or 0.0
    )

    async def turn() -> tuple[str, float]:
        lines.write("before")
        answered_now(scope, 206, fields, 10, time.perf_counter(), "text", lines)
        lines.write("after")
        written = stream.getvalue()  # (nothing yet: the turn has not ended)
        counted = (
            REGISTRY.get_sample_value("ferry_http_requests_total", {"method": "GET", "status": "206"}) or 0.0
        )
        await asyncio.sleep(0)  # the turn ends
        metrics.TALLY.flush()
        return written, counted

    written, counted = asyncio.run(turn())
    assert written == "" and counted == requests
    before, line, after = stream.getvalue().splitlines()
    assert (before, after) == ("before", "after")
    assert line.startswith('127.0.0.1:50001 "GET /files/turn.bin" 206 10 range="bytes=0-9" ')
    assert line.endswith(' ua="aria2/1.37" aborted=no received=0')
    assert (
        REGISTRY.get_sample_value("ferry_http_requests_total", {"method": "GET", "status": "206"})
        == requests + 1
    )
