"""The services one Ferry app is made of, built once per app and reached through one typed value.

`Services.build(settings)` wires the path gate, the index (and the async facade code on the event
loop uses), the transfer-activity signal, the index keeper, the read gate and the on-demand hasher.
`FerryApp.services` holds the result; FastAPI routes reach it through `services_of(request)`, the
plain-ASGI routes are handed it when the app is built. Nothing lives in the untyped `app.state`, so
`mypy --strict` sees every use.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

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

if TYPE_CHECKING:
    from app.storage.s3 import S3Storage


class Keeper(Protocol):
    """What keeps the index in step with the storage: IndexKeeper (a local root: scan, inotify,
    rescans) or BucketKeeper (a bucket: listing rounds). `ready` is set once the first scan or
    listing is done (or another process keeps the index)."""

    ready: asyncio.Event

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    policy: PathPolicy
    index: Index
    async_index: AsyncIndex  # what code on the event loop uses
    activity: Activity
    keeper: Keeper
    gate: Gate
    on_demand: OnDemandHasher
    # FERRY_STORAGE=s3://…: the bucket files live in (None: the local FERRY_ROOT, through `policy`).
    bucket: S3Storage | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        policy = PathPolicy(
            root=settings.root, show_hidden=settings.show_hidden, follow_symlinks=settings.follow_symlinks
        )
        index = Index(settings.index_file, policy)
        async_index = AsyncIndex(index)
        # Every process marks its transfers on the index's activity file; the hasher yields to them.
        activity = Activity(Path(str(settings.index_file) + ".busy"))
        bucket = object_storage(settings)
        keeper: Keeper
        if bucket is not None:
            from app.storage.bucket_index import BucketHasher, BucketKeeper

            index.on_disk = False  # what is under FERRY_ROOT is not what is served
            digests = BucketHasher(index, async_index, bucket, activity, rate=settings.hash_rate)
            keeper = BucketKeeper(
                index,
                async_index,
                bucket,
                rescan_interval=settings.rescan_interval,
                hasher=digests if settings.checksums else None,
            )
        else:
            hasher = DigestWorker(index, activity, rate=settings.hash_rate) if settings.checksums else None
            keeper = IndexKeeper(
                index, watch=settings.watch, rescan_interval=settings.rescan_interval, hasher=hasher
            )
        return cls(
            settings=settings,
            policy=policy,
            index=index,
            async_index=async_index,
            activity=activity,
            keeper=keeper,
            gate=Gate(settings),
            on_demand=OnDemandHasher(index, max_backlog=settings.hash_on_demand_max),
            bucket=bucket,
        )


def object_storage(settings: Settings, *, retry_seconds: float = 20.0) -> S3Storage | None:
    """The bucket FERRY_STORAGE names, reached with the AWS_* credentials of the environment
    (obstore is imported only when one is configured: a local server never loads it). Made
    unconnected: its client is created on first use, in the worker process that uses it."""
    if settings.storage is None:
        return None
    from app.storage.locations import AwsCredentials
    from app.storage.s3 import S3Config, S3Storage

    config = S3Config(
        settings.storage,
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        allow_http=settings.s3_allow_http,
        show_hidden=settings.show_hidden,
        part_size=settings.s3_part_size,
        chunk_size=settings.chunk_size,
        retry_seconds=retry_seconds,
    )
    return S3Storage(config, AwsCredentials())


def services_of(request: Request) -> Services:
    """The services of the app serving `request` (a FastAPI dependency, and for plain use)."""
    found = getattr(request.app, "services", None)
    if not isinstance(found, Services):
        raise TypeError("the request is not served by a FerryApp")
    return found
