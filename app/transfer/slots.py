"""FERRY_MAX_CONNECTIONS_PER_IP: concurrent downloads per client address, in this worker."""

from __future__ import annotations

from collections.abc import Callable

from app.errors import TooManyRequests
from app.http.plan import ResponsePlan


class DownloadSlots:
    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self.active: dict[str, int] = {}

    def acquire(self, client: str | None) -> Callable[[], None] | None:
        """Take a slot for the client's address, or raise 429; returns the release callback."""
        if not self.per_address:
            return None
        address = client or ""
        count = self.active.get(address, 0)
        if count >= self.per_address:
            raise TooManyRequests()
        self.active[address] = count + 1
        return lambda: self._release(address)

    def check(self, client: str | None) -> None:
        """429 if the client's address has no slot free; nothing taken (an answer sent whole at
        once holds its slot for no longer than this)."""
        if self.per_address and self.active.get(client or "", 0) >= self.per_address:
            raise TooManyRequests()

    def hold(self, plan: ResponsePlan, method: str, client: str | None) -> Callable[[], None] | None:
        """A slot for a GET whose plan sends a body (429 past FERRY_MAX_CONNECTIONS_PER_IP), else
        none; returns the release callback."""
        return self.acquire(client) if plan.body and method == "GET" else None

    def _release(self, address: str) -> None:
        remaining = self.active[address] - 1
        if remaining:
            self.active[address] = remaining
        else:
            del self.active[address]
