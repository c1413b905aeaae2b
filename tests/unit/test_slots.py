"""app/transfer/slots.py: FERRY_MAX_CONNECTIONS_PER_IP's slots, taken for a streamed answer and
only checked for one written whole at once."""

from __future__ import annotations

import pytest

from app.errors import TooManyRequests
from app.transfer.slots import DownloadSlots


def test_a_check_refuses_a_full_address_and_takes_no_slot() -> None:
    slots = DownloadSlots(2)
    for _ in range(5):
        slots.check("10.0.0.1")  # (nothing taken: as often as asked)
    release = slots.acquire("10.0.0.1")
    slots.check("10.0.0.1")
    held = slots.acquire("10.0.0.1")
    with pytest.raises(TooManyRequests):
        slots.check("10.0.0.1")
    slots.check("10.0.0.2")  # another address has its own
    assert release is not None and held is not None
    release()
    slots.check("10.0.0.1")
    held()
    assert slots.active == {}


def test_no_limit_checks_nothing() -> None:
    slots = DownloadSlots(0)
    slots.check(None)
    assert slots.acquire(None) is None and slots.active == {}
