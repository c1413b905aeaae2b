"""An S3-compatible bucket as Ferry's storage (the `Storage` protocol of backend.py), over obstore.

Names: a path becomes a key below the bucket's prefix through the path gate's pure rules
(`split_key`: no '.', '..', empty or control-character segments, no hidden names unless
SHOW_HIDDEN, never an upload's temporary name); a key that breaks them is neither listed, walked
nor served. "Folders" are key prefixes: a folder exists while a key lies below it.

Reads: a range is fetched in windows, one GET each with If-Match on the ETag the download started
from (so a download never mixes two versions: the store answers 412, Changed), `readahead`
windows requested while the consumer sends the current one. The first window is one CHUNK_SIZE
chunk, each next one twice as long, up to `window_chunks` chunks (4 MiB by default); a window is
handed out as chunk-long slices of the store client's own buffer, never copied. Memory per
download is at most readahead + 1 windows, a consumer that stops reading stops the GETs, and no
request outlives one window, so a slow client never trips the HTTP client's per-request timeout.
A download's stat and its first bytes can come from one GET (`stat_reading`): its metadata is
what a HEAD would have said.

What chose these (`make bench`'s S3 section, 1 GiB through Ferry against curl on a presigned URL,
interleaved, on a shared 2-core machine; README "Performance"): 1 MiB windows 4 ahead reached
0.18 GB/s (0.3-0.4 of direct); 4 MiB windows 0.37-0.40 GB/s, 8 MiB no better; read-ahead 2, 4 or
8 the same within noise; handing out the buffer instead of a `bytes` copy +15-25 %; one streaming
GET per 16-64 MiB window (obstore's stream, which copies every piece into a new `bytes` and
needs re-slicing into chunks) 0.30 GB/s, below plain 4 MiB windows. For random 64 KiB ranges the
store's requests decide: a HEAD then a GET ran at 0.54 of direct, the one GET at 1.0.

Writes: the body streams into a multipart upload of PART_SIZE parts, which obstore aborts when the
body fails (nothing partial is ever visible under the key). A body that fits in one part is one
conditional PUT (If-Match / If-None-Match evaluated by the store, race-free), its SHA-256 and
CRC-32 stored with it as attributes (`sha256`, `crc32`: 8 hex digits; a longer body's only when
the caller brought them: a multipart upload's attributes are sent before its first byte; Ferry's
index keeps them either way). A longer one checks the precondition before its first
part and again after its last, just before completion: a write racing in that window (one request
long) can still be overwritten, as without conditions.

Why obstore (Rust object_store), measured on a 2-core machine against `weed mini` (256 MiB object,
200 random 64 KiB ranges, one process each, three runs): full GET 614-1778 MiB/s vs aioboto3
581-1402 MiB/s (same order, noisy), 64 KiB ranged GET p50 1.0-1.4 ms vs 1.8-3.3 ms, peak RSS
42-52 MiB vs 67-68 MiB. Ranges decide it (download managers and players send them), and it brings
multipart uploads, conditional PUTs and paged listings without botocore and a second HTTP stack.

It is not fork-safe: the store is created on first use in the process that uses it (after
uvicorn forks its workers). Its Tokio runtime keeps running while the interpreter finalises, and a
connection task still busy then aborts the process (SIGABRT): 6 runs in 30 after 16 streaming GETs
left with their bodies half read, once in six plain benchmark runs. Two things avoid it: reads here
fetch whole windows (no body is ever abandoned half read; 0 in 20 runs without `aclose`), and
`aclose` drops the store and waits until none of its connections remains open: with it, 0 in 30
runs aborted even with half-read streaming GETs (tests/clients/test_s3_storage.py runs that
script twelve times).

Long because: one module per backend keeps its name rules, reads, writes and shutdown together.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import os
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore import exceptions as s3
from obstore.store import S3Store

from app.storage.backend import ByteStream, Stat, StatPage
from app.storage.digests import DigestBuilder
from app.storage.errors import Changed, InvalidInput, NotServable, Refused, StorageError, Unreachable
from app.storage.locations import AwsCredentials, S3Location
from app.storage.paths import TEMP_PREFIX, split_key
from app.storage.s3_http import Answer, OpenBody, Signer, Upstream, open_body, raise_for
from app.storage.s3_multipart import Multipart

if TYPE_CHECKING:
    from obstore import Bytes, GetOptions, PutMode

DEFAULT_REGION = "us-east-1"
# A prefix no servable key has (a temporary upload name): listing it is a cheap reachability probe.
_PROBE_PREFIX = TEMP_PREFIX + "probe/"
# How obstore reports a store's 416 (a range starting at or past the end, an empty object).
_RANGE_REFUSED = "status code: 416"
QUIESCE_DEADLINE = 10.0  # seconds `aclose` waits for the store's connections to close


@dataclass(frozen=True, slots=True)
class S3Config:
    location: S3Location
    endpoint: str | None = None
    region: str | None = None
    allow_http: bool = False
    show_hidden: bool = False
    chunk_size: int = 1024**2
    part_size: int = 8 * 1024**2
    window_chunks: int = 4  # the most chunks one GET fetches
    readahead: int = 2  # windows requested ahead of the one being sent
    timeout: str = "60s"
    retry_seconds: float = 20.0


@contextlib.contextmanager
def _answers() -> Iterator[None]:
    """The store's refusals as storage errors (app/errors.py makes them HTTP answers)."""
    try:
        yield
    except (s3.NotFoundError, FileNotFoundError, s3.InvalidPathError):
        raise NotServable() from None
    except (s3.PreconditionError, s3.AlreadyExistsError, s3.NotModifiedError):
        raise Changed() from None
    except (s3.PermissionDeniedError, s3.UnauthenticatedError, PermissionError):
        raise Refused("the storage refused Ferry's credentials") from None
    except s3.BaseError as exc:
        raise _unanswered(exc) from None


