"""The S3 storage backend (app/storage/s3.py) against a real engine (`weed mini`, tests/support/seaweed.py):
what only it has (credentials, an engine that does not answer, the interpreter's exit, forks).
What every storage must do (ranges, conditional writes, digests, names, listings, and that no
failed upload leaves a multipart upload behind in the engine) is tests/clients/test_storage_contract.py.

Each test gets a storage on a prefix of its own in the session's bucket, and closes it (the
store's connections must be gone before the interpreter finalises: see s3.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.storage.errors import Unreachable
from app.storage.locations import S3Location
from app.storage.s3 import S3Config, S3Storage
from tests.support.seaweed import Seaweed
from tests.support.storage import body, config, credentials

pytestmark = [pytest.mark.engine, pytest.mark.anyio]

KiB, MiB = 1024, 1024**2


@pytest.fixture
async def storage(seaweed: Seaweed, request: pytest.FixtureRequest) -> AsyncIterator[S3Storage]:
    prefix = f"t-{request.node.name[:40]}-{os.urandom(4).hex()}/".replace("[", "-").replace("]", "")
    backend = S3Storage(
        config(seaweed, prefix, chunk_size=256 * KiB, part_size=5 * MiB), credentials(seaweed)
    )
    yield backend
    await backend.aclose()


async def test_wrong_credentials_and_a_stopped_engine_are_unreachable(seaweed: Seaweed) -> None:
    wrong = S3Storage(config(seaweed, "x/"), credentials(seaweed, secret="not-the-secret"))
    nobody = S3Storage(
        S3Config(
            S3Location("ferry", ""),
            endpoint="http://127.0.0.1:9",
            allow_http=True,
            timeout="5s",
            retry_seconds=2,
        ),
        credentials(seaweed),
    )
    try:
        for backend in (wrong, nobody):
            with pytest.raises(Unreachable):
                await backend.stat("a.txt")
    finally:
        await wrong.aclose()
        await nobody.aclose()


# --- the interpreter exits cleanly after abandoned streams -----------------------------------------------

EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import obstore
    from pydantic import SecretStr
    from app.storage.locations import AwsCredentials, S3Location
    from app.storage.s3 import S3Config, S3Storage

    endpoint, bucket, access, secret, prefix = sys.argv[1:6]

    async def main():
        storage = S3Storage(
            S3Config(S3Location(bucket, prefix), endpoint=endpoint, allow_http=True, chunk_size=256 * 1024),
            AwsCredentials(aws_access_key_id=SecretStr(access), aws_secret_access_key=SecretStr(secret)),
        )
        async def abandon(i):
            stream = await storage.open_range("big.bin", i * 65536, 4 * 1024 * 1024)
            async for _ in stream:
                break  # the reader goes away mid-range, as a client disconnecting does

        async def abandon_body(i):
            # What aborted the interpreter at exit: a streaming GET left with its body half read.
            got = await obstore.get_async(storage.store(), "big.bin", options={"range": (i * 65536, 4 << 20)})
            async for _ in got.stream(min_chunk_size=256 * 1024):
                break

        await asyncio.gather(*(abandon(i) for i in range(16)), *(abandon_body(i) for i in range(16)))
        if sys.argv[6] == "close":
            await storage.aclose()

    asyncio.run(main())
    """
)


async def test_the_process_exits_cleanly_after_abandoned_concurrent_streams(
    seaweed: Seaweed, storage: S3Storage, tmp_path: Path
) -> None:
    # Without aclose (last argument "keep"), this script aborted (SIGABRT) in 6 runs of 30:
    # twelve clean runs in a row would then happen by chance about once in fourteen times.
    await storage.write("big.bin", body(os.urandom(4 * MiB)))
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    args = [seaweed.endpoint, seaweed.bucket, seaweed.access_key, seaweed.secret_key]
    args += [storage.config.location.prefix, "close"]
    codes = []
    for _ in range(12):
        done = subprocess.run(
            [sys.executable, str(script), *args],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            timeout=120,
        )
        codes.append(done.returncode)
        assert done.returncode == 0, (codes, done.stderr.decode(errors="replace")[-2000:])


FORK_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from pydantic import SecretStr
    from app.storage.locations import AwsCredentials, S3Location
    from app.storage.s3 import S3Config, S3Storage

    endpoint, bucket, access, secret, prefix = sys.argv[1:6]
    storage = S3Storage(
        S3Config(S3Location(bucket, prefix), endpoint=endpoint, allow_http=True),
        AwsCredentials(aws_access_key_id=SecretStr(access), aws_secret_access_key=SecretStr(secret)),
    )

    async def use():
        try:
            return (await storage.stat("f.txt")).size
        finally:
            await storage.aclose()

    def child():
        try:
            print("child", asyncio.run(asyncio.wait_for(use(), 60)), flush=True)
        except RuntimeError as exc:
            print("child refused:", exc, flush=True)
        os._exit(0)

    for round in ("before any use", "after the parent used it"):
        pid = os.fork()
        if pid == 0:
            child()
        os.waitpid(pid, 0)
        if round == "before any use":
            print("parent", asyncio.run(storage.stat("f.txt")).size, flush=True)
    """
)


async def test_a_worker_forked_before_use_works_and_one_forked_after_is_refused_at_once(
    seaweed: Seaweed, storage: S3Storage, tmp_path: Path
) -> None:
    await storage.write("f.txt", body(b"12345"))
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    args = [seaweed.endpoint, seaweed.bucket, seaweed.access_key, seaweed.secret_key]
    done = subprocess.run(
        [sys.executable, str(script), *args, storage.config.location.prefix],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "child 5",
        "parent 5",
        "child refused: this S3 storage was used before the process forked; make one per worker",
    ], done.stderr[-2000:]
