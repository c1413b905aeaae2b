"""The JSON shape of index entries: every mtime a file system can hold gives an entry (tmpfs keeps
any 64-bit time, past the years a datetime can carry), so one odd file never fails a listing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.storage.values import Entry
from app.views.entries import entry_model

# `touch -d @399999999999` on tmpfs: a stat's st_mtime_ns is a Python int, past any datetime.
YEAR_14645_NS = 399_999_999_999 * 10**9


def file_entry(mtime_ns: int) -> Entry:
    return Entry("a/f.bin", "f.bin", False, 3, mtime_ns, 1, 2)


@pytest.mark.parametrize(
    ("mtime_ns", "expected"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1_700_000_000_123_456_789, datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)),
        (YEAR_14645_NS, datetime.max.replace(tzinfo=UTC)),
        (-YEAR_14645_NS, datetime.min.replace(tzinfo=UTC)),
    ],
)
def test_mtimes_outside_what_a_datetime_holds_are_clamped(mtime_ns: int, expected: datetime) -> None:
    assert entry_model(file_entry(mtime_ns), {}).mtime == expected


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_every_mtime_a_stat_can_give_makes_a_serialisable_entry(mtime_ns: int) -> None:
    model = entry_model(file_entry(mtime_ns), {})
    assert '"mtime":"' in model.model_dump_json()
