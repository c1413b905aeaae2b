"""The transfer layer's contract with uvicorn, and its choices, without a server."""

from __future__ import annotations

import inspect
import os
import tomllib
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.transfer.page_cache import pages_cached, read_cached
from app.transfer.zero_copy import EXTENSION, can_zero_copy

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _uvicorn_pin() -> str:
    deps: list[str] = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("uvicorn")]
    return pin


def test_installed_uvicorn_is_inside_the_pinned_range() -> None:
    pin = _uvicorn_pin()  # e.g. "uvicorn>=0.54,<0.55"
    low = pin.split(">=")[1].split(",")[0]
    high = pin.split("<")[1]
    installed = tuple(int(x) for x in version("uvicorn").split(".")[:2])
    assert tuple(int(x) for x in low.split(".")[:2]) <= installed < tuple(int(x) for x in high.split(".")[:2])


def test_uvicorn_internals_the_protocol_subclass_relies_on_exist() -> None:
    # FerryProtocol overrides these hooks ...
    for hook in ("connection_made", "on_message_begin", "_start_asgi_task", "send_400_response"):
        assert callable(getattr(HttpToolsProtocol, hook))
    assert list(inspect.signature(HttpToolsProtocol._start_asgi_task).parameters) == ["self", "cycle", "app"]
    # ... and ZeroCopySender keeps this request-cycle state exact.
    init = inspect.getsource(RequestResponseCycle.__init__)
    for attribute in ("scope", "disconnected", "response_started", "response_complete", "chunked_encoding"):
        assert f"self.{attribute}" in init
    assert "self.expected_content_length" in init and "self.flow" in init
    assert "self.body" in init and "self.message_event" in init  # a PUT's body handed over
    assert "bytes(self.body)" in inspect.getsource(RequestResponseCycle.receive)  # bytes: no copy
    # A held head (Cycle.start_held): the start writes only through self.transport.write.
    assert "self.transport = transport" in init
    start = inspect.getsource(RequestResponseCycle.send).split("elif not self.response_complete")[0]
    others = start.replace("self.transport.write(", "")
    assert "self.transport.write(" in start and "self.transport." not in others
    # ... and HttpToolsAdapter reads this protocol state (app/transfer/uvicorn_adapter.py).
    protocol = inspect.getsource(HttpToolsProtocol)
    for attribute in ("config", "cycle", "flow", "url", "headers", "parser", "scope", "loop", "logger"):
        assert f"self.{attribute} =" in protocol or f"self.{attribute}: " in protocol, attribute
    assert "STATUS_LINE" in inspect.getsource(inspect.getmodule(HttpToolsProtocol))  # type: ignore[arg-type]


def test_can_zero_copy_needs_the_extension_and_a_mode_other_than_off() -> None:
    with_extension: Scope = {"extensions": {EXTENSION: {}}}
    assert can_zero_copy(with_extension, "auto")
    assert can_zero_copy(with_extension, "on")
    assert not can_zero_copy(with_extension, "off")
    assert not can_zero_copy({}, "auto")  # e.g. TLS, or a server without the extension


def test_cache_probes_tell_cold_pages_from_cached_ones(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(4 * 1024 * 1024)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)

        # A probe that misses may start the kernel's readahead, which a fast disk can finish before
        # the next probe (and pages under I/O are not dropped): each probe gets freshly dropped
        # pages, and a cold page must be told as such at least once in a few tries (a probe that
        # always read, waiting for the disk, would never answer None).
        def cold(probe: Callable[[], bool]) -> bool:
            for _ in range(20):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                if probe():
                    return True
            return False

        assert cold(lambda: not pages_cached(fd, 0, len(data)))
        assert cold(lambda: read_cached(fd, 4096, 0) is None)
        assert os.pread(fd, len(data), 0) == data  # now cached
        assert pages_cached(fd, 0, len(data))
        assert read_cached(fd, 4096, 8192) == data[8192 : 8192 + 4096]
    finally:
        os.close(fd)
