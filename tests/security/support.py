"""What every security test checks: that the canary outside ROOT is never read (its bytes in no
response) or written (the tree outside ROOT exactly as it was). Raw HTTP: tests/support/raw.py."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.raw import Exchange, complete_response, exchange, get, parse_head
from tests.support.servers import CANARY, FerryServer

__all__ = ["Exchange", "complete_response", "exchange", "get", "parse_head"]

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


def assert_healthy(server: FerryServer) -> None:
    """The server is still there and answers a plain request at once."""
    assert server.process.poll() is None, f"ferry serve exited: {server.log.read_text()[-2000:]}"
    answer = get(server.port, "/healthz")
    assert answer.status == 200, answer.raw[:300]
    assert json.loads(answer.body) == {"status": "ok"}
