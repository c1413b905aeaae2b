"""Folder archives as Ferry lays them out (app/archives/), opened by the readers people use:
`unzip`, Python's `zipfile`, `bsdtar`, `7z` and GNU `tar`. Every reader lists and tests or
extracts them with the names, bytes and mtimes of the source; that holds for names with spaces,
unicode, `#`, `%` and quotes, for archives read from a pipe (as from curl), a ZIP past 4 GiB (ZIP64
sizes and offsets), an entry of exactly 4 GiB − 1 bytes, a ZIP of more than 65,535 entries (ZIP64
end records) and a tar member of 8 GiB (pax size).

The archives are written to disk from real files by tests/support/archives.py, sparse where the
files are: the big ones cost no disk. The readers are required: `make test` installs them when
missing (make tools), and a missing one fails here.
"""

from __future__ import annotations

import calendar
import os
import shutil
import struct
import subprocess
import sys
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.archives.layout import Layout, Member
from app.archives.tar import TarLayout
from app.archives.zip import ZipLayout
from tests.support.archives import members_of, write_archive

pytestmark = pytest.mark.clients

GiB = 1024**3
TOOL_TIMEOUT = 300  # the longest: unzip testing the 4 GiB member (CRC-32 at ~250 MB/s)
DOS_EPOCH = 315532800  # 1980-01-01T00:00:00Z, the first second a ZIP's DOS date holds

# Path inside the archive -> (bytes, mtime).
HOSTILE: dict[str, tuple[bytes, int]] = {
    "with space/a file name.txt": (b"spaces\n", 1_700_000_000),
    "unicode/résumé 数据 😀.txt": ("unicode ✓\n".encode(), 1_700_000_001),  # odd second
    "unicode/nfd-cafe\u0301.txt": (b"decomposed\n", 1_700_000_002),
    "hash#and%percent/100% #1 %20.txt": (b"#%\n", 1_600_000_000),
    'quotes/it\'s "quoted" `x`.txt': (b"'\"\n", 1_500_000_000),
    "deep/a/b/c/d/e/f/g/nested.bin": (bytes(range(256)) * 41, 1_400_000_000),
    "empty.txt": (b"", 1_300_000_000),
    "dates/dos-epoch.txt": (b"1980\n", DOS_EPOCH),
    "dates/before-dos.txt": (b"1979\n", DOS_EPOCH - 1),
    "dates/unix-epoch.txt": (b"1970\n", 0),
    "long/" + "x" * 120 + "/" + "y" * 150 + ".txt": (b"a path past ustar's fields\n", 1_700_000_000),
    "long/" + "p" * 140 + "/" + "n" * 96 + ".txt": (b"ustar's prefix and name\n", 1_700_000_000),
    "long/" + "e" * 91 + ".txt": (b"ustar's whole name field, no NUL\n", 1_700_000_000),
    "sizes/block-sized.bin": (b"\xff" * 512, 1_700_000_000),
    "sizes/block-and-one.bin": (b"\x01" * 513, 1_700_000_000),
    # ZIP signatures inside a file: a reader scanning a stream for them must not stop there.
    "tricky/signatures.bin": (b"PK\x07\x08 PK\x03\x04 PK\x01\x02 PK\x05\x06", 1_700_000_000),
    "tricky/descriptor.bin": (b"PK\x07\x08" + struct.pack("<III", zlib.crc32(b"hello"), 5, 5) + b"hello", 0),
}


ENV = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}  # whatever the machine's settings


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed; `make tools` installs unzip, bsdtar, 7z and tar"
    return path


