"""What every security test checks: raw HTTP exchanges, and that the canary outside ROOT is never
read (its bytes in no response) or written (the tree outside ROOT exactly as it was)."""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import CANARY, FerryServer

# The canary and a distinctive piece of it: a partial read must not slip through either.
CANARY_PIECES = (CANARY, CANARY.strip()[:12], b"outside-root-never-served")
TOKEN = "security-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def assert_no_canary(data: bytes, what: object = "") -> None:
    for piece in CANARY_PIECES:
        assert piece not in data, f"{what!r}: the canary outside ROOT was served"


# --------------------------------------------------------------------------- outside ROOT


def _fingerprint(path: Path) -> tuple[str, str]:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return ("dir", "")
    if stat.S_ISREG(st.st_mode):
        return ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return ("other", oct(st.st_mode))


@dataclass
class Outside:
    """Everything under `base` except ROOT and the server's working directories (logs, index),
    fingerprinted: after the test it must be exactly the same, with no new entries."""

    base: Path
    exclude: tuple[Path, ...]
    before: dict[str, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def watch(cls, base: Path, *exclude: Path) -> Outside:
        outside = cls(base, tuple(exclude))
        outside.before = outside.snapshot()
        assert any(kind == "file" for kind, _ in outside.before.values()), "no canary outside ROOT"
        return outside

    def snapshot(self) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        for dirpath, dirnames, filenames in os.walk(self.base):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if here / d not in self.exclude]
            for name in [*dirnames, *filenames]:
                path = here / name
                if path in self.exclude:
                    continue
                found[str(path.relative_to(self.base))] = _fingerprint(path)
        return found

    def assert_untouched(self) -> None:
        after = self.snapshot()
        added = sorted(set(after) - set(self.before))
        removed = sorted(set(self.before) - set(after))
        changed = sorted(k for k in set(after) & set(self.before) if after[k] != self.before[k])
        assert not (added or removed or changed), (
            f"outside ROOT: added {added}, removed {removed}, changed {changed}"
        )


def canary_files(base: Path) -> list[Path]:
    return [p for p in base.rglob("*") if p.is_file() and not p.is_symlink() and p.read_bytes() == CANARY]


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class Exchange:
    """What came back on one connection: the bytes, whether the server closed it, and when."""

    raw: bytes
    closed: bool
    reset: bool
    seconds: float

    @property
    def status(self) -> int:
        line = self.raw.split(b"\r\n", 1)[0].decode("latin-1")
        assert line.startswith("HTTP/1.1 "), f"no status line in {self.raw[:200]!r}"
        return int(line.split(" ")[1])

    @property
    def head(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[0]

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]

    def header_lines(self) -> list[tuple[str, str]]:
        return parse_head(self.head)[1]

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.header_lines() if n == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The status line and (lower-case name, value) pairs; every line must be a well-formed field."""
    text = head.decode("latin-1")
    status_line, *lines = text.split("\r\n")
    fields = []
    for line in lines:
        name, colon, value = line.partition(":")
        assert colon and name and name == name.strip(), f"malformed header line {line!r}"
        assert all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name), repr(line)
        fields.append((name.lower(), value.strip(" \t")))
    return status_line, fields


def exchange(
    port: int,
    data: bytes,
    *,
    timeout: float = 10.0,
    until_close: bool = True,
    source: str | None = None,
) -> Exchange:
    """Send `data` as it is on a new connection; read until the server closes it (or `timeout`).

    With until_close=False, stop as soon as one complete response (by Content-Length) has arrived.
    """
    start = time.monotonic()
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
    )
    chunks: list[bytes] = []
    closed = reset = False
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking everything: read what it said
        deadline = start + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                closed = reset = True
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
            if not until_close and complete_response(b"".join(chunks)):
                break
    finally:
        sock.close()
    return Exchange(b"".join(chunks), closed, reset, time.monotonic() - start)


def complete_response(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for name, value in parse_head(head)[1]:
        if name == "content-length":
            return len(body) >= int(value)
    return False


def get(port: int, target: str, *headers: str, method: str = "GET", host: str = "x") -> Exchange:
    """One request (target and headers sent byte for byte), Connection: close."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers, "Connection: close", "", ""]
    return exchange(port, "\r\n".join(lines).encode("latin-1", errors="surrogateescape"))


def assert_healthy(server: FerryServer) -> None:
    """The server is still there and answers a plain request at once."""
    assert server.process.poll() is None, f"ferry serve exited: {server.log.read_text()[-2000:]}"
    answer = get(server.port, "/healthz")
    assert answer.status == 200, answer.raw[:300]
    assert json.loads(answer.body) == {"status": "ok"}
