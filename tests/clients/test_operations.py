"""Operations against a real server: /metrics moves by exactly the right amounts (one worker and
two), the JSON access log, and a graceful shutdown that lets a download finish."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PATIENCE, FerryServer, ServerFactory, wait_for
from tests.support.servers import BOTH_TRANSFER_PATHS

pytestmark = pytest.mark.clients

TOKEN = "metrics-token"


def scrape(server: FerryServer) -> dict[str, float]:
    """Every sample of /metrics as {'name{labels}': value}."""
    text = httpx.get(f"{server.url}/metrics").text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def _tree(tmp_path: Path) -> tuple[Path, bytes]:
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(256 * 1024)
    (root / "f.bin").write_bytes(data)
    with (root / "big.bin").open("wb") as f:
        f.truncate(512 * 1024**2)
    return root, data


def _abort_download(server: FerryServer, path: str) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    sock.recv(65536)
    sock.close()


@BOTH_TRANSFER_PATHS
@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_count_each_kind_of_response_exactly(
    ferry: ServerFactory, tmp_path: Path, workers: str, zero_copy: str
) -> None:
    root, data = _tree(tmp_path)
    server = ferry(root, "--workers", workers, "--write-token", TOKEN)
    url = f"{server.url}/files/f.bin"
    with httpx.Client() as client:
        etag = client.head(url).headers["etag"]
        before = scrape(server)
        assert client.get(url).content == data  # 200, 256 KiB
        assert client.get(url, headers={"Range": "bytes=0-99"}).status_code == 206
        assert client.get(url, headers={"Range": "bytes=0-9,100-109"}).status_code == 206
        assert client.get(url, headers={"Range": "bytes=10-19", "If-Range": etag}).status_code == 206
        assert client.get(url, headers={"Range": "bytes=10-19", "If-Range": '"stale"'}).status_code == 200
        assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
        assert client.get(url, headers={"If-Match": '"nope"'}).status_code == 412
        assert client.get(url, headers={"Range": "bytes=999999-"}).status_code == 416
        put = client.put(
            f"{server.url}/files/up.bin", content=b"x" * 1000, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert put.status_code == 201
    _abort_download(server, "/files/big.bin")
    scrapes = 1  # `before` itself is counted once it has been answered
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        after = scrape(server)
        if delta(before, after, "ferry_client_aborts_total") >= 1:
            break
        scrapes += 1
        time.sleep(0.1)

    get = 'ferry_http_requests_total{method="GET",status="%s"}'
    # the whole file, the If-Range miss, the aborted download, and the scrapes of /metrics
    assert delta(before, after, get % "200") == 3 + scrapes
    assert delta(before, after, get % "206") == 3
    assert delta(before, after, get % "304") == 1
    assert delta(before, after, get % "412") == 1
    assert delta(before, after, get % "416") == 1
    assert delta(before, after, 'ferry_http_requests_total{method="PUT",status="201"}') == 1
    assert delta(before, after, 'ferry_range_responses_total{kind="single"}') == 2
    assert delta(before, after, 'ferry_range_responses_total{kind="multipart"}') == 1
    assert delta(before, after, 'ferry_if_range_total{result="hit"}') == 1
    assert delta(before, after, 'ferry_if_range_total{result="miss"}') == 1
    # 200s: the whole file twice; 206s: 100 + 10 bytes of file plus the multipart part bytes.
    assert delta(before, after, 'ferry_bytes_sent_total{status="200"}') >= 2 * len(data)
    assert delta(before, after, 'ferry_bytes_sent_total{status="206"}') > 120
    assert delta(before, after, "ferry_client_aborts_total") == 1
    assert delta(before, after, "ferry_undelivered_bytes_total") > 0
    assert delta(before, after, 'ferry_uploads_total{result="created"}') == 1
    assert delta(before, after, "ferry_upload_bytes_total") == 1000
    assert after["ferry_downloads_in_flight"] == 0
    assert delta(before, after, "ferry_time_to_first_byte_seconds_count") == 6  # 200s and 206s, not the abort
    assert after["ferry_index_entries"] >= 2


@BOTH_TRANSFER_PATHS
def test_json_access_log_records_each_request_and_aborts(ferry: ServerFactory, tmp_path: Path) -> None:
    root, _ = _tree(tmp_path)
    server = ferry(root, "--log-format", "json")
    httpx.get(f"{server.url}/files/f.bin", headers={"Range": "bytes=0-9", "User-Agent": "probe/1.0"})
    _abort_download(server, "/files/big.bin")
    httpx.get(f"{server.url}/files/a%0d%0ab")  # control characters never reach a line raw
    deadline = time.monotonic() + PATIENCE
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline and len(lines) < 4:
        lines = [
            json.loads(line) for line in server.access_log.read_text().splitlines() if line.startswith("{")
        ]
        time.sleep(0.1)
    by_path = {str(line["path"]): line for line in lines}
    ranged = by_path["/files/f.bin"]
    assert ranged["status"] == 206 and ranged["bytes"] == 10 and ranged["range"] == "bytes=0-9"
    assert ranged["user_agent"] == "probe/1.0" and ranged["aborted"] is False
    assert isinstance(ranged["duration_ms"], float) and str(ranged["client"]).startswith("127.0.0.1:")
    aborted = by_path["/files/big.bin"]
    assert aborted["status"] == 200 and aborted["aborted"] is True
    assert int(str(aborted["bytes"])) < 512 * 1024**2
    assert "\n" not in server.access_log.read_text().replace("}\n", "}")


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


@BOTH_TRANSFER_PATHS
def test_sigterm_lets_a_download_finish_and_refuses_new_connections(
    ferry: ServerFactory, tmp_path: Path, zero_copy: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    block = os.urandom(1024 * 1024)
    expected = hashlib.sha256()
    with (root / "big.bin").open("wb") as f:
        for i in range(1024):
            chunk = block[i:] + block[:i]
            f.write(chunk)
            expected.update(chunk)
    server = ferry(root, "--shutdown-timeout", "60")
    received = hashlib.sha256()
    total = 0
    refused = False
    started = time.monotonic()
    with httpx.stream("GET", f"{server.url}/files/big.bin", timeout=60) as response:
        for piece in response.iter_raw(1024 * 1024):
            received.update(piece)
            total += len(piece)
            if total >= 64 * 1024**2 and server.process.poll() is None and not refused:
                server.process.send_signal(signal.SIGTERM)
                # The download stays in flight meanwhile: nothing is read from it while waiting.
                assert wait_for(lambda: _refuses_connections(server.port)), "still accepting after SIGTERM"
                refused = True
            # A throttled client: about 200 MiB/s, so the download outlives the signal by seconds.
            time.sleep(max(0.0, total / (200 * 1024**2) - (time.monotonic() - started)))
    assert refused
    assert total == 1024**3 and received.hexdigest() == expected.hexdigest()
    assert server.process.wait(timeout=30) == 0


def test_sigterm_during_an_upload_leaves_nothing_behind(ferry: ServerFactory, tmp_path: Path) -> None:
    """An upload still streaming when the shutdown timeout runs out is cut: its temporary file is
    removed, the target untouched, and the process still exits 0."""
    root = tmp_path / "root"
    root.mkdir()
    server = ferry(root, "--write-token", TOKEN, "--shutdown-timeout", "1", "--no-fsync")
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = (
        f"PUT /files/cut.bin HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {64 * 1024**2}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"x" * (4 * 1024**2))
    deadline = time.monotonic() + PATIENCE
    while not list(root.glob(".ferry-upload-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(root.glob(".ferry-upload-*")), "the upload never started"
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    sock.close()
    assert not list(root.iterdir()), list(root.iterdir())