def run(*args: str, cwd: Path | None = None, piped: Path | None = None) -> str:
    """A reader's output; it must succeed. `piped`: an archive it reads from a pipe, as from
    `curl … |` (not seekable: a ZIP's central directory comes last)."""
    program = sys.executable if args[0] == "python" else tool(args[0])
    done = subprocess.run(
        [program, *args[1:]],
        cwd=cwd,
        env=ENV,
        input=piped.read_bytes() if piped else b"",
        capture_output=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    output = done.stdout.decode("utf-8", "surrogateescape")
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{output}\n{done.stderr!r}"
    return output


def files_under(top: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `top`: relative path -> (bytes, mtime)."""
    found = {}
    for dirpath, _, names in os.walk(top):
        for name in names:
            path = Path(dirpath, name)
            found[path.relative_to(top).as_posix()] = (path.read_bytes(), int(path.stat().st_mtime))
    return found


@dataclass(frozen=True)
class Built:
    archive: Path
    layout: Layout


def build(kind: str, root: Path, paths: Sequence[str], sources: Sequence[Path], target: Path) -> Built:
    members = members_of(root, paths, crc32=kind == "zip")
    layout: Layout = ZipLayout(members) if kind == "zip" else TarLayout(members)
    write_archive(layout, sources, target)
    return Built(target, layout)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "tree"
    for rel, (data, mtime) in HOSTILE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
    paths = sorted(HOSTILE)
    sources = [root / p for p in paths]
    return {kind: build(kind, root, paths, sources, base / f"tree.{kind}") for kind in ("zip", "tar")}


# The readers: (list the names, test or extract into a folder) -------------------------------------


def dos_rounded(mtime: int) -> int:
    """What a reader that knows only the DOS date sees: UTC, even seconds, not before 1980."""
    return max(mtime, DOS_EPOCH) // 2 * 2


def extract_zipfile(archive: Path, out: Path) -> None:
    assert run("python", "-m", "zipfile", "-t", str(archive)).strip() == "Done testing"
    run("python", "-m", "zipfile", "-e", str(archive), str(out))
    # zipfile leaves mtimes alone: set them from the DOS dates it reads (UTC, as Ferry writes).
    with zipfile.ZipFile(archive) as opened:
        for info in opened.infolist():
            stamp = calendar.timegm((*info.date_time, 0, 0, 0))
            os.utime(out / info.filename, (stamp, stamp))


def extract_unzip(archive: Path, out: Path) -> None:
    assert "No errors detected in compressed data" in run("unzip", "-t", str(archive))
    run("unzip", "-q", str(archive), "-d", str(out))


def extract_7z(archive: Path, out: Path) -> None:
    assert "Everything is Ok" in run("7z", "t", str(archive))
    run("7z", "x", "-y", f"-o{out}", str(archive))


def extract_bsdtar(archive: Path, out: Path) -> None:
    run("bsdtar", "-xf", str(archive), "-C", str(out))


def extract_gnu_tar(archive: Path, out: Path) -> None:
    run("tar", "-xf", str(archive), "-C", str(out))


def extract_bsdtar_piped(archive: Path, out: Path) -> None:
    run("bsdtar", "-xf", "-", "-C", str(out), piped=archive)


def extract_gnu_tar_piped(archive: Path, out: Path) -> None:
    run("tar", "-xf", "-", "-C", str(out), piped=archive)


def names_piped(*command: str) -> Callable[[Path], list[str]]:
    return lambda archive: run(*command, "-", piped=archive).splitlines()


def names_zipfile(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as opened:
        return opened.namelist()


def entries_7z(archive: Path) -> dict[str, dict[str, str]]:
    """7z's technical listing: path -> its properties ("Size", "Modified", ...)."""
    entries: dict[str, dict[str, str]] = {}
    for record in run("7z", "l", "-ba", "-slt", str(archive)).split("\n\n"):
        fields = dict(line.split(" = ", 1) for line in record.splitlines() if " = " in line)
        if "Path" in fields:
            entries[fields["Path"]] = fields
    return entries


def names_7z(archive: Path) -> list[str]:
    return list(entries_7z(archive))


def names_lines(*command: str) -> Callable[[Path], list[str]]:
    return lambda archive: run(*command, str(archive)).splitlines()


@dataclass(frozen=True)
class Reader:
    names: Callable[[Path], list[str]]
    extract: Callable[[Path, Path], None]
    exact_mtimes: bool = True  # False: it sees only the DOS date (2-second steps, from 1980)
    nfc: bool = False  # True: it turns names to Unicode NFC (libarchive does, whatever the archive)

    def name(self, path: str) -> str:
        return unicodedata.normalize("NFC", path) if self.nfc else path


ZIP_READERS = {
    "unzip": Reader(names_lines("unzip", "-Z1"), extract_unzip),
    "zipfile": Reader(names_zipfile, extract_zipfile, exact_mtimes=False),
    "bsdtar": Reader(names_lines("bsdtar", "-tf"), extract_bsdtar, nfc=True),
    "bsdtar-piped": Reader(names_piped("bsdtar", "-tf"), extract_bsdtar_piped, nfc=True),
    "7z": Reader(names_7z, extract_7z),  # (7z reads no ZIP from a pipe, Ferry's or any other)
}
TAR_READERS = {
    "gnu-tar": Reader(names_lines("tar", "--quoting-style=literal", "-tf"), extract_gnu_tar),
    "gnu-tar-piped": Reader(names_piped("tar", "--quoting-style=literal", "-tf"), extract_gnu_tar_piped),
    "bsdtar": Reader(names_lines("bsdtar", "-tf"), extract_bsdtar, nfc=True),
    "bsdtar-piped": Reader(names_piped("bsdtar", "-tf"), extract_bsdtar_piped, nfc=True),
    "7z": Reader(names_7z, extract_7z),
}
READERS = [("zip", name, reader) for name, reader in ZIP_READERS.items()] + [
    ("tar", name, reader) for name, reader in TAR_READERS.items()
]


@pytest.mark.parametrize(
    ("kind", "reader"), [(k, r) for k, _, r in READERS], ids=[f"{k}-{n}" for k, n, _ in READERS]
)
def test_every_reader_lists_and_extracts_hostile_names_as_they_are(
    hostile: dict[str, Built], kind: str, reader: Reader, tmp_path: Path
) -> None:
    archive = hostile[kind].archive
    assert reader.names(archive) == [reader.name(p) for p in sorted(HOSTILE)]
    reader.extract(archive, tmp_path)
    expected = {
        reader.name(rel): (data, mtime if reader.exact_mtimes else dos_rounded(mtime))
        for rel, (data, mtime) in HOSTILE.items()
    }
    assert files_under(tmp_path) == expected


# Past 4 GiB (ZIP64) and 8 GiB (pax size): sparse members with a few bytes of data ---------------

BIG_ZIP_MEMBER = 4 * GiB + 1024**2  # past ZIP64's 4 GiB (unzip tests it at ~250 MB/s: not 5 GiB)
BIG_TAR_MEMBER = 8 * GiB + 5  # past the 8 GiB a ustar size field holds
BEFORE, BIG, AFTER = "1-before.txt", "2-big.bin", "3-after past 4 GiB.txt"


def sparse_file(path: Path, size: int) -> None:
    """A file of `size` zeros but for marks at its start, across 4 GiB (if it reaches past) and
    at its end."""
    with path.open("wb") as f:
        f.truncate(size)
        for at in (0, 4 * GiB - 3, size - 7):
            if at + 7 > size:
                continue
            f.seek(at)
            f.write(b"mark %02d" % (at % 97))


def build_big(kind: str, base: Path, size: int) -> Built:
    root = base / "tree"
    root.mkdir()
    (root / BEFORE).write_bytes(b"before\n")
    sparse_file(root / BIG, size)
    (root / AFTER).write_bytes(b"after the big one\n")
    paths = [BEFORE, BIG, AFTER]
    built = build(kind, root, paths, [root / p for p in paths], base / f"big.{kind}")
    assert built.archive.stat().st_size == built.layout.length > size
    assert built.archive.stat().st_blocks * 512 < 64 * 1024**2  # sparse: no disk for the zeros
    return built


@dataclass(frozen=True)
class BigZip(Built):
    unzip: subprocess.Popen[bytes]  # `unzip -t` of the whole archive, started beside the others
    unzip_output: Path


@pytest.fixture(scope="module")
def big_zip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigZip]:
    built = build_big("zip", tmp_path_factory.mktemp("bigzip"), BIG_ZIP_MEMBER)
    assert built.layout.starts[2] > 4 * GiB  # the member after the big one is past 4 GiB
    # unzip checks the 4 GiB member's CRC-32 at some 250 MB/s: it runs while the tests below read
    # the same archive with the other readers, and test_unzip_tests_a_zip_past_4_gib waits for it.
    output = built.archive.with_suffix(".unzip-t")
    with output.open("wb") as out:
        command = [tool("unzip"), "-t", str(built.archive)]
        unzip = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        yield BigZip(built.archive, built.layout, unzip, output)
    finally:
        if unzip.poll() is None:
            unzip.kill()
        unzip.wait()


@pytest.fixture(scope="module")
def big_tar(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_big("tar", tmp_path_factory.mktemp("bigtar"), BIG_TAR_MEMBER)


def streamed(*command: str) -> tuple[int, int]:
    """(length, CRC-32) of what a reader writes to stdout, read as it comes (nothing on disk)."""
    with subprocess.Popen([tool(command[0]), *command[1:]], stdout=subprocess.PIPE, env=ENV) as process:
        assert process.stdout is not None
        length, crc = 0, 0
        while block := process.stdout.read(1024**2):
            length, crc = length + len(block), zlib.crc32(block, crc)
        assert process.wait(timeout=TOOL_TIMEOUT) == 0, command
    return length, crc


def big_member(built: Built) -> Member:
    return built.layout.members[1]


def test_python_zipfile_reads_a_zip_past_4_gib(big_zip: BigZip) -> None:
    with zipfile.ZipFile(big_zip.archive) as opened:
        infos = opened.infolist()
        assert [(i.filename, i.file_size) for i in infos] == [(BEFORE, 7), (BIG, BIG_ZIP_MEMBER), (AFTER, 18)]
        assert infos[2].header_offset > 4 * GiB
        assert opened.read(AFTER) == b"after the big one\n"
        with opened.open(BIG) as member:  # its local header (the 4 GiB: by unzip, 7z and bsdtar)
            assert member.read(7) == b"mark 00"


def test_7z_tests_a_zip_past_4_gib(big_zip: BigZip) -> None:
    archive = str(big_zip.archive)
    assert [e["Size"] for e in entries_7z(big_zip.archive).values()] == ["7", str(BIG_ZIP_MEMBER), "18"]
    assert run("7z", "x", "-so", archive, AFTER) == "after the big one\n"
    tested = run("7z", "t", archive)
    assert "Everything is Ok" in tested and "Files: 3" in tested


def test_bsdtar_streams_a_zip_member_past_4_gib(big_zip: BigZip) -> None:
    archive = str(big_zip.archive)
    assert run("bsdtar", "-tf", archive).splitlines() == [BEFORE, BIG, AFTER]
    member = big_member(big_zip)
    assert streamed("bsdtar", "-xOf", archive, BIG) == (member.size, member.crc32)
    assert run("bsdtar", "-xOf", archive, AFTER) == "after the big one\n"


def test_tar_readers_read_a_member_past_8_gib(big_tar: Built) -> None:
    archive = str(big_tar.archive)
    gnu = run("tar", "--quoting-style=literal", "-tvf", archive).splitlines()
    assert [line.split()[2] for line in gnu] == ["7", str(BIG_TAR_MEMBER), "18"], gnu  # mode owner size
    bsd = run("bsdtar", "-tvf", archive).splitlines()
    assert [line.split()[4] for line in bsd] == ["7", str(BIG_TAR_MEMBER), "18"], bsd  # mode links u g size
    assert [e["Size"] for e in entries_7z(big_tar.archive).values()] == ["7", str(BIG_TAR_MEMBER), "18"]
    # The member after the big one is where its size says: each reader skips 8 GiB to reach it.
    for command in (("tar", "-xOf"), ("bsdtar", "-xOf"), ("7z", "x", "-so")):
        assert run(*command, archive, AFTER) == "after the big one\n", command


# More than 65,535 entries (ZIP64 end records) -------------------------------------------------

MANY = 70_000
SEEDS = [b"", b"a", b"bc", b"\0\0\0", "é😀".encode(), b"%#'\" ", bytes(range(7))]


def many_name(i: int) -> str:
    return f"d{i // 1000:02}/f{i:05} #%.txt"


@pytest.fixture(scope="module")
def many_zip(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """70,000 tiny entries, their bytes from a few real files (one file per distinct content)."""
    base = tmp_path_factory.mktemp("many")
    sources = []
    for i, seed in enumerate(SEEDS):
        sources.append(base / f"seed{i}")
        sources[-1].write_bytes(seed)
        os.utime(sources[-1], (1_700_000_000, 1_700_000_000))
    kinds = members_of(base, [s.name for s in sources])
    members = [
        Member(many_name(i), kinds[i % 7].size, kinds[i % 7].mtime, kinds[i % 7].crc32) for i in range(MANY)
    ]
    layout = ZipLayout(members)
    write_archive(layout, [sources[i % 7] for i in range(MANY)], base / "many.zip")
    return Built(base / "many.zip", layout)


def test_every_zip_reader_reads_more_than_65535_entries(many_zip: Built, tmp_path: Path) -> None:
    archive = str(many_zip.archive)
    expected = [many_name(i) for i in range(MANY)]
    assert "No errors detected in compressed data" in run("unzip", "-tq", archive)
    assert run("unzip", "-Z1", archive).splitlines() == expected
    assert run("python", "-m", "zipfile", "-t", archive).strip() == "Done testing"
    with zipfile.ZipFile(archive) as opened:
        assert opened.namelist() == expected
        assert [opened.read(expected[i]) for i in (0, 65_535, MANY - 1)] == [
            SEEDS[0],
            SEEDS[65_535 % 7],
            SEEDS[6],
        ]
    assert run("bsdtar", "-tf", archive).splitlines() == expected
    tested = run("7z", "t", archive)
    assert "Everything is Ok" in tested and f"Files: {MANY}\n" in tested
    assert names_7z(many_zip.archive) == expected
    # The last entries, past the 65,535th, extract with their bytes.
    run("bsdtar", "-xf", archive, "-C", str(tmp_path), expected[-1])
    run("7z", "x", f"-o{tmp_path / '7z'}", archive, expected[-2])
    assert (tmp_path / expected[-1]).read_bytes() == SEEDS[(MANY - 1) % 7]
    assert (tmp_path / "7z" / expected[-2]).read_bytes() == SEEDS[(MANY - 2) % 7]


def test_every_zip_reader_reads_the_entries_after_one_of_4_gib_minus_1(tmp_path: Path) -> None:
    """0xFFFFFFFF bytes (FAT32's largest file) is the ZIP64 marker itself: unzip carried it over to
    the next entry and read that entry's offset as its size, until Ferry gave that entry ZIP64
    sizes too. The entries after it are read without the 4 GiB (unzip tests only them)."""
    root = tmp_path / "tree"
    root.mkdir()
    sparse_file(root / BIG, 0xFFFFFFFF)
    (root / AFTER).write_bytes(b"after the big one\n")
    (root / "4-last.txt").write_bytes(b"last\n")
    paths = [BIG, AFTER, "4-last.txt"]
    archive = str(build("zip", root, paths, [root / p for p in paths], tmp_path / "marker.zip").archive)
    sizes = [line.split()[3] for line in run("unzip", "-Zl", archive).splitlines()[2:-1]]
    assert sizes == [str(0xFFFFFFFF), "18", "5"]
    tested = run("unzip", "-t", archive, AFTER, "4-last.txt")
    assert "No errors detected" in tested and "testing: 4-last.txt" in tested
    assert [e["Size"] for e in entries_7z(Path(archive)).values()] == [str(0xFFFFFFFF), "18", "5"]
    for command in (("7z", "x", "-so"), ("bsdtar", "-xOf"), ("unzip", "-p")):
        assert run(*command, archive, "4-last.txt") == "last\n", command
    with zipfile.ZipFile(archive) as opened:
        assert [opened.read(p) for p in paths[1:]] == [b"after the big one\n", b"last\n"]


def test_unzip_tests_a_zip_past_4_gib(big_zip: BigZip) -> None:
    """Last: the whole archive's `unzip -t`, started with the fixture, has run beside the rest."""
    archive = str(big_zip.archive)
    assert run("unzip", "-Z1", archive).splitlines() == [BEFORE, BIG, AFTER]
    assert f" {BIG_ZIP_MEMBER} " in run("unzip", "-Zl", archive)
    assert run("unzip", "-p", archive, AFTER) == "after the big one\n"
    assert big_zip.unzip.wait(timeout=TOOL_TIMEOUT) == 0, big_zip.unzip_output.read_text()
    tested = big_zip.unzip_output.read_text()
    assert "No errors detected in compressed data" in tested and f"testing: {BIG}" in tested
