"""The engine the S3 backend is tested against: `weed mini` starts on loopback, stores, answers ranges.

Ranges matter most: an engine that answers a ranged GET with the whole object (as `rclone serve s3`
does) would make every range test of Ferry's S3 backend meaningless.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import obstore
import pytest

from tests.support.seaweed import Seaweed, started

pytestmark = pytest.mark.engine


def test_weed_mini_puts_and_gets_an_object_and_a_range(seaweed: Seaweed) -> None:
    store = seaweed.store()
    body = os.urandom(3 * 1024**2 + 17)
    obstore.put(store, "smoke/object.bin", body)

    assert bytes(obstore.get(store, "smoke/object.bin").bytes()) == body
    assert (
        bytes(obstore.get_range(store, "smoke/object.bin", start=1024**2, length=65536))
        == (body[1024**2 : 1024**2 + 65536])
    )
    head = obstore.head(store, "smoke/object.bin")
    assert head["size"] == len(body)
    assert head["e_tag"]
    obstore.delete(store, "smoke/object.bin")
    with pytest.raises(FileNotFoundError):
        obstore.head(store, "smoke/object.bin")


def test_weed_mini_listens_on_loopback_only_with_telemetry_off(seaweed: Seaweed) -> None:
    assert seaweed.process.poll() is None
    args = Path(f"/proc/{seaweed.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-master.telemetry=false" in args
    assert b"-ip.bind=127.0.0.1" in args
    # Every port it was given answers on loopback; the gRPC ones are among them, not port+10000.
    for name, port in seaweed.ports.items():
        if name.startswith("admin"):
            continue  # the admin server comes up last and is not needed by S3
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass


def test_weed_mini_is_stopped_by_pid_when_its_user_ends(tmp_path: Path) -> None:
    engines = started(tmp_path)
    engine = next(engines)
    pid = engine.pid
    engines.close()  # what the fixture's teardown does, also when a test fails
    assert engine.process.returncode is not None
    assert not Path(f"/proc/{pid}").exists()
