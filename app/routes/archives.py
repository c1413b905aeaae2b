"""`GET/HEAD /files/{dir}/?archive=zip|tar`: a folder (or a selection in it) as one archive.

The archive is every servable file below the folder as the index lists it (hidden names and
symlinks to files by the same rules as downloads; nothing below a symlinked folder), in the
index's (folder, name) order, each path inside
the archive under the folder's name; `&select=NAME` (repeated) keeps only those files and
folders of the folder, under their own names. Its layout (app/archives/) is known before a byte
is read, so the answer has an exact Content-Length, a strong ETag made from the manifest (every
path, size, mtime and file identity: a changed tree is a new ETag), Last-Modified of its newest
file, and Range/If-Range exactly as a file download, sent by app/transfer/archive.py.

A ZIP needs each file's CRC-32. The background hasher stores them beside the SHA-256s; until it
has reached every file, the ZIP is sent whole (Range ignored, `Accept-Ranges: none`) and the
missing CRC-32s are computed from the bytes as they go out. Its bytes are the same either way,
so its ETag is too. A tar needs no CRC and always takes ranges.

Memory: the manifest is kept compact while the response lives (the paths inside the archive, and
four integers per file); it is bounded by FERRY_ARCHIVE_MAX_FILES.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp

from app import metrics
from app.archives.layout import Layout, Member
from app.archives.tar import TarLayout
from app.archives.zip import ZipLayout
from app.errors import BadRequest, Forbidden, NotFound
from app.http.conditional import Validators
from app.http.headers import content_disposition
from app.http.plan import FileFacts, ResponsePlan
from app.request import FileRequest
from app.services import Services
from app.storage.digest_store import ArchiveRow
from app.storage.errors import StorageError
from app.storage.paths import FolderOpener, LinkScope, resolve_to_open
from app.storage.values import entry_from_stat, identity, join
from app.transfer.archive import ArchiveSender, FileChanged, MemberOpener
from app.transfer.download import TransferOptions
from app.transfer.slots import DownloadSlots

FORMAT_VERSION = b"ferry-archive/1"  # part of every ETag: a change in the bytes Ferry builds
PAGE = 1000  # files per index query
TYPES = {"zip": "application/zip", "tar": "application/x-tar"}


class Manifest:
    """The files of one archive, compactly: their paths inside it, identities and CRC-32s."""

    def __init__(self, directory: str, prefix: str) -> None:
        self.directory = directory  # the folder (below ROOT) the archive is of
        self.prefix = prefix  # what every path inside the archive starts with
        self.members: list[Member] = []
        self.identities = array("q")  # dev, ino, size, mtime_ns per member
        self.total = 0
        self.newest = 0
        self._tag = hashlib.sha256(FORMAT_VERSION)

    def add(self, path: str, row: ArchiveRow) -> None:
        """File `path` (below ROOT) with its index row."""
        _, _, size, mtime_ns, dev, ino, crc32 = row
        inside = self.prefix + path[len(self.directory) + 1 if self.directory else 0 :]
        mtime = mtime_ns // 1_000_000_000
        self.members.append(Member(inside, size, mtime, crc32))
        self.identities.extend((dev, ino, size, mtime_ns))
        self.total += size
        self.newest = max(self.newest, mtime)
        self._tag.update(b"%s\0%d %d %d %d\n" % (inside.encode(), dev, ino, size, mtime_ns))

    def source(self, index: int) -> str:
        """Member `index`'s path below ROOT."""
        return join(self.directory, self.members[index].path[len(self.prefix) :])

    def identity(self, index: int) -> tuple[int, int, int, int]:
        a, b, c, d = self.identities[4 * index : 4 * index + 4]
        return a, b, c, d

    def etag(self, kind: str) -> str:
        tag = self._tag.copy()
        tag.update(kind.encode())
        return f'"{kind}-{tag.hexdigest()[:40]}"'


