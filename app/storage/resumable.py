"""Resumable uploads: one core under every protocol that continues an upload (tus 1.0 today).
Knows nothing about HTTP.

An upload is a row of the index's `resumable` table (upload_store.py) and a temporary file beside
its target (a TEMP_PREFIX name: never served, listed or searched). Bytes are appended by one
request at a time: `append` takes an exclusive flock on the file, so a second append, in this
process or another worker, is refused (InTheWay, 409) and one left by a process that died is not in
the way (the kernel drops its lock). An append writes, then `record` fsyncs (with FERRY_FSYNC) and
only then records the new offset with the SHA-256 and CRC-32 of the bytes below it: after a crash
the offset is the last recorded one, and the bytes past it, never acknowledged, are cut off by the
next append.

The SHA-256 is recorded as OpenSSL's running state (running_sha256.py), so whichever process
continues an upload, after any restart, continues the hash from the record: no byte is read back
or hashed twice, and the stored file's digest is known at completion. (Where that library is
missing the file is hashed once at completion.) Completion publishes like a PUT
(writes.AtomicWrite.commit): fsync, the creation's preconditions re-checked under the directory
lock, rename, index updated with the digest. Nothing is at the target before that.

The index is a cache: a schema change or a rebuild forgets the uploads in progress (they start
over) and their temporary files are swept as any abandoned upload's are.

Long because: an upload's whole life (create, append, record, complete, terminate, expire) is kept
together, since each step relies on what the others record.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from app import metrics
from app.storage.appending import Append, ChecksumMismatch, Hashes, TooManyUploads, busy
from app.storage.async_index import AsyncIndex
from app.storage.digests import hash_open_file
from app.storage.errors import InTheWay, InvalidInput, NameTooLong, NoSpace, NotServable, StorageError
from app.storage.index import Index
from app.storage.paths import TEMP_PREFIX, PathPolicy, WriteTarget, open_write_target
from app.storage.upload_store import Resumable
from app.storage.values import Entry, FileDigest, entry_from_stat, identity
from app.storage.writes import AtomicWrite, Check, current, remove_stale, too_long

__all__ = ["Append", "ChecksumMismatch", "TooManyUploads"]
CHECKPOINT_BYTES = 64 * 1024**2  # a long append records its offset at least this often
_REMEMBERED = 256  # uploads this process appended to (for the resumed-bytes metric)


def wall_clock() -> float:
    """The time uploads expire by (read through the module at each use, so tests can move it)."""
    return time.time()


def owner_of(token: bytes) -> str:
    """Who an upload belongs to: the SHA-256 of the bearer token that created it."""
    return hashlib.sha256(token).hexdigest()


def _make_temp(target: WriteTarget) -> str:
    name = f"{TEMP_PREFIX}{secrets.token_hex(8)}.part"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    os.close(os.open(name, flags, 0o644, dir_fd=target.dir_fd))
    parent = target.path.rpartition("/")[0]
    return f"{parent}/{name}" if parent else name


class ResumableUploads:
    """Create, continue, complete and terminate resumable uploads below one ROOT."""

    def __init__(
        self,
        index: Index,
        async_index: AsyncIndex,
        policy: PathPolicy,
        *,
        fsync: bool,
        expiry: float,
        max_per_owner: int = 100,
        max_total: int = 1000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.index = index
        self.async_index = async_index
        self.policy = policy
        self.fsync = fsync
        self.expiry = expiry
        self.max_per_owner = max_per_owner
        self.max_total = max_total
        self.clock = clock if clock is not None else lambda: wall_clock()
        self._appended: OrderedDict[str, None] = OrderedDict()

    # -- creation and lookup -------------------------------------------------------------------

    async def create(
        self, path: str, length: int | None, owner: str, metadata: dict[str, str], check: Check, max_size: int
    ) -> Resumable:
        """A new upload of `length` bytes (None: declared later) to `path`, its file made beside
        the target; refused now if `check` (the preconditions) already fails."""
        mine, total = await self.async_index.read(self.index.count_resumable, owner)
        if mine >= self.max_per_owner or total >= self.max_total:
            raise TooManyUploads()
        reason = too_long(self.policy.root, path)
        if reason is not None:
            raise NameTooLong(reason)
        target_path, temp, created = await asyncio.to_thread(self._prepare, path, length, check)
        now = int(self.clock())
        upload = Resumable(
            id=secrets.token_urlsafe(18),
            path=target_path,
            temp=temp,
            length=length,
            offset=0,
            sha256=Hashes.start().saved(),
            crc32=0,
            created=now,
            expires=now + int(self.expiry),
            owner=owner,
            metadata=metadata,
        )
        await self.async_index.write(self._added, upload, created)
        self._remember(upload.id)
        metrics.RESUMABLE_UPLOADS.labels("started").inc()
        return upload

    def _prepare(self, path: str, length: int | None, check: Check) -> tuple[str, str, list[str]]:
        target = open_write_target(path, self.policy, create_parents=True)
        try:
            if not target.name:
                raise InvalidInput("an upload needs a file path")
            before = current(target)
            if before is not None and (stat.S_ISDIR(before.st_mode) or stat.S_ISLNK(before.st_mode)):
                raise InTheWay(f"something other than a file is in the way of {target.name!r}")
            check(before)
            if length is not None:
                space = os.fstatvfs(target.dir_fd)
                if space.f_bavail * space.f_frsize < length:
                    raise NoSpace("the disk cannot hold the upload's declared length")
            return target.path, _make_temp(target), target.created
        finally:
            target.close()

    def _added(self, upload: Resumable, created: list[str]) -> None:
        for directory in created:
            self.index.sync_path(directory)
        self.index.add_resumable(upload)

    async def find(self, upload_id: str, owner: str) -> Resumable:
        """The upload `owner` created, still open; NotServable for any other (unknown, another
        token's, expired: all alike, so nothing leaks about another token's uploads)."""
        upload = await self.async_index.read(self.index.resumable, upload_id)
        if upload is None or upload.owner != owner or upload.expires <= self.clock():
            raise NotServable()
        return upload

    # -- appending -----------------------------------------------------------------------------

    async def append(self, upload: Resumable) -> Append:
        """Take the upload for one request's append (InTheWay, 409, if another holds it); bytes past the
        recorded offset (from a crash mid-append) are cut off. Close with `release`."""
        append = await asyncio.to_thread(self._open, upload)
        if append.start and upload.id not in self._appended:
            metrics.RESUMED_BYTES.inc(append.start)  # received by another process (or before a restart)
        self._remember(upload.id)
        return append

    def _open(self, upload: Resumable) -> Append:
        target = open_write_target(upload.path, self.policy, create_parents=False)
        try:
            parent, _, name = upload.temp.rpartition("/")
            if parent != target.path.rpartition("/")[0]:
                raise NotServable()
            try:
                flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
                fd = os.open(name, flags, dir_fd=target.dir_fd)
            except FileNotFoundError:
                raise NotServable() from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise busy() from None
            try:
                return self._continue(upload, target, fd)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            target.close()
            raise

    def _continue(self, upload: Resumable, target: WriteTarget, fd: int) -> Append:
        fresh = self.index.resumable(upload.id)  # under the lock: what the last append recorded
        if fresh is None:
            raise NotServable()
        size = os.fstat(fd).st_size
        if size > fresh.offset:
            os.ftruncate(fd, fresh.offset)  # received past the recorded offset, never acknowledged
        elif size < fresh.offset:
            raise InvalidInput("the upload's stored bytes are shorter than recorded; start it again")
        hashes = Hashes.recorded(fresh)
        return Append(fresh, target, fd, hashes, fresh.offset, fresh.offset, writeback=self.fsync)

    async def write(self, append: Append, data: bytes | bytearray) -> None:
        """Append `data` at the upload's end (in a worker thread)."""
        await asyncio.to_thread(append.write, data)

    async def record(self, append: Append) -> Resumable:
        """Make what was appended durable (fsync), then record its offset and hashes."""
        if self.fsync and append.size != append.recorded:
            await asyncio.to_thread(os.fsync, append.fd)
        upload = replace(
            append.upload,
            offset=append.size,
            sha256=append.hashes.saved(),
            crc32=append.hashes.crc32,
            expires=int(self.clock() + self.expiry),
        )
        await self.async_index.write(self.index.record_resumable, upload)
        metrics.RESUMABLE_BYTES.inc(append.size - append.recorded)
        append.upload, append.recorded = upload, append.size
        return upload

    async def declare(self, append: Append, length: int) -> None:
        """Declare a deferred length (it may not be below what is stored)."""
        if append.upload.length is not None and append.upload.length != length:
            raise InvalidInput("the upload's length is already declared and cannot change")
        if length < append.size:
            raise InvalidInput("the declared length is below the bytes already stored")
        append.upload = replace(append.upload, length=length)
        await self.async_index.write(self.index.record_resumable, append.upload)

    def release(self, append: Append) -> None:
        """Close the descriptor (the lock goes with it); safe on the loop, and more than once."""
        append.discard()
        if append.fd >= 0:
            os.close(append.fd)
            append.fd = -1
        append.target.close()

    # -- the end -------------------------------------------------------------------------------

    async def complete(
        self, append: Append, check: Check, verify: Callable[[FileDigest], None] | None = None
    ) -> tuple[bool, Entry]:
        """Publish a fully appended upload at its target, as a PUT is published; returns (created,
        the new entry). A precondition that fails now, or a `verify` of the whole file's digest that
        raises (a client's Repr-Digest), ends the upload (its bytes are dropped)."""
        upload = append.upload
        digest = await asyncio.to_thread(self._digest, append)
        write = AtomicWrite(
            append.target,
            self.fsync,
            temp_name=upload.temp.rpartition("/")[2],
            temp_path=upload.temp,
            fd=append.fd,
        )
        append.fd = -1  # the write owns it now: commit closes it
        try:
            if verify is not None:
                verify(digest)
            created, st = await asyncio.to_thread(write.commit, check)
        except BaseException as exc:
            write.abort()
            self._forget(upload.id)
            metrics.RESUMABLE_UPLOADS.labels("aborted").inc()
            if not isinstance(exc, Exception):  # cancelled: no waiting now
                self.async_index.enqueue(self.index.drop_resumable, upload.id)
                raise
            try:  # gone before the answer: a HEAD right after it must not find the upload
                await self.async_index.write(self.index.drop_resumable, upload.id)
            except Exception:
                self.async_index.enqueue(self.index.drop_resumable, upload.id)
            raise
        entry = await self.async_index.write(self._published, append, st, created, digest)
        self._forget(upload.id)
        metrics.RESUMABLE_UPLOADS.labels("completed").inc()
        metrics.UPLOADS.labels("created" if created else "replaced").inc()
        metrics.UPLOAD_BYTES.inc(st.st_size)
        return created, entry

    def _digest(self, append: Append) -> FileDigest:
        """The stored file's digest: the running one, else (no OpenSSL state) the file hashed once."""
        known = append.hashes.result()
        if known is not None:
            return known
        builder = hash_open_file(append.fd, os.fstat(append.fd))
        if builder is None:
            raise InvalidInput("the upload changed while it was verified")
        return builder.result()

    def _published(self, append: Append, st: os.stat_result, created: bool, digest: FileDigest) -> Entry:
        path = append.target.path
        self.index.put_digest(identity(st), digest)  # before the entry: the hasher then skips it
        entry = replace(entry_from_stat(path, st), sha256=digest.sha256, crc32=digest.crc32)
        self.index.put(entry)
        self.index.drop_resumable(append.upload.id)
        return entry

    async def terminate(self, upload: Resumable) -> None:
        """End an upload: its file removed (409 while another request appends), its row dropped."""
        append = await self.append(upload)
        try:
            await asyncio.to_thread(os.ftruncate, append.fd, 0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(upload.temp.rpartition("/")[2], dir_fd=append.target.dir_fd)
        finally:
            append.recorded = append.size  # nothing to cut back: the file is gone
            self.release(append)
        await self.async_index.write(self.index.drop_resumable, upload.id)
        self._forget(upload.id)
        metrics.RESUMABLE_UPLOADS.labels("aborted").inc()

    def _remember(self, upload_id: str) -> None:
        self._appended[upload_id] = None
        self._appended.move_to_end(upload_id)
        while len(self._appended) > _REMEMBERED:
            self._appended.popitem(last=False)

    def _forget(self, upload_id: str) -> None:
        self._appended.pop(upload_id, None)


def expire_uploads(index: Index, now: float) -> int:
    """Remove the uploads past their expiry (file and row); how many. Blocking (the sweep's)."""
    removed = 0
    for upload in index.expired_resumable(now):
        parent, _, name = upload.temp.rpartition("/")
        try:
            directory = open_write_target(parent + "/" if parent else "", index.policy, create_parents=False)
        except (OSError, StorageError):
            directory = None  # its directory is gone too
        if directory is not None:
            try:
                remove_stale(directory.dir_fd, name)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
            finally:
                directory.close()
        index.drop_resumable(upload.id)
        metrics.RESUMABLE_UPLOADS.labels("expired").inc()
        removed += 1
    return removed
