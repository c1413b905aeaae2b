"""Files whose stat values do not fit SQLite's signed 64-bit integers (in-process, no server).

ext4 keeps mtimes up to the year 2446 and tmpfs any 64-bit time, past the year 2262 where a time
in nanoseconds leaves int64: an archive unpacked with a bogus date makes one. Such a file must not
fail its folder's listing, search or ?checksums (500 before), and is served like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from app.main import create_app
from app.storage.values import identity, stored_ns, stored_u64
from tests.conftest import make_settings
from tests.support.inprocess import in_process

YEAR_2286_NS = 10**19  # past int64 nanoseconds (2262), within ext4's range


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "now.txt").write_bytes(b"now\n")
    (root / "sub" / "far.txt").write_bytes(b"far future\n")
    os.utime(root / "sub" / "far.txt", ns=(YEAR_2286_NS, YEAR_2286_NS))
    return root


def test_a_far_future_file_is_listed_searched_summed_and_served(root: Path, tmp_path: Path) -> None:
    assert (root / "sub" / "far.txt").stat().st_mtime_ns == YEAR_2286_NS  # the file system kept it
    settings = make_settings(root, index_path=tmp_path / "index.sqlite3", watch=False, rescan_interval=0)

    async def main() -> None:
        async with in_process(create_app(settings)) as http:
            listing = await http.get("/files/sub/?format=json")
            assert listing.status_code == 200
            assert sorted(e["name"] for e in listing.json()["entries"]) == ["far.txt", "now.txt"]
            assert (await http.get("/files/sub/")).status_code == 200
            found = await http.get("/api/search", params={"q": "far.tx"})
            assert [e["path"] for e in found.json()["entries"]] == ["sub/far.txt"]
            entry = await http.get("/api/files/sub/far.txt")
            # The index keeps the latest time it can hold (2262-04-11); the download's own
            # Last-Modified comes from the file itself.
            assert entry.status_code == 200 and entry.json()["mtime"].startswith("2262-04-11")
            download = await http.get("/files/sub/far.txt")
            assert download.status_code == 200 and download.content == b"far future\n"
            assert download.headers["last-modified"] == "Sat, 20 Nov 2286 17:46:40 GMT"
            sums = await http.get("/files/sub/?checksums")
            assert sums.status_code == 200
            digest = hashlib.sha256(b"far future\n").hexdigest()
            assert f"{digest}  far.txt\n" in sums.text

    asyncio.run(main())


@pytest.mark.parametrize(
    ("value", "stored"),
    [(0, 0), (2**63 - 1, 2**63 - 1), (2**63, -(2**63)), (2**64 - 1, -1)],
)
def test_unsigned_64_bit_numbers_keep_their_bits(value: int, stored: int) -> None:
    assert stored_u64(value) == stored
    assert stored_u64(value) % 2**64 == value  # distinct values stay distinct


def test_timestamps_past_int64_are_clamped() -> None:
    assert stored_ns(YEAR_2286_NS) == 2**63 - 1
    assert stored_ns(-(10**19)) == -(2**63)
    assert stored_ns(1_700_000_000 * 10**9) == 1_700_000_000 * 10**9


def test_an_identity_always_fits_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    os.utime(path, ns=(YEAR_2286_NS, YEAR_2286_NS))
    assert all(-(2**63) <= v < 2**63 for v in identity(path.stat()))
