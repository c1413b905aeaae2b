"""The services one Ferry app is made of, built once per app and reached through one typed value.

`Services.build(settings)` wires the path gate, the index (and the async facade code on the event
loop uses), the transfer-activity signal, the index keeper, the read gate and the on-demand hasher.
`FerryApp.services` holds the result; FastAPI routes reach it through `services_of(request)`, the
plain-ASGI routes are handed it when the app is built. Nothing lives in the untyped `app.state`, so
`mypy --strict` sees every use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from app.auth import Gate
from app.settings import Settings
from app.storage.async_index import AsyncIndex
from app.storage.hasher import DigestWorker
from app.storage.index import Index
from app.storage.on_demand import OnDemandHasher
from app.storage.paths import PathPolicy
from app.storage.watch import IndexKeeper
from app.transfer.activity import Activity


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    policy: PathPolicy
    index: Index
    async_index: AsyncIndex  # what code on the event loop uses
    activity: Activity
    keeper: IndexKeeper
    gate: Gate
    on_demand: OnDemandHasher

    @classmethod
    def build(cls, settings: Settings) -> Services:
        policy = PathPolicy(
            root=settings.root, show_hidden=settings.show_hidden, follow_symlinks=settings.follow_symlinks
        )
        index = Index(settings.index_file, policy)
        # Every process marks its transfers on the index's activity file; the hasher yields to them.
        activity = Activity(Path(str(settings.index_file) + ".busy"))
        hasher = DigestWorker(index, activity, rate=settings.hash_rate) if settings.checksums else None
        return cls(
            settings=settings,
            policy=policy,
            index=index,
            async_index=AsyncIndex(index),
            activity=activity,
            keeper=IndexKeeper(
                index, watch=settings.watch, rescan_interval=settings.rescan_interval, hasher=hasher
            ),
            gate=Gate(settings),
            on_demand=OnDemandHasher(index, max_backlog=settings.hash_on_demand_max),
        )


def services_of(request: Request) -> Services:
    """The services of the app serving `request` (a FastAPI dependency, and for plain use)."""
    found = getattr(request.app, "services", None)
    if not isinstance(found, Services):
        raise TypeError("the request is not served by a FerryApp")
    return found
