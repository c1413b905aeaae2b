"""What the resumable-upload protocols (tus: app/routes/tus.py; the IETF draft:
app/routes/resumable_draft.py) share: where upload resources live, the one core per app (a local
root's or a bucket's), and the creation's preconditions, checked at creation and again when the
last byte is in.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from app.errors import PreconditionFailed
from app.http.conditional import RequestConditions, make_validators, write_allowed
from app.http.mime import content_type_for
from app.services import Services
from app.storage.backend import Stat
from app.storage.resumable import ResumableUploads
from app.storage.upload_store import Resumable
from app.storage.values import Entry, FileDigest

PREFIX = "/api/uploads"


class UploadCore(Protocol):
    """What both protocols use of a core: app/storage/resumable.py's ResumableUploads (a local
    root) or app/storage/bucket_resumable.py's BucketUploads (a bucket). An append is the core's
    own value, handed back to it; `check` is `precondition`'s."""

    async def create(
        self, path: str, length: int | None, owner: str, metadata: dict[str, str], check: Any, max_size: int
    ) -> Resumable: ...

    async def find(self, upload_id: str, owner: str) -> Resumable: ...

    async def append(self, upload: Resumable) -> Any: ...

    async def write(self, append: Any, data: bytes | bytearray) -> None: ...

    async def record(self, append: Any) -> Resumable: ...

    async def declare(self, append: Any, length: int) -> None: ...

    def release(self, append: Any) -> None: ...

    async def complete(
        self, append: Any, check: Any, verify: Callable[[FileDigest], None] | None = None
    ) -> tuple[bool, Entry]: ...

    async def terminate(self, upload: Resumable) -> None: ...


async def let_go(core: UploadCore, append: Any) -> None:
    """The end of an append: `release`, then, on a bucket, wait until its lease is let go in the
    store, so the client's next append, wherever it lands, finds the upload free."""
    core.release(append)
    released = getattr(core, "released", None)  # BucketUploads: the lease is a store write
    if released is not None:
        await released(append)


def make_core(services: Services) -> UploadCore:
    """An app's resumable-upload core (one per app: app/routes/resumable_draft.py `draft_uploads`
    makes it, and both protocols use that one, with its running hashes)."""
    settings = services.settings
    if services.bucket is not None:
        from app.storage.bucket_resumable import BucketUploads  # a local worker never loads it

        return BucketUploads(
            services.index,
            services.async_index,
            services.bucket,
            services.bucket.multipart(),
            expiry=settings.upload_expiry,
            content_type=lambda name: content_type_for(name, settings.mime_types),
        )
    return ResumableUploads(
        services.index,
        services.async_index,
        services.policy,
        fsync=settings.fsync,
        expiry=settings.upload_expiry,
    )


def precondition(core: UploadCore, conditions: RequestConditions) -> Any:
    """The creation's If-Match / If-None-Match as `core` checks them: against a local file's stat
    or an object's."""
    if isinstance(core, ResumableUploads):
        return checker(conditions)
    return object_checker(conditions)


def object_checker(conditions: RequestConditions) -> Callable[[Stat | None], None]:
    """The preconditions against the object there (None: none), by the validators its downloads
    carry."""

    from app.routes.bucket_files import object_validators  # a local worker never loads it

    def check(st: Stat | None) -> None:
        if not write_allowed(conditions, None if st is None else object_validators(st)):
            raise PreconditionFailed()

    return check


def checker(conditions: RequestConditions) -> Callable[[os.stat_result | None], None]:
    """The creation's If-Match / If-None-Match, checked at creation and again at publishing."""

    def check(st: os.stat_result | None) -> None:
        validators = None
        if st is not None:
            validators = make_validators(
                dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns
            )
        if not write_allowed(conditions, validators):
            raise PreconditionFailed()

    return check


def conditions_of(upload: Resumable) -> RequestConditions:
    """The preconditions an upload's creation carried (kept in its metadata)."""
    meta = upload.metadata
    return RequestConditions(if_match=meta.get("if-match"), if_none_match=meta.get("if-none-match"))