def _unanswered(exc: BaseException) -> Unreachable:
    """A store error obstore leaves generic, told apart by the store's answer in its message."""
    text = str(exc)
    code = re.search(r"<Code>([A-Za-z]+)</Code>", text)
    status = re.search(r"status code: (\d{3})", text)
    if code is not None and code[1] == "NoSuchBucket":
        return Refused("the bucket does not exist")
    if status is not None and status[1] in ("401", "403"):
        return Refused(f"the storage refused Ferry's credentials ({code[1] if code else status[1]})")
    if status is not None:
        return Unreachable(f"the storage answered {status[1]}" + (f" ({code[1]})" if code else ""))
    return Unreachable(f"the storage did not answer: {type(exc).__name__}")


def _ns(when: datetime) -> int:
    """Whole seconds: a HEAD's Last-Modified has no more, and a listing's must give the same
    identity (and ETag) as a download's stat, whichever store rounds how."""
    return int(when.timestamp()) * 1_000_000_000


class S3Storage:
    def __init__(self, config: S3Config, credentials: AwsCredentials) -> None:
        self.config = config
        self._credentials = credentials
        self._store: S3Store | None = None
        self._owner = 0  # the process the store was made in (see `store`)
        self._checked: tuple[float, Unreachable | None] | None = None  # `reachable`'s last answer
        self._upstream: Upstream | None = None  # Ferry's own GETs (a plain-HTTP endpoint only)
        self._signer: Signer | None = None

    # --- names -----------------------------------------------------------------------------------

    def key(self, path: str) -> str:
        """The key (below the prefix) of a path; refused as the path gate refuses the path."""
        return "/".join(split_key(path, show_hidden=self.config.show_hidden))

    def servable(self, key: str) -> bool:
        try:
            split_key(key, show_hidden=self.config.show_hidden)
        except StorageError:
            return False
        return True

    # --- the store -------------------------------------------------------------------------------

    def store(self) -> S3Store:
        """The store, made on first use. obstore's runtime does not survive a fork: a process forked
        after its parent used any store hangs on its first request, whatever store it makes, so
        that mistake fails at once here instead (uvicorn's workers must be forked before any use)."""
        if self._owner and self._owner != os.getpid():
            raise RuntimeError("this S3 storage was used before the process forked; make one per worker")
        if self._store is None:
            self._store, self._owner = self._new_store(), os.getpid()
        return self._store

    def upstream(self) -> tuple[Upstream, Signer] | None:
        """Ferry's own GET of presigned URLs (app/storage/s3_http.py), for a plain-HTTP endpoint;
        None where obstore reads (TLS)."""
        c = self.config
        if c.endpoint is None or not c.allow_http or urlsplit(c.endpoint).scheme != "http":
            return None
        if self._credentials.aws_access_key_id is None:
            return None  # nothing to sign with: obstore asks anonymously
        if self._upstream is None or self._signer is None:
            store = self.store()
            expires = timedelta(seconds=900)
            self._signer = Signer(lambda key: obstore.sign(store, "GET", key, expires))
            self._upstream = Upstream(c.endpoint, timeout=_seconds(c.timeout))
        return self._upstream, self._signer

    def multipart(self) -> Multipart:
        """The multipart-upload calls obstore does not expose (s3_multipart.py: resumable
        uploads), with this storage's bucket, prefix, endpoint, region and credentials."""
        c, creds = self.config, self._credentials
        region = c.region or creds.aws_region or DEFAULT_REGION
        return Multipart(c.location, creds, endpoint=c.endpoint, region=region)

    def _new_store(self) -> S3Store:
        c, creds = self.config, self._credentials
        options: dict[str, Any] = {}
        if creds.aws_access_key_id is not None and creds.aws_secret_access_key is not None:
            options["access_key_id"] = creds.aws_access_key_id.get_secret_value()
            options["secret_access_key"] = creds.aws_secret_access_key.get_secret_value()
        if creds.aws_session_token is not None:
            options["session_token"] = creds.aws_session_token.get_secret_value()
        if c.endpoint is not None:
            options["endpoint"] = c.endpoint
            options["virtual_hosted_style_request"] = False  # a local engine has no bucket DNS names
        return S3Store(
            c.location.bucket,
            prefix=c.location.prefix.rstrip("/") or None,
            region=c.region or creds.aws_region or DEFAULT_REGION,
            client_options={"allow_http": c.allow_http, "timeout": c.timeout, "connect_timeout": "10s"},
            # A request is retried on errors, not for minutes: an unreachable store is reported.
            retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=c.retry_seconds)},
            **options,
        )

    # --- reads -----------------------------------------------------------------------------------

    async def stat(self, path: str) -> Stat:
        key = self.key(path)
        if not key:
            return Stat("", True, 0, 0, None, "")
        found = await self.head(path)
        if found is not None:
            return found
        if await self._has_children(key):
            return Stat(key, True, 0, 0, None, "")
        raise NotServable()

    async def head(self, path: str) -> Stat | None:
        """The object at `path` (one HEAD), None if there is none: a folder is not looked for."""
        key = self.key(path)
        if not key:
            return None
        try:
            with _answers():
                got = await obstore.get_async(self.store(), key, options={"head": True})
        except NotServable:
            return None
        return self._stat(got.meta, got.attributes)

    async def stat_reading(self, path: str, start: int, stop: int) -> tuple[Stat, Bytes] | None:
        """The object at `path` and its bytes [start, stop) (fewer past its end), from one GET: a
        download's stat and its first bytes in one request instead of a HEAD and then a GET. None
        where that GET cannot tell (no such key, perhaps a folder; a range past the end, or an
        empty object): `stat` does. A store that does not answer is Unreachable at once."""
        key = self.key(path)
        if not key:
            raise NotServable()
        own = self.upstream()
        if own is not None:
            return await self._stat_reading(own, key, start, stop)
        try:
            with _answers():
                try:
                    got = await obstore.get_async(self.store(), key, options={"range": (start, stop)})
                except s3.BaseError as exc:
                    if _RANGE_REFUSED in str(exc):
                        return None
                    raise
                data = await got.bytes_async()
        except NotServable:
            return None
        return self._stat(got.meta, got.attributes), data

    async def _stat_reading(
        self, own: tuple[Upstream, Signer], key: str, start: int, stop: int
    ) -> tuple[Stat, Bytes] | None:
        upstream, signer = own
        answer = await upstream.get(signer.url(key), {"Range": f"bytes={start}-{stop - 1}"})
        if answer.status in (404, 416):
            return None
        raise_for(answer.status)
        data = answer.body if answer.status == 206 else answer.body[start:stop]  # a store ignoring Range
        return self._answer_stat(key, answer), data  # type: ignore[return-value]  # (a bytearray)

    def _answer_stat(self, key: str, answer: Answer) -> Stat:
        """The stat obstore's `_stat` makes of the same answer's headers."""
        etag = answer.header(b"etag")
        version = f"{etag}:{answer.header(b'x-amz-version-id') or ''}"
        digest = answer.header(b"x-amz-meta-sha256")
        sha256 = bytes.fromhex(digest) if digest else None
        crc32 = _crc32(answer.header(b"x-amz-meta-crc32"))
        return Stat(key, False, answer.size(), answer.mtime_ns(), etag, version, sha256, crc32)

    async def _has_children(self, key: str) -> bool:
        with _answers():
            async for batch in obstore.list(self.store(), key + "/", chunk_size=1):
                return bool(batch)
        return False

    def _stat(self, meta: Any, attributes: Any = None) -> Stat:
        """An object's stat from its metadata, and from its attributes (a GET's or HEAD's, not a
        listing's) the digest and CRC-32 Ferry's upload stored with it."""
        etag = meta.get("e_tag")
        version = f"{etag}:{meta.get('version') or ''}"
        digest = attributes.get("sha256") if attributes else None
        sha256 = bytes.fromhex(str(digest)) if digest else None
        crc32 = _crc32(attributes.get("crc32")) if attributes else None
        mtime_ns = _ns(meta["last_modified"])
        return Stat(meta["path"], False, meta["size"], mtime_ns, etag, version, sha256, crc32)

    async def open_range(self, path: str, start: int, end: int, *, if_match: str | None = None) -> ByteStream:
        key = self.key(path)
        if not key:
            raise NotServable()
        if if_match is None:
            current = await self.stat(path)
            if current.is_dir:
                raise NotServable()  # a folder (a prefix) has no bytes
            if_match = current.etag
        c = self.config
        return _Windows(self.store(), key, start, end, if_match, c.chunk_size, c.window_chunks, c.readahead)

    async def open_socket(self, path: str, start: int, end: int, *, if_match: str | None) -> OpenBody | None:
        """Bytes [start, end) of the version `if_match` as one GET whose body is left in its socket
        (for splicing to a client); None where Ferry's own GET is not used (TLS). The store's
        answer is the whole range or an error: Changed if the version is gone."""
        own = self.upstream()
        if own is None:
            return None
        upstream, signer = own
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if if_match:
            headers["If-Match"] = if_match
        opened = await open_body(upstream, signer.url(self.key(path)), headers)
        try:
            if opened.answer.status == 404:
                raise Changed("the file is gone")
            raise_for(opened.answer.status)
            if opened.answer.status != 206 or len(opened.answer.body) + opened.remaining != end - start:
                raise Changed("the store did not answer the range asked for")
        except BaseException:
            opened.close()
            raise
        return opened

    async def list_page(self, folder: str, *, cursor: str | None = None, limit: int = 1000) -> StatPage:
        """One page of `folder`'s children by name; NotServable for a folder that does not exist.
        The store lists a folder whole (object_store pages through it); the index, not this,
        serves listings of big folders."""
        base = self.key(folder)
        prefix = base + "/" if base else None
        with _answers():
            found = await obstore.list_with_delimiter_async(self.store(), prefix)
        if base and not found["objects"] and not found["common_prefixes"]:
            raise NotServable()  # no such folder (nor a file's children), as on a disk
        entries = [self._stat(meta) for meta in found["objects"] if self.servable(meta["path"])]
        entries += [Stat(p.rstrip("/"), True, 0, 0, None, "") for p in found["common_prefixes"]]
        entries = sorted((e for e in entries if self.servable(e.path)), key=lambda e: e.name)
        if cursor is not None:
            entries = [e for e in entries if e.name > cursor]
        page = entries[:limit]
        return StatPage(page, page[-1].name if len(entries) > limit else None)

    async def walk(self, top: str = "") -> AsyncIterator[Stat]:
        """Every servable object below `top`, and each folder (a prefix) once, before its first
        child. Keys come in lexical order, pages of 1000, without loading the bucket's listing."""
        base = self.key(top)
        seen: set[str] = set()
        with _answers():
            stream = obstore.list(self.store(), base + "/" if base else None, chunk_size=1000)
            async for batch in stream:
                for meta in batch:
                    if not self.servable(meta["path"]):
                        continue
                    parts = meta["path"].split("/")
                    for depth in range(1, len(parts)):
                        folder = "/".join(parts[:depth])
                        if folder not in seen and len(folder) > len(base):
                            seen.add(folder)
                            yield Stat(folder, True, 0, 0, None, "")
                    yield self._stat(meta)

    async def presign(self, path: str, expires: timedelta) -> str:
        """A URL that GETs the object at `path` without credentials until `expires` has passed."""
        key = self.key(path)
        if not key:
            raise NotServable()
        with _answers():
            return await obstore.sign_async(self.store(), "GET", key, expires)

    async def check(self) -> None:
        """Return when the bucket answers a listing with these credentials; Unreachable (naming
        refused credentials as such) otherwise."""
        with _answers():
            await obstore.list_with_delimiter_async(self.store(), _PROBE_PREFIX)

    async def reachable(self) -> None:
        """`check`, its answer kept for a second: /healthz polled by a load balancer every few
        hundred milliseconds costs the store at most one listing a second per process."""
        now = time.monotonic()
        if self._checked is None or now - self._checked[0] > 1.0:
            error: Unreachable | None = None
            try:
                await self.check()
            except Unreachable as exc:
                error = exc
            self._checked = (time.monotonic(), error)
        if self._checked[1] is not None:
            raise self._checked[1]

    # --- writes ----------------------------------------------------------------------------------

    async def write(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        sha256: bytes | None = None,
        crc32: int | None = None,
        content_type: str | None = None,
    ) -> Stat:
        key = self.key(path)
        if not key or key.rpartition("/")[2].startswith(TEMP_PREFIX):
            raise NotServable()
        attributes: dict[str, str] = {}
        if sha256 is not None:
            attributes["sha256"] = sha256.hex()
        if crc32 is not None:
            attributes["crc32"] = f"{crc32:08x}"
        if content_type:
            attributes["Content-Type"] = content_type
        mode: PutMode = {"e_tag": if_match} if if_match else "create" if if_none_match else "overwrite"
        body = _Body(chunks, sha256, crc32)
        head = await body.first(self.config.part_size)
        with _answers():
            if body.ended:  # one part: one conditional PUT, decided by the store itself
                body.verify()
                # Known before it is sent: kept with it.
                attributes["sha256"], attributes["crc32"] = body.digest().hex(), f"{body.crc32():08x}"
                await obstore.put_async(self.store(), key, head, mode=mode, attributes=attributes)
            else:
                await self._check(key, if_match, if_none_match)
                body.before_end = lambda: self._check(key, if_match, if_none_match)
                await obstore.put_async(
                    self.store(),
                    key,
                    body.rest(head),
                    attributes=attributes,
                    use_multipart=True,
                    chunk_size=self.config.part_size,
                    max_concurrency=2,
                )
        stat = await self.stat(path)
        return Stat(
            stat.path, False, stat.size, stat.mtime_ns, stat.etag, stat.version, body.digest(), body.crc32()
        )

    async def _check(self, key: str, if_match: str | None, if_none_match: bool) -> None:
        if not if_match and not if_none_match:
            return
        try:
            with _answers():
                current = (await obstore.head_async(self.store(), key)).get("e_tag")
        except NotServable:
            current = None
        if (if_none_match and current is not None) or (if_match and current != if_match):
            raise Changed()

    async def delete(self, path: str, *, if_match: str | None = None) -> None:
        key = self.key(path)
        if not key:
            raise NotServable()
        with _answers():
            current = await obstore.head_async(self.store(), key)
            if if_match is not None and current.get("e_tag") != if_match:
                raise Changed()
            await obstore.delete_async(self.store(), key)

    # --- shutdown --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Drop the store, then wait (bounded) until none of its connections remains open: the
        Tokio runtime must be idle before the interpreter finalises (see the module's docstring)."""
        had_store, self._store = self._store is not None, None
        if self._upstream is not None:
            self._upstream.close()
        # The signer holds the store too (it signs with it): dropped with it, or the store's
        # connections outlive this wait.
        self._upstream = self._signer = None
        if not had_store:
            return
        gc.collect()  # streams and stores abandoned by their readers hold connections too
        port = _endpoint_port(self.config)
        deadline = time.monotonic() + QUIESCE_DEADLINE
        while _open_connections(port) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


class _Windows:
    """A range read in windows, one GET each, `ahead` windows requested before they are sent (see
    the module's docstring), handed out chunk by chunk as views of the window's buffer (no copy).
    The first window is one chunk, each next one twice as long up to `chunks` chunks: a short
    read asks for no more than it sends. At most `ahead` + 1 windows of memory, whatever the range."""

    def __init__(
        self, store: S3Store, key: str, start: int, end: int, etag: str | None, chunk: int, chunks: int,
        ahead: int,
    ) -> None:  # fmt: skip
        self._store, self._key, self._etag = store, key, etag
        self._chunk, self._window, self._widest = chunk, chunk, chunk * max(1, chunks)
        self._next, self._end, self._depth = start, end, max(1, ahead)
        self._ahead: collections.deque[asyncio.Task[Bytes]] = collections.deque()

    def __aiter__(self) -> AsyncIterator[Bytes]:
        return self._chunks()

    def _fill(self) -> None:
        while len(self._ahead) < self._depth and self._next < self._end:
            start, stop = self._next, min(self._next + self._window, self._end)
            self._next, self._window = stop, min(2 * self._window, self._widest)
            options: GetOptions = {"range": (start, stop)}
            if self._etag:
                options["if_match"] = self._etag
            self._ahead.append(asyncio.ensure_future(self._get(start, stop, options)))

    async def _get(self, start: int, stop: int, options: GetOptions) -> Bytes:
        with _answers():
            got = await obstore.get_async(self._store, self._key, options=options)
            data = await got.bytes_async()  # the store client's buffer (slices of it are not copies)
        if len(data) != stop - start:
            raise Changed("the file is shorter than it was")
        return data

    async def _chunks(self) -> AsyncIterator[Bytes]:
        try:
            self._fill()
            while self._ahead:
                window = await self._ahead[0]
                self._ahead.popleft()
                self._fill()
                for at in range(0, len(window), self._chunk):
                    yield window[at : at + self._chunk]  # type: ignore[index]  # (obstore's stub wants a step)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        pending, self._ahead = list(self._ahead), collections.deque()
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task


class _Body:
    """An upload's body: its first part read ahead, the SHA-256 and CRC-32 computed on the way, the
    declared ones verified before the last part is sent (a mismatch aborts the upload)."""

    def __init__(self, chunks: AsyncIterable[bytes], expected: bytes | None, crc32: int | None) -> None:
        self._chunks = aiter(chunks)
        self._hash = DigestBuilder()
        self._expected = expected
        self._expected_crc32 = crc32
        self.ended = False
        self.before_end: Any = None

    async def first(self, size: int) -> bytes:
        head = bytearray()
        while len(head) < size:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self.ended = True
                break
            self._hash.update(chunk)
            head += chunk
        return bytes(head)

    def digest(self) -> bytes:
        return self._hash.digest()

    def crc32(self) -> int:
        return self._hash.crc32

    def verify(self) -> None:
        if self._expected is not None and self._hash.digest() != self._expected:
            raise InvalidInput("the body does not match its sha-256 digest; nothing was stored")
        if self._expected_crc32 is not None and self._hash.crc32 != self._expected_crc32:
            raise InvalidInput("the body does not match its CRC-32; nothing was stored")

    async def rest(self, head: bytes) -> AsyncIterator[bytes]:
        yield head
        async for chunk in self._chunks:
            self._hash.update(chunk)
            yield chunk
        self.verify()
        if self.before_end is not None:
            await self.before_end()


def _crc32(value: object) -> int | None:
    """A `crc32` attribute (8 hex digits) as a number; None when absent or not one (an attribute
    anyone with write access to the bucket could have set)."""
    text = str(value) if value else ""
    return int(text, 16) if re.fullmatch(r"[0-9a-fA-F]{8}", text) else None


def _seconds(text: str) -> float:
    """A duration as obstore's client options spell it ("60s", "500ms", "2m")."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text.strip())
    if match is None:
        return 60.0
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2]]


def _endpoint_port(config: S3Config) -> int:
    if config.endpoint is None:
        return 443
    parts = urlsplit(config.endpoint)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _open_connections(port: int) -> int:
    """How many of this process's TCP sockets are connected to `port` (Linux /proc; 0 elsewhere)."""
    mine: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:["):
                    mine.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[2].rpartition(":")[2], 16) == port and fields[9] in mine:
                    count += 1
    return count
