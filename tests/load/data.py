"""The served tree: random-byte files with known digests (whole, per range, per range set),
directories with many entries for listings, and names for searches.

Every expected digest is computed from the bytes written, before the server starts.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MIB = 1024**2
FULL_SIZES = (64 * KIB, 256 * KIB, 1 * MIB, 4 * MIB, 16 * MIB, 64 * MIB)
QUICK_SIZES = (64 * KIB, 256 * KIB, 1 * MIB, 4 * MIB)
SPANS_PER_FILE = 48
SETS_PER_FILE = 16
MAX_SPAN = 8 * MIB
MAX_SET_PART = 256 * KIB  # a multipart body is read whole: keep it small
SEARCH_WORDS = ("alpha", "bravo", "charlie", "delta", "echo")
BLOBS = "blobs"
MANY = "many"


@dataclass(frozen=True)
class Span:
    """A byte range [start, stop) of a file, the Range spec that asks for it, and its digest."""

    spec: str  # "a-b", "a-" or "-n"
    start: int
    stop: int
    sha256: str

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


@dataclass(frozen=True)
class SpanSet:
    """Two to four disjoint, non-adjacent spans: a multipart/byteranges request."""

    spans: tuple[Span, ...]

    def header(self, rng: random.Random) -> str:
        specs = [span.spec for span in self.spans]
        rng.shuffle(specs)  # Ferry sorts them; the parts are matched by Content-Range
        return "bytes=" + ",".join(specs)


@dataclass(frozen=True)
class DataFile:
    name: str
    size: int
    sha256: str
    spans: tuple[Span, ...]
    sets: tuple[SpanSet, ...]

    @property
    def target(self) -> str:
        return f"/files/{BLOBS}/{self.name}"


@dataclass(frozen=True)
class Directory:
    path: str  # below ROOT, '/'-separated
    entries: int


@dataclass(frozen=True)
class SearchTerm:
    query: str
    matches: int  # names under ROOT containing it, ignoring case


@dataclass(frozen=True)
class DataTree:
    root: Path
    files: tuple[DataFile, ...]
    directories: tuple[Directory, ...]
    searches: tuple[SearchTerm, ...]

    def file_named(self, name: str) -> DataFile:
        return next(f for f in self.files if f.name == name)


def size_name(size: int) -> str:
    return f"{size // MIB}MiB" if size >= MIB else f"{size // KIB}KiB"


def _digest(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _span(data: memoryview, start: int, stop: int, spec: str) -> Span:
    return Span(spec, start, stop, _digest(data[start:stop]))


def random_span(data: memoryview, rng: random.Random) -> Span:
    """An explicit, open-ended or suffix range of up to MAX_SPAN bytes."""
    size = len(data)
    length = min(size, max(1, int(rng.lognormvariate(10.5, 2.0))), MAX_SPAN)
    shape = rng.random()
    if shape < 0.15:
        return _span(data, size - length, size, f"-{length}")
    if shape < 0.3:
        return _span(data, size - length, size, f"{size - length}-")
    start = rng.randrange(0, size - length + 1)
    if rng.random() < 0.5:
        start -= start % 4096
    return _span(data, start, start + length, f"{start}-{start + length - 1}")


def random_span_set(data: memoryview, rng: random.Random) -> SpanSet:
    """2–4 sorted spans with gaps between them (touching ranges would be coalesced)."""
    count = rng.randint(2, 4)
    slot = len(data) // count
    spans = []
    for i in range(count):
        length = rng.randint(1, max(1, min(MAX_SET_PART, slot // 2)))
        start = i * slot + rng.randrange(0, slot - length)
        spans.append(_span(data, start, start + length, f"{start}-{start + length - 1}"))
    return SpanSet(tuple(spans))


def write_file(path: Path, size: int, rng: random.Random) -> DataFile:
    data = memoryview(os.urandom(size))
    path.write_bytes(data)
    spans = tuple(random_span(data, rng) for _ in range(SPANS_PER_FILE))
    sets = tuple(random_span_set(data, rng) for _ in range(SETS_PER_FILE))
    return DataFile(path.name, size, _digest(data), spans, sets)


def entry_name(i: int) -> str:
    return f"{SEARCH_WORDS[i % len(SEARCH_WORDS)]}-{i:05d}.txt"


def write_directory(path: Path, entries: int) -> None:
    path.mkdir(parents=True)
    for i in range(entries):
        (path / entry_name(i)).write_bytes(b"")


def count_matches(root: Path, query: str) -> int:
    folded = query.casefold()
    return sum(folded in name.casefold() for _, dirs, files in os.walk(root) for name in dirs + files)


def create_tree(root: Path, sizes: tuple[int, ...], *, directories: int, entries: int, seed: int) -> DataTree:
    rng = random.Random(seed)
    (root / BLOBS).mkdir(parents=True)
    files = tuple(write_file(root / BLOBS / f"blob-{size_name(size)}.bin", size, rng) for size in sizes)
    dirs = tuple(Directory(f"{MANY}/d{i}", entries) for i in range(directories))
    for directory in dirs:
        write_directory(root / directory.path, directory.entries)
    queries = [*SEARCH_WORDS, "ALPHA", "Charl", "o-0001", "blob-", "no-such-name"]
    searches = tuple(SearchTerm(q, count_matches(root, q)) for q in queries)
    return DataTree(root, files, dirs, searches)