class Archives:
    """Answers `?archive=` on a folder: checks, manifest, layout, plan, sender."""

    on_disk = True  # members are files below ROOT (BucketArchives: objects of a bucket)

    def __init__(self, services: Services, slots: DownloadSlots, options: TransferOptions) -> None:
        self.services = services
        self.slots = slots
        self.options = options
        storage = services.settings.storage
        if storage is None:
            self.root_name = services.settings.root.name or "files"
        else:
            self.root_name = storage.prefix.strip("/").rpartition("/")[2] or storage.bucket

    async def answer(
        self, request: FileRequest, directory: str, granted: LinkScope | None, *, one_folder: bool = False
    ) -> ASGIApp:
        """The archive; `one_folder`: the reader's link grants this folder's own files only."""
        settings = self.services.settings
        if not settings.archives:
            raise NotFound("folder archives are off (FERRY_ARCHIVES=false)")
        kind = request.query["archive"] or "zip"
        if kind not in TYPES:
            raise BadRequest("archive must be zip or tar")
        selected = sorted({value for name, value in request.params if name == "select"})
        for name in selected:
            if not name or "/" in name or name in (".", ".."):
                raise BadRequest(f"select names a file or folder of this folder: {name!r}")
        await self.services.async_index.refreshed(directory)
        keep = None if granted is None else granted.holds
        manifest = await run_in_threadpool(self._manifest, directory, selected, keep, one_folder)
        layout: Layout = ZipLayout(manifest.members) if kind == "zip" else TarLayout(manifest.members)
        complete = not isinstance(layout, ZipLayout) or layout.complete
        name = _archive_name(directory, self.root_name, selected)
        facts = FileFacts(
            size=layout.length,
            validators=Validators(etag=manifest.etag(kind), last_modified=manifest.newest),
            content_type=TYPES[kind],
            content_disposition=content_disposition("attachment", f"{name}.{kind}"),
            ranges=complete,
        )
        plan = request.plan(facts, max_ranges=settings.max_ranges)
        release = self.slots.hold(plan, request.method, request.client)
        if plan.body and request.method == "GET":
            metrics.ARCHIVES.labels(kind).inc()
        return self._sender(plan, layout, manifest, granted, kind, release)

    def _sender(
        self,
        plan: ResponsePlan,
        layout: Layout,
        manifest: Manifest,
        granted: LinkScope | None,
        kind: str,
        release: Callable[[], None] | None,
    ) -> ArchiveSender:
        opener = self._opener(manifest, granted)
        activity = self.services.activity
        return ArchiveSender(
            plan, layout, opener, self.options, kind=kind, on_close=release, activity=activity
        )

    def _manifest(
        self, directory: str, selected: list[str], keep: Callable[[str], bool] | None, one_folder: bool
    ) -> Manifest:
        """The archive's files from the index, within the limits (blocking: run in a thread)."""
        settings = self.services.settings
        prefix = "" if selected else (directory.rpartition("/")[2] or self.root_name) + "/"
        manifest = Manifest(directory, prefix)
        walked = _Walked(self.services.policy.root) if self.on_disk else None
        for row in self._rows(directory, selected):
            path = join(row[0], row[1])
            if one_folder and row[0] != directory:
                # As for ?checksums=all: the folders below are not the one folder it covers.
                raise Forbidden(
                    "this link covers one folder, not the folders below it; ask for a folder link"
                )
            if walked is not None and not walked(row[0]):
                continue  # below a symlinked folder (a bucket has no symlinks)
            if keep is not None and not keep(path):
                continue
            manifest.add(path, row)
            if len(manifest.members) > settings.archive_max_files:
                raise Forbidden(
                    f"more than {settings.archive_max_files:,} files (FERRY_ARCHIVE_MAX_FILES): "
                    "download a subfolder"
                )
            if settings.archive_max_size and manifest.total > settings.archive_max_size:
                raise Forbidden(
                    f"more than {settings.archive_max_size:,} bytes (FERRY_ARCHIVE_MAX_SIZE): "
                    "download a subfolder"
                )
        return manifest

    def _rows(self, directory: str, selected: list[str]) -> Iterator[ArchiveRow]:
        index = self.services.index
        if not selected:
            yield from self._subtree(directory)
            return
        for name in selected:
            path = join(directory, name)
            entry = index.get(path)
            if entry is None:
                raise NotFound(f"{name!r} is not in this folder")
            if entry.is_dir:
                yield from self._subtree(path)
            else:
                yield (directory, name, entry.size, entry.mtime_ns, entry.dev, entry.ino, entry.crc32)

    def _subtree(self, directory: str) -> Iterator[ArchiveRow]:
        index, after = self.services.index, ("", "")
        while page := index.archive_rows(directory, limit=PAGE, after=after):
            yield from page
            after = (page[-1][0], page[-1][1])

    def _opener(self, manifest: Manifest, granted: LinkScope | None) -> MemberOpener:
        services = self.services
        folders = FolderOpener(services.policy)

        def open_member(index: int) -> tuple[int, os.stat_result]:
            path = manifest.source(index)
            try:
                fd, st = folders.open(path)
            except (OSError, StorageError) as exc:
                services.async_index.enqueue(services.index.forget, path)
                raise FileChanged(f"{path} is gone") from exc
            if identity(st) != manifest.identity(index) or (
                granted and not granted.holds_open(fd, resolve_to_open(path, services.policy))
            ):
                os.close(fd)
                services.async_index.enqueue(services.index.put, entry_from_stat(path, st))
                raise FileChanged(f"{path} changed")
            return fd, st

        return MemberOpener(open_member, folders.close)


class _Walked:
    """Whether an indexed file lies in a real folder of ROOT, not below a symlinked one: the index
    holds the files of a symlinked folder only once someone has listed it there, and an archive
    must not depend on that (nor walk into loops). Each folder is resolved once per archive."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = Path(os.path.realpath(root))
        self._known: dict[str, bool] = {"": True}

    def __call__(self, parent: str) -> bool:
        """Whether folder `parent` (below ROOT) is a real one."""
        known = self._known.get(parent)
        if known is None:
            real = os.path.realpath(self.root / parent)
            known = self._known[parent] = real == str(self.real_root / parent)
        return known


def _archive_name(directory: str, root_name: str, selected: list[str]) -> str:
    """The saved file's name without extension: the folder's (the storage's for its root)."""
    name = directory.rpartition("/")[2] or root_name or "files"
    if len(selected) == 1:
        return selected[0]
    return name
