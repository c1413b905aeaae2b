"""Before the baseline: one request of each sort (imports, caches, the first pool threads)."""

from __future__ import annotations

from tests.load.data import DataTree
from tests.load.wire import Connection


async def fetch(host: str, port: int, target: str) -> int:
    conn = await Connection.open(host, port)
    try:
        head = await conn.request(target)
        await conn.read_all(head)
        return head.status
    finally:
        conn.close()


def warm_targets(tree: DataTree) -> list[str]:
    targets = [f.target for f in tree.files[:3]]
    targets += [f"/api/files/{d.path}?limit=100" for d in tree.directories]
    return targets + [f"/api/search?q={term.query}&limit=100" for term in tree.searches[:3]]


async def warm_up(host: str, port: int, tree: DataTree) -> None:
    for target in warm_targets(tree):
        status = await fetch(host, port, target)
        if status != 200:
            raise RuntimeError(f"warm-up GET {target} answered {status}")
