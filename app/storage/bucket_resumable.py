"""Resumable uploads to a bucket (FERRY_STORAGE=s3://…): the core of resumable.py, over an S3
multipart upload instead of a temporary file, with its state in the bucket, where every replica
sees it. Knows nothing about HTTP.

Where things live (the replicas share nothing but the bucket): each upload's state is one small
JSON object, `.ferry-upload-resumable/OWNER/ID/state.json` below the storage's prefix (a
TEMP_PREFIX name: never listed, served or indexed): target, declared length, offset, the S3
multipart upload's id and each recorded part's number, size and ETag, the running SHA-256
(OpenSSL's saved state, running_sha256.py) and CRC-32 of the bytes up to the offset, the expiry,
and the lease of the request appending. Every change is a conditional PUT on the state's ETag, so
two replicas never both think they hold it. The parts themselves are the multipart upload's
(ListParts is not needed: the state lists the parts that count; a part uploaded and not recorded is
simply left out of the completion, and S3 drops it).

Appends: bytes are buffered to FERRY_S3_PART_SIZE and each full part is uploaded, then recorded
(a checkpoint: the offset moves to the end of the last part). S3 wants every part but the last
to be at least 5 MiB, so the bytes of an append past the last full part (its tail) are stored,
when the append ends, as a small object of their own beside the state (`ID/tail-OFFSET`) and
recorded: a PATCH of 1 KiB is acknowledged durably. The next append reads that tail back and
continues the part it starts. With a per-append checksum (tus Upload-Checksum, Content-Digest)
nothing is recorded before the whole body is verified: a mismatch leaves the state as it was.

One append at a time: an append takes a lease in the state (LEASE_SECONDS, renewed with each
part). A second append meanwhile gets InTheWay (409); a lease not renewed in time (its process
died) is taken over, and the part numbers move on by one, so a part the old holder may still be
sending is never one the new holder records; the old holder's next state write fails.

Completion: the same checks as a bucket PUT (the preconditions against the object there now;
a folder or a file in the way is 409), then a body that fits in one part is one conditional PUT
with its SHA-256 and CRC-32 as attributes, and a longer one's last part is uploaded and
CompleteMultipartUpload called after the preconditions are checked again (as a multipart PUT
does: a write racing in that window can still be overwritten). Nothing is at the key before.
The digest goes into the index with the entry. A terminated or expired upload is aborted
(AbortMultipartUpload) and its state and tail deleted; expired uploads are swept when uploads
are created (at most once a minute per process) and whenever one is looked up.

Long because: an upload's whole life over the bucket (create, append, record, complete,
terminate, expire) relies on one state layout, kept together as resumable.py's is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import obstore

from app import metrics
from app.storage.appending import ChecksumMismatch, TooManyUploads, busy
from app.storage.async_index import AsyncIndex
from app.storage.backend import Stat
from app.storage.bucket_index import index_written
from app.storage.digests import crc32
from app.storage.errors import Changed, InTheWay, InvalidInput, NameTooLong, NotServable, StorageError
from app.storage.index import Index
from app.storage.paths import TEMP_PREFIX
from app.storage.running_sha256 import RunningSha256, available
from app.storage.s3 import S3Storage, _answers
from app.storage.s3_multipart import Multipart, Part
from app.storage.upload_store import Resumable
from app.storage.values import Entry, FileDigest

STATE_ROOT = TEMP_PREFIX + "resumable/"
STATE_NAME = "state.json"
LEASE_SECONDS = 60.0
SWEEP_SECONDS = 60.0
_REMEMBERED = 1024
MAX_KEY_BYTES = 1024  # the longest key S3 stores, the bucket's prefix included
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what secrets.token_urlsafe makes

ObjectCheck = Callable[[Stat | None], None]


@dataclass
class UploadState:
    """What the state object holds (JSON)."""

    upload: Resumable
    multipart: str | None = None  # the S3 multipart upload's id, once its first part is sent
    parts: list[Part] = field(default_factory=list)
    next_part: int = 1
    tail: str | None = None  # the key of the bytes past the last part, when there are any
    sha256: str | None = None  # base64 of the saved SHA-256 state at `upload.offset`
    crc32: int = 0
    lease: str | None = None
    lease_until: float = 0.0

    def dump(self) -> bytes:
        values = asdict(self)
        values["upload"]["sha256"] = None  # the state's own `sha256` below is the one kept
        return json.dumps(values).encode()

    @classmethod
    def load(cls, data: bytes) -> UploadState:
        values = json.loads(data)
        upload = values["upload"]
        for older in ("piece_length", "pieces"):  # a state written before the hashes moved here
            upload.pop(older, None)
        upload["sha256"], upload["crc32"] = None, 0
        values["upload"] = Resumable(**upload)
        values["parts"] = [Part(**p) for p in values["parts"]]
        return cls(**values)

    @property
    def parts_size(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass
class ObjectAppend:
    """One request's append: the state it leased, the bytes past the last part, the hashes."""

    kept: UploadState  # the state as this append last wrote it
    etag: str  # the state object's, as this append last wrote it
    buffer: bytearray  # the bytes from the end of the last part sent on
    parts_size: int  # bytes in parts sent (recorded or not)
    hashed: int  # bytes the running hashes cover
    sha256: RunningSha256 | None
    crc32: int
    recorded: int
    checksum: Any | None = None
    released: bool = False
    sent: list[Part] = field(default_factory=list)  # parts sent by this append, not yet recorded

    @property
    def upload(self) -> Resumable:
        return self.kept.upload

    @upload.setter
    def upload(self, value: Resumable) -> None:
        self.kept.upload = value

    @property
    def size(self) -> int:
        return self.parts_size + len(self.buffer)

    def expect_checksum(self, algorithm: str) -> None:
        self.checksum = hashlib.new(algorithm)

    def verify(self, digest: bytes) -> None:
        if self.checksum is not None and self.checksum.digest() != digest:
            raise ChecksumMismatch()  # nothing past `recorded` is ever recorded

    def hash_to(self, position: int) -> None:
        """The running hashes moved on to `position` (bytes in the buffer)."""
        if position <= self.hashed:
            return
        start = self.hashed - self.parts_size
        data = memoryview(self.buffer)[start : position - self.parts_size]
        if self.sha256 is not None:
            self.sha256.update(data)
        self.crc32 = crc32(data, self.crc32)
        self.hashed = position


