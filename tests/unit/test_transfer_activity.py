"""The transfer layer marks its own bytes as activity: the background hasher yields to a download
while its body is sent and to an upload while its body arrives, and to nothing else (a HEAD, a
304, a body already finished)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.http.conditional import RequestConditions, make_validators
from app.http.plan import DownloadRequest, FileFacts, plan_download
from app.transfer.activity import Activity
from app.transfer.download import FileSender, TransferOptions
from app.transfer.upload import ClientGone, body_chunks

BODY = b"x" * (256 * 1024)


@pytest.fixture
def activity(tmp_path: Path) -> Iterator[Activity]:
    # linger=0: the lock is let go on the loop's next turn after the last transfer ends.
    marked = Activity(tmp_path / "index.sqlite3.busy", linger=0)
    yield marked
    marked.close()


def sender(path: Path, method: str, activity: Activity, *, if_none_match: str | None = None) -> FileSender:
    fd = os.open(path, os.O_RDONLY)
    st = os.fstat(fd)
    validators = make_validators(dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)
    facts = FileFacts(
        size=st.st_size,
        validators=validators,
        content_type="application/octet-stream",
        content_disposition="",
    )
    wanted = DownloadRequest(method, conditions=RequestConditions(if_none_match=if_none_match))
    plan = plan_download(wanted, facts, max_ranges=10, now=int(st.st_mtime))
    options = TransferOptions(chunk_size=64 * 1024, write_buffer=64 * 1024, zero_copy="off")
    return FileSender(plan, fd, st, options, activity=activity)


async def send_and_watch(answer: FileSender, method: str, activity: Activity) -> list[bool]:
    """Whether the hasher would see a transfer, at each body message sent."""
    seen: list[bool] = []

    async def receive() -> dict[str, object]:
        await asyncio.Event().wait()  # no disconnect
        return {}

    async def send(message: object) -> None:
        if isinstance(message, dict) and message.get("type") == "http.response.body":
            seen.append(activity.busy())

    await answer({"type": "http", "method": method, "extensions": {}}, receive, send)
    return seen


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_a_download_is_a_transfer_while_its_body_is_sent(tmp_path: Path, activity: Activity) -> None:
    (tmp_path / "f.bin").write_bytes(BODY)

    async def run() -> tuple[list[bool], bool]:
        seen = await send_and_watch(sender(tmp_path / "f.bin", "GET", activity), "GET", activity)
        await settle()
        return seen, activity.busy()

    seen, after = asyncio.run(run())
    assert len(seen) >= 4 and all(seen), seen
    assert not after


@pytest.mark.parametrize(
    "method, if_none_match", [("HEAD", None), ("GET", "*")], ids=["head", "not-modified"]
)
def test_an_answer_without_file_bytes_is_no_transfer(
    tmp_path: Path, activity: Activity, method: str, if_none_match: str | None
) -> None:
    (tmp_path / "f.bin").write_bytes(BODY)

    async def run() -> list[bool]:
        answer = sender(tmp_path / "f.bin", method, activity, if_none_match=if_none_match)
        return await send_and_watch(answer, method, activity)

    assert asyncio.run(run()) == [False]


def test_an_upload_is_a_transfer_from_its_first_byte_until_its_body_ends(activity: Activity) -> None:
    messages = [{"type": "http.request", "body": b"a" * 10, "more_body": True}] * 3
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def run() -> tuple[bool, list[bool], bool]:
        queue = list(messages)

        async def receive() -> dict[str, object]:
            return queue.pop(0)

        chunks = body_chunks(receive, 1000, activity)
        before = activity.busy()  # nothing read yet
        during = [activity.busy() async for _ in chunks]
        await settle()
        return before, during, activity.busy()

    before, during, after = asyncio.run(run())
    assert (before, during, after) == (False, [True, True, True], False)


def test_an_upload_left_unfinished_stops_being_a_transfer_when_closed(activity: Activity) -> None:
    async def run() -> tuple[bool, bool]:
        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"a", "more_body": True}

        async with contextlib.aclosing(body_chunks(receive, 1000, activity)) as chunks:
            await anext(chunks)
            during = activity.busy()
        await settle()
        return during, activity.busy()

    assert asyncio.run(run()) == (True, False)


def test_a_client_gone_mid_upload_ends_the_transfer(activity: Activity) -> None:
    async def run() -> bool:
        replies: list[dict[str, object]] = [
            {"type": "http.request", "body": b"a", "more_body": True},
            {"type": "http.disconnect"},
        ]

        async def receive() -> dict[str, object]:
            return replies.pop(0)

        with pytest.raises(ClientGone):
            async for _ in body_chunks(receive, 1000, activity):
                pass
        await settle()
        return activity.busy()

    assert asyncio.run(run()) is False


def test_a_small_answer_written_whole_marks_a_transfer_as_begin_and_end_do(tmp_path: Path) -> None:
    """`mark` (the fast path's whole answers): the lock taken if it was not, let go once the
    linger has passed since the last mark; nothing changes while a transfer is in flight."""

    async def run() -> list[bool]:
        probe = Activity(tmp_path / "busy", linger=0)
        serving = Activity(tmp_path / "busy", linger=0)
        seen = [probe.busy()]
        serving.mark()
        seen.append(probe.busy())  # held: the hasher yields
        await settle()
        seen.append(probe.busy())  # the linger (0) passed: let go
        serving.begin()  # a stream in flight
        serving.mark()
        await settle()
        seen.append(probe.busy())  # still the stream's
        serving.end()
        serving.mark()  # held again, as after a begin and an end
        seen.append(serving._held)
        await settle()
        seen.append(probe.busy())
        probe.close()
        serving.close()
        return seen

    assert asyncio.run(run()) == [False, True, False, True, True, False]
