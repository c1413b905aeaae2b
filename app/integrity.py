"""Digests for downloads: what is known, what may be hashed now, and the header fields they make.

One `Integrity` per app serves every download, `.meta4` and SHA256SUMS line of a file:

- the known SHA-256 comes from the index through a `DigestCache` (read off the event loop; a
  download never waits on a busy index for it);
- a GET asking for a digest not known yet (Want-Repr-Digest) has it hashed now on the on-demand
  pool, only within FERRY_HASH_ON_DEMAND_MAX (else it goes without); a HEAD never hashes;
- a `.meta4` or SHA256SUMS line needs the digest: hashed now within the bound, else 503;
- Repr-Digest, Digest and Link (mirrors, the `.meta4`) are formatted once per file version for the
  common request (a known digest, no extra algorithm, no signed link), not per request.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from app import metrics
from app.auth import LinkAccess
from app.errors import ServiceUnavailable
from app.http.digests import ALGORITHMS, parse_want_field, wanted_algorithm
from app.http.metalink import Mirror, link_field
from app.http.plan import integrity_headers
from app.request import PREFIX, FileRequest
from app.settings import Settings
from app.storage.async_index import AsyncIndex
from app.storage.index import Index
from app.storage.on_demand import DigestCache, HashBusy, OnDemandHasher
from app.storage.values import FileDigest, Identity, identity

Fields = tuple[tuple[str, str], ...]
_CACHED = 8192  # file versions whose header fields are kept


class Integrity:
    def __init__(
        self, settings: Settings, index: Index, async_index: AsyncIndex, on_demand: OnDemandHasher
    ) -> None:
        self.settings = settings
        self.on_demand = on_demand
        self.digests = DigestCache(lambda ident: async_index.read(index.digest, ident))
        self._fields: dict[tuple[Identity, str, bool], Fields] = {}

    async def fields(
        self, request: FileRequest, fd: int, st: os.stat_result, link: LinkAccess | None
    ) -> Fields:
        """Repr-Digest, Digest and Link for a download of the opened file at `request.path`."""
        ident = identity(st)
        digest = await self.digests.get(ident)  # None rather than wait on a busy index
        want = request.headers.get("want-repr-digest")
        algorithm = wanted_algorithm(parse_want_field(want)) if want is not None else None
        if algorithm is None:
            return self._format(request.path, ident, digest, {}, link)
        known = None if algorithm == "sha-256" else self.on_demand.known(ident, ALGORITHMS[algorithm])
        extra = {algorithm: known} if known is not None else {}
        missing = digest is None or (algorithm != "sha-256" and known is None)
        # A digest not known yet: only a GET waits for it, and only within the on-demand bound; a
        # HEAD never hashes (it answers with what is known).
        if missing and request.method == "GET" and st.st_size <= self.settings.hash_on_demand_max:
            found, extra = await self._hash(fd, st, algorithm)
            digest = found or digest
        return self._format(request.path, ident, digest, extra, link)

    def known_now(self, request: FileRequest, st: os.stat_result, link: LinkAccess | None) -> Fields | None:
        """`fields` when they are known without waiting (no index read, nothing to hash: no
        Want-Repr-Digest), else None."""
        if "want-repr-digest" in request.headers:
            return None
        ident = identity(st)
        known, digest = self.digests.peek(ident)
        return self._format(request.path, ident, digest, {}, link) if known else None

    def settled(self, st: os.stat_result) -> bool:
        """Whether what `known_now` answers for this file version is final: its digest is known
        (until then, the fields sent without it change once it is)."""
        return self.digests.peek(identity(st))[1] is not None

    async def required(self, fd: int, st: os.stat_result) -> FileDigest:
        """The file's digest, hashed now if unknown and small enough, else 503."""
        digest = await self.digests.get(identity(st), wait=True)  # needed: worth waiting for
        if digest is not None:
            return digest
        if st.st_size > self.settings.hash_on_demand_max:
            raise ServiceUnavailable(
                "this file's checksum is not computed yet; try again later", retry_after=60
            )
        try:
            hashed = await self.on_demand.hash(fd, st)
        except HashBusy:
            metrics.ON_DEMAND_HASH_SKIPPED.inc()
            raise ServiceUnavailable("other checksums are being computed; try again", retry_after=5) from None
        if hashed is None:
            raise ServiceUnavailable("the file is changing; try again")
        if hashed.settled:
            self.digests.remember(identity(st), hashed.digest)
        return hashed.digest

    async def _hash(
        self, fd: int, st: os.stat_result, algorithm: str
    ) -> tuple[FileDigest | None, dict[str, bytes]]:
        """A GET that wants a digest: hash the file on the on-demand pool if that does not mean
        waiting behind more than FERRY_HASH_ON_DEMAND_MAX of hashing; else go without it."""
        try:
            hashed = await self.on_demand.hash(fd, st, ALGORITHMS[algorithm])
        except HashBusy:
            metrics.ON_DEMAND_HASH_SKIPPED.inc()
            return None, {}
        if hashed is None:
            raise ServiceUnavailable("the file is changing; try again")
        if hashed.settled:
            self.digests.remember(identity(st), hashed.digest)
        return hashed.digest, {a: d for a, n in ALGORITHMS.items() if (d := hashed.extra.get(n)) is not None}

    def known_fields(
        self, path: str, ident: Identity, digest: FileDigest | None, link: LinkAccess | None
    ) -> Fields:
        """Repr-Digest, Digest and Link from what is known (nothing hashed now: an object in a
        bucket is hashed by the bucket keeper, not by a download)."""
        return self._format(path, ident, digest, {}, link)

    def _format(
        self,
        path: str,
        ident: Identity,
        digest: FileDigest | None,
        extra: dict[str, bytes],
        link: LinkAccess | None,
    ) -> Fields:
        plain = not extra and link is None
        key = (ident, path, digest is not None)
        if plain and (cached := self._fields.get(key)) is not None:
            return cached
        digests = {"sha-256": digest.sha256, **extra} if digest is not None else extra
        wants_link = digest is not None or self.settings.mirrors
        fields = integrity_headers(
            digests, self._links(path, digest is not None, link) if wants_link else None
        )
        if plain:
            if len(self._fields) >= _CACHED:
                self._fields.clear()
            self._fields[key] = fields
        return fields

    def _links(self, path: str, described: bool, link: LinkAccess | None) -> str:
        quoted = quote(path)
        mirrors = [Mirror(f"{base}/{quoted}", i) for i, base in enumerate(self.settings.mirrors, start=1)]
        # A signed link: the .meta4 is reached with the same signature.
        meta4 = PREFIX + quoted + "?meta4" + (f"&{link.query}" if link else "")
        return link_field(describedby=meta4 if described else None, duplicates=mirrors)