class BucketUploads:
    """Create, continue, complete and terminate resumable uploads into one bucket."""

    def __init__(
        self,
        index: Index,
        async_index: AsyncIndex,
        bucket: S3Storage,
        multipart: Multipart,
        *,
        expiry: float,
        max_per_owner: int = 100,
        max_total: int = 1000,
        content_type: Callable[[str], str | None] = lambda name: None,
    ) -> None:
        self.index = index
        self.async_index = async_index
        self.bucket = bucket
        self.multipart = multipart
        self.expiry = expiry
        self.max_per_owner = max_per_owner
        self.max_total = max_total
        self.part_size = bucket.config.part_size
        self.content_type = content_type
        self._swept = 0.0
        self._unleasing: dict[str, asyncio.Task[None]] = {}
        self._appended: OrderedDict[str, None] = OrderedDict()  # uploads this process appended to

    # -- the state object ---------------------------------------------------------------------------

    @staticmethod
    def state_key(owner: str, upload_id: str) -> str:
        return f"{STATE_ROOT}{owner[:32]}/{upload_id}/{STATE_NAME}"

    async def _load(self, key: str) -> tuple[UploadState, str] | None:
        try:
            with _answers():
                got = await obstore.get_async(self.bucket.store(), key)
                data = await got.bytes_async()
        except NotServable:
            return None
        return UploadState.load(bytes(data)), str(got.meta.get("e_tag"))

    async def _save(self, state: UploadState, etag: str | None) -> str:
        """Write the state if it is still the one `etag` names (None: a new one); its new ETag.
        Changed when another request wrote it meanwhile."""
        mode: Any = {"e_tag": etag} if etag is not None else "create"
        with _answers():
            put = await obstore.put_async(self.bucket.store(), state.upload.temp, state.dump(), mode=mode)
        return str(put["e_tag"])

    async def _delete(self, key: str | None) -> None:
        if key is None:
            return
        try:
            with _answers():
                await obstore.delete_async(self.bucket.store(), key)
        except NotServable:
            pass

    # -- creation and lookup ------------------------------------------------------------------------

    async def create(
        self,
        path: str,
        length: int | None,
        owner: str,
        metadata: dict[str, str],
        check: ObjectCheck,
        max_size: int,
    ) -> Resumable:
        """A new upload of `length` bytes (None: declared later) to `path`; refused now if the
        name is not one the bucket may hold, something is in the way, or `check` fails."""
        key = self.bucket.key(path)
        if not key or key.rpartition("/")[2].startswith(TEMP_PREFIX):
            raise InvalidInput("an upload needs a file path")
        if len((self.bucket.config.location.prefix + key).encode()) > MAX_KEY_BYTES:
            raise NameTooLong(f"the key is longer than {MAX_KEY_BYTES} bytes")
        mine, total = await self._count(owner)
        if mine >= self.max_per_owner or total >= self.max_total:
            raise TooManyUploads()
        check(await self.current(key))
        now = int(time.time())
        upload_id = secrets.token_urlsafe(18)
        upload = Resumable(
            id=upload_id,
            path=key,
            temp=self.state_key(owner, upload_id),
            length=length,
            offset=0,
            sha256=None,
            crc32=0,
            created=now,
            expires=now + int(self.expiry),
            owner=owner,
            metadata=metadata,
        )
        state = UploadState(upload, sha256=_saved(RunningSha256()) if available() else None)
        await self._save(state, None)
        metrics.RESUMABLE_UPLOADS.labels("started").inc()
        return upload

    async def current(self, key: str) -> Stat | None:
        """The object an upload to `key` replaces (None: none); 409 for a folder there or a file
        above it, as for a PUT."""
        parts = key.split("/")
        folders = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        for stat in await asyncio.gather(*(self.bucket.head(folder) for folder in folders)):
            if stat is not None:
                raise InTheWay(f"a file is in the way of {stat.path.rpartition('/')[2]!r}")
        try:
            found = await self.bucket.stat(key)
        except NotServable:
            return None
        if found.is_dir:
            raise InTheWay(f"a directory is in the way of {key.rpartition('/')[2]!r}")
        return found

    async def _count(self, owner: str) -> tuple[int, int]:
        """Open uploads (of `owner`, in all), the expired ones swept first (once a minute)."""
        sweep = time.monotonic() - self._swept > SWEEP_SECONDS
        mine = total = 0
        with _answers():
            async for batch in obstore.list(self.bucket.store(), STATE_ROOT, chunk_size=1000):
                for meta in batch:
                    if not meta["path"].endswith("/" + STATE_NAME):
                        continue
                    if sweep and meta["last_modified"].timestamp() + self.expiry < time.time():
                        await self._expire(meta["path"])
                        continue
                    total += 1
                    mine += meta["path"].startswith(f"{STATE_ROOT}{owner[:32]}/")
        if sweep:
            self._swept = time.monotonic()
        return mine, total

    async def _expire(self, key: str) -> None:
        found = await self._load(key)
        if found is not None and found[0].upload.expires <= time.time():
            await self._end(found[0], "expired")

    async def find(self, upload_id: str, owner: str) -> Resumable:
        """The upload `owner` created, still open; NotServable for any other (unknown, another
        token's, expired: all alike). An expired one is ended on the way."""
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise NotServable()
        found = await self._load(self.state_key(owner, upload_id))
        if found is None or found[0].upload.owner != owner:
            raise NotServable()
        state = found[0]
        if state.upload.expires <= time.time():
            await self._end(state, "expired")
            raise NotServable()
        return state.upload

    # -- appending ----------------------------------------------------------------------------------

    async def append(self, upload: Resumable) -> ObjectAppend:
        """Lease the upload for one request's append (InTheWay, 409, if another holds it) and read
        its tail back. Close with `release`."""
        pending = self._unleasing.get(upload.id)
        if pending is not None:
            await asyncio.shield(pending)  # this process's last append of it is letting go
        found = await self._load(upload.temp)
        if found is None:
            raise NotServable()
        state, etag = found
        now = time.time()
        if state.lease is not None:
            if state.lease_until > now:
                raise busy()
            state.next_part += 1  # taken over: the old holder may be sending `next_part` still
        state.lease, state.lease_until = secrets.token_hex(8), now + LEASE_SECONDS
        try:
            etag = await self._save(state, etag)
        except StorageError:
            raise busy() from None
        sha = None
        if state.sha256 is not None and available():
            sha = RunningSha256(base64.b64decode(state.sha256))
        offset, parts_size = state.upload.offset, state.parts_size
        append = ObjectAppend(state, etag, bytearray(), parts_size, offset, sha, state.crc32, offset)
        try:
            if state.tail is not None:
                with _answers():
                    got = await obstore.get_async(self.bucket.store(), state.tail)
                    append.buffer += await got.bytes_async()
            if append.size != offset:
                raise InvalidInput("the upload's stored bytes are not what was recorded; start it again")
        except BaseException:
            self.release(append)
            raise
        if offset and upload.id not in self._appended:
            metrics.RESUMED_BYTES.inc(offset)  # received by another process (or before a restart)
        self._appended[upload.id] = None
        self._appended.move_to_end(upload.id)
        while len(self._appended) > _REMEMBERED:
            self._appended.popitem(last=False)
        return append

    async def write(self, append: ObjectAppend, data: bytes | bytearray) -> None:
        """Buffer `data`, sending (and recording) each part that fills."""
        length = append.upload.length
        if length is not None and append.size + len(data) > length:
            raise InvalidInput(f"the upload is {length} bytes long; the body goes past its end")
        if append.checksum is not None:
            append.checksum.update(data)
        append.buffer += data
        while len(append.buffer) >= self.part_size:
            await self._send_part(append, self.part_size)
        if append.kept.lease_until - time.time() < LEASE_SECONDS / 2:
            await self._checkpoint(append)  # a slow body keeps its lease

    async def _send_part(self, append: ObjectAppend, size: int) -> None:
        state = append.kept
        if state.multipart is None:
            attributes = {k: v for k, v in self._attributes(append.upload).items() if k != "crc32"}
            state.multipart = await self.multipart.create(append.upload.path, attributes)
        number = state.next_part
        state.next_part += 1
        await asyncio.to_thread(append.hash_to, append.parts_size + size)
        data = bytes(append.buffer[:size])
        part = await self.multipart.upload_part(append.upload.path, state.multipart, number, data)
        del append.buffer[:size]
        append.parts_size += size
        append.sent.append(part)
        await self._checkpoint(append)

    async def _checkpoint(self, append: ObjectAppend) -> None:
        """Record the parts sent (unless a checksum is still to be verified: then only the part
        numbers used and the lease), renewing the lease."""
        state = append.kept
        old_tail = None
        if append.checksum is None and append.sent and append.hashed == append.parts_size:
            old_tail = state.tail
            state.parts, append.sent = [*state.parts, *append.sent], []
            state.tail, state.crc32 = None, append.crc32
            state.sha256 = _saved(append.sha256) if append.sha256 is not None else None
            state.upload = replace(state.upload, offset=append.parts_size, expires=self._expires())
            metrics.RESUMABLE_BYTES.inc(append.parts_size - append.recorded)
            append.recorded = append.parts_size
        state.lease_until = time.time() + LEASE_SECONDS
        append.etag = await self._leased_save(append)
        await self._delete(old_tail)

    async def _leased_save(self, append: ObjectAppend) -> str:
        try:
            return await self._save(append.kept, append.etag)
        except StorageError:
            raise busy() from None  # the lease was taken over: this append is no longer the upload's

    def _expires(self) -> int:
        return int(time.time() + self.expiry)

    async def record(self, append: ObjectAppend) -> Resumable:
        """Make what was appended durable: the tail stored, then the state recorded."""
        if append.size == append.recorded and not append.sent:
            return append.upload
        state = append.kept
        await asyncio.to_thread(append.hash_to, append.size)
        old_tail = state.tail
        if append.buffer:
            state.tail = f"{_folder(state)}/tail-{append.size}"
            with _answers():
                await obstore.put_async(self.bucket.store(), state.tail, bytes(append.buffer))
        else:
            state.tail = None
        state.parts, append.sent = [*state.parts, *append.sent], []
        state.crc32 = append.crc32
        state.sha256 = _saved(append.sha256) if append.sha256 is not None else None
        state.upload = replace(state.upload, offset=append.size, expires=self._expires())
        state.lease_until = time.time() + LEASE_SECONDS
        try:
            append.etag = await self._leased_save(append)
        except BaseException:
            if state.tail != old_tail:
                await asyncio.shield(self._delete(state.tail))  # never recorded: nobody else knows it
            raise
        metrics.RESUMABLE_BYTES.inc(append.size - append.recorded)
        append.recorded = append.size
        if old_tail != state.tail:
            await self._delete(old_tail)
        return state.upload

    async def declare(self, append: ObjectAppend, length: int) -> None:
        """Declare a deferred length (it may not be below what is stored)."""
        if append.upload.length is not None and append.upload.length != length:
            raise InvalidInput("the upload's length is already declared and cannot change")
        if length < append.size:
            raise InvalidInput("the declared length is below the bytes already stored")
        append.upload = replace(append.upload, length=length)
        append.etag = await self._leased_save(append)

    def release(self, append: ObjectAppend) -> None:
        """Let go of the lease (in the background: safe where nothing can be awaited), once."""
        if append.released:
            return
        append.released = True
        upload_id = append.upload.id
        task = asyncio.get_running_loop().create_task(self._unlease(append))
        self._unleasing[upload_id] = task
        task.add_done_callback(lambda done: self._let_go(upload_id, done))

    async def released(self, append: ObjectAppend) -> None:
        """Wait until the lease `release` let go of is stored: the client's next append may reach
        another replica, which must not find it still held."""
        task = self._unleasing.get(append.upload.id)
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    def _let_go(self, upload_id: str, done: asyncio.Task[None]) -> None:
        if self._unleasing.get(upload_id) is done:
            del self._unleasing[upload_id]

    async def _unlease(self, append: ObjectAppend) -> None:
        found = await self._load(append.upload.temp)
        if found is None or found[1] != append.etag:
            return  # ended, or taken over
        state = found[0]
        state.lease, state.lease_until = None, 0.0
        try:
            await self._save(state, append.etag)
        except StorageError:
            pass  # the lease runs out by itself

    # -- the end ------------------------------------------------------------------------------------

    def _attributes(self, upload: Resumable) -> dict[str, str]:
        attributes: dict[str, str] = {}
        kind = self.content_type(upload.path.rpartition("/")[2])
        if kind:
            attributes["Content-Type"] = kind
        if upload.metadata.get("repr-sha-256"):
            attributes["sha256"] = upload.metadata["repr-sha-256"]
        return attributes

    async def complete(
        self, append: ObjectAppend, check: ObjectCheck, verify: Callable[[FileDigest], None] | None = None
    ) -> tuple[bool, Entry]:
        """Publish a fully appended upload at its key, as a bucket PUT is published; returns
        (created, the new entry). A precondition that fails now, or a `verify` of the whole
        file's digest that raises, ends the upload (its parts are aborted)."""
        upload, state = append.upload, append.kept
        await asyncio.to_thread(append.hash_to, append.size)
        digest = None
        if append.sha256 is not None:
            digest = FileDigest(append.sha256.digest(), crc32=append.crc32)
        try:
            if verify is not None:
                if digest is None:
                    raise InvalidInput("the upload's SHA-256 is not known here; it cannot be verified")
                verify(digest)
            before = await self.current(upload.path)
            check(before)
            pinned = "if-match" in upload.metadata or "if-none-match" in upload.metadata
            if not state.parts and not append.sent:
                await self._put_whole(append, before, pinned, digest)
                if state.multipart is not None:  # begun by an append whose bytes were discarded
                    await self.multipart.abort(upload.path, state.multipart)
                    state.multipart = None
            else:
                await self._complete_parts(append, before, pinned)
            stat = await self.bucket.stat(upload.path)
        except BaseException:
            append.released = True  # the state goes: nothing to let go of
            await asyncio.shield(self._end(state, "aborted"))
            raise
        if digest is not None:
            stat = replace(stat, sha256=digest.sha256, crc32=digest.crc32)
        entry = await self.async_index.write(index_written, self.index, stat, before is None)
        append.released = True
        await self._forget(state)
        metrics.RESUMABLE_UPLOADS.labels("completed").inc()
        return before is None, entry

    async def _put_whole(
        self, append: ObjectAppend, before: Stat | None, pinned: bool, digest: FileDigest | None
    ) -> None:
        """A body of one part: one conditional PUT, decided by the store."""
        attributes = self._attributes(append.upload)
        if digest is not None:
            attributes["sha256"] = digest.sha256.hex()
        attributes["crc32"] = f"{append.crc32:08x}"
        mode: Any = "overwrite"
        if pinned:
            mode = {"e_tag": before.etag} if before is not None and before.etag else "create"
        with _answers():
            await obstore.put_async(
                self.bucket.store(),
                append.upload.path,
                bytes(append.buffer),
                mode=mode,
                attributes=attributes,
            )

    async def _complete_parts(self, append: ObjectAppend, before: Stat | None, pinned: bool) -> None:
        if append.buffer:
            await self._send_part(append, len(append.buffer))
        state = append.kept
        parts = [*state.parts, *append.sent]
        if pinned:  # again, just before completion (as a multipart PUT does)
            now = await self.bucket.head(append.upload.path)
            if (None if now is None else now.etag) != (None if before is None else before.etag):
                raise Changed()
        assert state.multipart is not None
        await self.multipart.complete(append.upload.path, state.multipart, parts)
        state.multipart = None  # completed: nothing to abort

    async def terminate(self, upload: Resumable) -> None:
        """End an upload (409 while another request appends): its parts aborted, its state and
        tail deleted."""
        append = await self.append(upload)
        append.released = True
        await self._end(append.kept, "aborted")

    async def _end(self, state: UploadState, how: str) -> None:
        if state.multipart is not None:
            await self.multipart.abort(state.upload.path, state.multipart)
        await self._forget(state)
        metrics.RESUMABLE_UPLOADS.labels(how).inc()

    async def _forget(self, state: UploadState) -> None:
        """Delete the upload's tail (and any tail an append stored but could not record), then
        its state."""
        with _answers():
            async for batch in obstore.list(self.bucket.store(), _folder(state) + "/", chunk_size=100):
                for meta in batch:
                    if meta["path"] != state.upload.temp:
                        await self._delete(meta["path"])
        await self._delete(state.upload.temp)


def _folder(state: UploadState) -> str:
    """The upload's own folder of keys (its state, its tails)."""
    return state.upload.temp.rpartition("/")[0]


def _saved(sha: RunningSha256) -> str:
    return base64.b64encode(sha.saved()).decode()
