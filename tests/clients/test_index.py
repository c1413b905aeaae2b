"""The storage index (issue 4; CONTRACT.md "Listings and the index") against a real `ferry serve`.

What is checked, each time over loopback HTTP against a subprocess:

- JSON listings (`/api/files/{dir}`, `/files/{dir}/?format=json`, `Accept: application/json`) match
  the disk exactly, awkward names included; every entry carries the contract's fields, and a file's
  `etag`, `size` and `content_type` are what a download of its `url` answers with;
- pagination walks a 2,500-entry directory with nothing missing or repeated, in name order;
- `/api/search` finds by part of a name, across directories, ignoring case, for short and long
  queries, pages without repeats and never shows hidden names;
- changes made by another process (files and whole trees created, moved, deleted) reach listings and
  search without a restart, through inotify and through the periodic rescan alone (the tests wait up
  to PATIENCE seconds: a loaded machine delays the watcher, and a missed change waits for the next
  rescan, 300 s away, so a lost event still fails);
- downloads never depend on the index;
- a restart reuses the index (the start-up scan reads only changed directories), and a corrupt index
  is rebuilt;
- `/openapi.json` describes the JSON with real models.

Expectations are computed from the disk with the contract's rules (hidden names, symlinks leading out
of ROOT, names no URL can name), never from the server. Servers over a tree nobody changes are shared
by the module; tests that change files get their own tree and server. Every server gets its own
working directory, so no two servers ever share an index file.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import PATIENCE, FerryServer, build_storage_tree, start_server

pytestmark = pytest.mark.clients

FIELDS = {"name", "path", "type", "size", "mtime", "content_type", "etag", "url", "sha256"}
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]00:00)$")
SCAN_LINE = re.compile(r"index scan: (\d+) directories, (\d+) read from disk, (\d+\.\d+)s")
POLL = 0.1

# Names that must survive URLs, JSON and HTML: spaces, %, #, ?, quotes, markup, non-ASCII.
AWKWARD: dict[str, bytes] = {
    "with space.txt": b"space\n",
    "100% sure.txt": b"percent\n",
    "literal %20 and %2F.txt": b"encoded-looking\n",
    "#hash#.md": b"hash\n",
    "why?.txt": b"question\n",
    "what?#&=.txt": b"query-ish\n",
    "single'quote.txt": b"single\n",
    'double"quote.txt': b"double\n",
    "<script>alert(1)<script>.html": b"<p>not a script</p>\n",
    "&amp; entity.txt": b"entity\n",
    "plus+sign.bin": b"plus\n",
    "semi;colon,comma.txt": b"semicolon\n",
    "Ünïcödé name.txt": b"latin\n",
    "日本語のファイル.txt": b"japanese\n",
    "emoji \U0001f680.bin": b"rocket\n",
    "trailing dot.": b"dot\n",
    "  leading spaces.txt": b"spaces\n",
}
AWKWARD_DIR = "awk ward #1 ?x% 'q\" <script>"
NESTED_DIR = f"{AWKWARD_DIR}/ß <b>ñ"

# The search corpus, spread over directories; hidden ones must never be found.
SEARCH_FILES: dict[str, bytes] = {
    "report-summary.csv": b"a,b\n",
    "reports/annual report.txt": b"annual\n",
    "reports/2024/Quarterly-Report Q1.pdf": b"%PDF-1.4\n",
    "misc/REPORTER.md": b"# reporter\n",
    "misc/deep/er/still/reportage.TXT": b"deep\n",
    "cv/RÉSUMÉ-final.PDF": b"upper\n",
    "cv/Résumé.odt": b"mixed\n",
    "xqzv-unique.dat": b"one of a kind\n",
    ".report-secret": b"hidden\n",
    "reports/.hidden-report.txt": b"hidden\n",
    ".cache/report-in-hidden-dir.txt": b"hidden\n",
}

BIG_DIR = "big"
BIG_COUNT = 2500
BIG_PREFIXES = ("item-", "Item-", "ITEM_", "ítem-", "item ")


def big_names() -> dict[str, bool]:
    """name -> is_dir for the 2,500-entry directory (mixed case and non-ASCII, so order matters)."""
    names = {}
    for i in range(BIG_COUNT):
        prefix = BIG_PREFIXES[i % len(BIG_PREFIXES)]
        is_dir = i % 50 == 7
        names[f"{prefix}{i:04d}" + (".d" if is_dir else ".dat")] = is_dir
    return names


# --------------------------------------------------------------------------- the disk's truth


def _has_control(name: str) -> bool:
    return any(ord(c) < 0x20 or c == "\x7f" for c in name)


def visible(root: Path, rel_dir: str, *, show_hidden: bool = False) -> dict[str, os.stat_result]:
    """What a listing of `rel_dir` must show, by the contract's rules, read straight from the disk.

    Left out: hidden names (unless shown), symlinks whose real location is outside ROOT or hidden,
    anything that is not a regular file or directory, and names no URL can name (control characters,
    backslashes: CONTRACT.md "Bad input" refuses them in paths).
    """
    found: dict[str, os.stat_result] = {}
    with os.scandir(root / rel_dir) as it:
        for d in it:
            name = d.name
            if _has_control(name) or "\\" in name:
                continue
            if not show_hidden and name.startswith("."):
                continue
            real = Path(os.path.realpath(d.path))
            if not real.is_relative_to(root):
                continue
            if not show_hidden and any(p.startswith(".") for p in real.relative_to(root).parts):
                continue
            try:
                st = os.stat(d.path)
            except OSError:
                continue
            if not (os.path.isdir(d.path) or os.path.isfile(d.path)):
                continue
            found[name] = st
    return found


@functools.cache
def all_visible(root: Path, *, show_hidden: bool = False) -> dict[str, str]:
    """path -> name of every entry under ROOT a search may return (symlinked dirs are not walked).

    Cached: only ever asked about the module's tree, which nothing changes."""
    out: dict[str, str] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        for name in visible(root, rel, show_hidden=show_hidden):
            path = f"{rel}/{name}" if rel else name
            out[path] = name
            if (root / path).is_dir() and not (root / path).is_symlink():
                stack.append(path)
    return out


def expected_search(root: Path, q: str, *, show_hidden: bool = False) -> set[str]:
    return {p for p, name in all_visible(root, show_hidden=show_hidden).items() if q.lower() in name.lower()}


def fix_mtimes(root: Path) -> None:
    """Distinct, fixed mtimes; odd ones at .999999999 s, where rounding (not truncating) would show."""
    k = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            k += 1
            frac = 999_999_999 if k % 2 else 123_456_789
            ns = (1_600_000_000 + 37 * k) * 10**9 + frac
            os.utime(path, ns=(ns, ns))


# --------------------------------------------------------------------------- talking to the server


def api_path(rel: str) -> str:
    return "/api/files/" + quote(rel)


def files_dir(rel: str) -> str:
    return "/files/" + (quote(rel) + "/" if rel else "")


def get_json(client: httpx.Client, url: str, **params: Any) -> Any:
    r = client.get(url, params=params)
    assert r.status_code == 200, (url, params, r.status_code, r.text[:500])
    assert r.headers["content-type"].split(";")[0] == "application/json"
    return r.json()


def walk_listing(
    client: httpx.Client, server: FerryServer, rel: str, *, limit: int = 1000, via: str = "api"
) -> list[dict[str, Any]]:
    """Every entry of a directory, page by page; a repeated cursor or entry fails at once."""
    url = server.url + (api_path(rel) if via == "api" else files_dir(rel))
    extra = {} if via == "api" else {"format": "json"}
    entries: list[dict[str, Any]] = []
    cursor: str | None = None
    seen_cursors: set[str] = set()
    while True:
        params: dict[str, Any] = {"limit": limit, **extra}
        if cursor is not None:
            params["cursor"] = cursor
        page = get_json(client, url, **params)
        assert page["path"] == rel
        assert len(page["entries"]) <= limit
        entries += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            return entries
        assert len(page["entries"]) == limit, "a page before the last one is short"
        assert cursor not in seen_cursors, "the same cursor came back twice"
        seen_cursors.add(cursor)


def search_all(
    client: httpx.Client, server: FerryServer, q: str, *, limit: int = 1000
) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"q": q, "limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        page = get_json(client, server.url + "/api/search", **params)
        assert len(page["entries"]) <= limit
        entries += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    paths = [e["path"] for e in entries]
    repeated = {p for p in paths if paths.count(p) > 1}
    assert not repeated, f"search {q!r} returned entries twice: {sorted(repeated)[:10]}"
    return entries


def search_paths(client: httpx.Client, server: FerryServer, q: str) -> set[str]:
    return {e["path"] for e in search_all(client, server, q)}


def listing_names(client: httpx.Client, server: FerryServer, rel: str) -> set[str] | None:
    """The names a directory's JSON listing shows now, or None if it is 404."""
    r = client.get(server.url + api_path(rel), params={"limit": 1000})
    if r.status_code == 404:
        return None
    assert r.status_code == 200, (rel, r.status_code, r.text[:300])
    body = r.json()
    assert body["next_cursor"] is None
    return {e["name"] for e in body["entries"]}


def wait_for_scans(
    server: FerryServer, count: int = 1, timeout: float = PATIENCE
) -> list[tuple[int, int, float]]:
    """The `index scan: ...` lines of a server's log, once at least `count` are there."""
    deadline = time.monotonic() + timeout
    while True:
        found = [(int(a), int(b), float(c)) for a, b, c in SCAN_LINE.findall(server.log.read_text())]
        if len(found) >= count:
            return found
        assert server.process.poll() is None, f"ferry serve exited: {server.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no index scan logged: {server.log.read_text()[-3000:]}"
        time.sleep(0.05)


Probe = Callable[[], str | None]


def eventually(probe: Probe, what: str, timeout: float = PATIENCE) -> float:
    """Poll every 0.1 s until `probe` has no complaint; fail with its last complaint after `timeout`."""
    began = time.monotonic()
    while True:
        complaint = probe()
        elapsed = time.monotonic() - began
        if complaint is None:
            return elapsed
        if elapsed > timeout:
            pytest.fail(f"{what}: still wrong after {timeout:.0f}s: {complaint}")
        time.sleep(POLL)


def state_is(
    client: httpx.Client,
    server: FerryServer,
    listings: dict[str, set[str] | None],
    searches: dict[str, set[str]],
    *,
    search_first: bool = False,
) -> Probe:
    """A probe: these directories list exactly these names (None: 404), these queries find exactly
    these paths. With `search_first`, no listing is asked for until the searches are right (a
    listing refreshes the directories it reads, so it can race with the watcher)."""

    def listed() -> str | None:
        for rel, want in listings.items():
            got = listing_names(client, server, rel)
            if got != want:
                return f"listing {rel!r} shows {got}, the disk has {want}"
        return None

    def searched() -> str | None:
        for q, paths in searches.items():
            found = search_paths(client, server, q)
            if found != paths:
                return f"search {q!r} finds {found}, the disk has {paths}"
        return None

    def probe() -> str | None:
        first, then = (searched, listed) if search_first else (listed, searched)
        return first() or then()

    return probe


def disk_names(root: Path, rel: str) -> set[str] | None:
    return set(visible(root, rel)) if (root / rel).is_dir() else None


# --------------------------------------------------------------------------- entry checks


def check_mtime(text: str, st: os.stat_result, where: str) -> None:
    assert RFC3339_UTC.match(text), f"{where}: mtime {text!r} is not RFC 3339 UTC"
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0), where
    assert math.floor(parsed.timestamp()) == st.st_mtime_ns // 10**9, (
        f"{where}: mtime {text} is not the file's {st.st_mtime_ns} ns to the second"
    )


def check_entries(
    client: httpx.Client,
    server: FerryServer,
    root: Path,
    rel: str,
    entries: list[dict[str, Any]],
    *,
    show_hidden: bool = False,
) -> None:
    """A directory's entries against the disk: exact names in name order, every field right, and a
    file's etag/size/content_type what its download answers with."""
    disk = visible(root, rel, show_hidden=show_hidden)
    names = [e["name"] for e in entries]
    assert names == sorted(disk), f"listing of {rel!r} differs from the disk"
    for e in entries:
        where = f"{rel!r}/{e['name']!r}"
        assert set(e) == FIELDS, f"{where}: fields {sorted(e)}"
        st = disk[e["name"]]
        path = f"{rel}/{e['name']}" if rel else e["name"]
        assert e["path"] == path, where
        check_mtime(e["mtime"], st, where)
        if os.path.isdir(root / path):
            assert e["type"] == "dir", where
            r = client.get(server.url + e["url"], params={"format": "json"})
            assert r.status_code == 200, (where, e["url"], r.status_code)
            assert r.json()["path"] == path, where
            continue
        assert e["type"] == "file", where
        assert e["size"] == st.st_size, where
        download = client.get(server.url + e["url"])
        assert download.status_code == 200, (where, e["url"], download.status_code)
        assert download.content == (root / path).read_bytes(), where
        assert e["etag"] == download.headers["etag"], f"{where}: listing etag != download ETag"
        assert e["content_type"] == download.headers["content-type"], where
        # /api/files/<file> is that same entry; its digest may have been computed in between.
        single = get_json(client, server.url + api_path(path))
        assert {**single, "sha256": None} == {**e, "sha256": None}, where
        digest = hashlib.sha256(download.content).hexdigest()
        assert e["sha256"] in (None, digest) and single["sha256"] in (None, digest), where


# --------------------------------------------------------------------------- servers


class Servers:
    """Servers over one tree, one per set of flags, each in its own working directory (so each has
    its own index), started on first use and only handed out once their start-up scan is logged."""

    def __init__(self, base: Path, root: Path) -> None:
        self.base = base
        self.root = root
        self.started: dict[tuple[str, ...], FerryServer] = {}
        self.count = 0

    def get(self, *flags: str) -> FerryServer:
        server = self.started.get(flags)
        if server is None or server.process.poll() is not None:
            self.count += 1
            cwd = self.base / f"cwd-{self.count}"
            cwd.mkdir()
            server = start_server(self.root, cwd, *flags)
            wait_for_scans(server)
            self.started[flags] = server
        return server

    def stop(self) -> None:
        for server in self.started.values():
            server.stop()


def build_index_tree(base: Path) -> Path:
    root = build_storage_tree(base).resolve()
    for name, data in AWKWARD.items():
        (root / name).write_bytes(data)
    nested = root / NESTED_DIR
    nested.mkdir(parents=True)
    for name, data in AWKWARD.items():
        (root / AWKWARD_DIR / name).write_bytes(data + b"in a dir\n")
    (nested / "inner file.txt").write_bytes(b"nested\n")
    for rel, data in SEARCH_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    big = root / BIG_DIR
    big.mkdir()
    for i, (name, is_dir) in enumerate(big_names().items()):
        if is_dir:
            (big / name).mkdir()
        else:
            (big / name).write_bytes(b"x" * (i % 7))
    fix_mtimes(root)
    return root


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tmp_path_factory.mktemp("index")
    servers = Servers(base, build_index_tree(base))
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15, follow_redirects=False) as c:
        yield c


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., FerryServer]]:
    """launch(root, *flags): a server of this test's own, in a fresh working directory, returned
    once its start-up scan is logged; stopped at the end of the test."""
    servers: list[FerryServer] = []

    def start(root: Path, *flags: str) -> FerryServer:
        cwd = tmp_path / f"cwd-{len(servers)}"
        cwd.mkdir()
        server = start_server(root, cwd, *flags)
        servers.append(server)
        wait_for_scans(server)
        return server

    yield start
    for server in servers:
        server.stop()


# --------------------------------------------------------------------------- listings

LISTED_DIRS = ["", "sub", AWKWARD_DIR, NESTED_DIR, "reports", "reports/2024", "cv"]


@pytest.mark.parametrize(
    "rel", LISTED_DIRS, ids=["root", "sub", "awkward", "nested", "reports", "2024", "cv"]
)
def test_json_listing_matches_the_disk(shared: Servers, client: httpx.Client, rel: str) -> None:
    server = shared.get()
    entries = walk_listing(client, server, rel)
    check_entries(client, server, shared.root, rel, entries)
    # /files/{dir}/ gives the same JSON, by ?format=json and by Accept, whole and page by page.
    for params in ({}, {"limit": 3}, {"limit": 1000}):
        api = get_json(client, server.url + api_path(rel), **params)
        by_format = get_json(client, server.url + files_dir(rel), format="json", **params)
        r = client.get(server.url + files_dir(rel), params=params, headers={"accept": "application/json"})
        assert r.status_code == 200
        assert r.headers["content-type"].split(";")[0] == "application/json"
        assert undigested(api) == undigested(by_format) == undigested(r.json()), (rel, params)
    assert undigested(walk_listing(client, server, rel, limit=2, via="files")) == undigested(entries)


def undigested(value: Any) -> Any:
    """JSON with every `sha256` blanked: the background hasher may fill one in between two reads
    (check_entries checks each digest against the file)."""
    if isinstance(value, dict):
        return {k: None if k == "sha256" else undigested(v) for k, v in value.items()}
    if isinstance(value, list):
        return [undigested(v) for v in value]
    return value


def test_root_listing_shows_awkward_names_and_no_hidden_or_escaping_links(
    shared: Servers, client: httpx.Client
) -> None:
    server = shared.get()
    names = {e["name"] for e in walk_listing(client, server, "")}
    assert set(AWKWARD) <= names
    assert {"résumé 数据.bin", "100% #1?.txt", "link-inside.txt", AWKWARD_DIR, BIG_DIR} <= names
    assert not {n for n in names if n.startswith(".")}, "hidden names listed"
    # link-outside.txt and dir-outside lead out of ROOT; link-to-hidden leads to a hidden name.
    assert not names & {"link-outside.txt", "dir-outside", "link-to-hidden"}
    types = {e["name"]: e["type"] for e in walk_listing(client, server, "")}
    assert types["sub"] == types[AWKWARD_DIR] == types[BIG_DIR] == "dir"
    assert types["link-inside.txt"] == "file"


def test_show_hidden_lists_hidden_names_but_never_escaping_links(
    launch: Callable[..., FerryServer], shared: Servers, client: httpx.Client
) -> None:
    """--show-hidden, on a server of its own (what it finds wrong must not leak into other tests)."""
    root = shared.root
    server = launch(root, "--show-hidden")
    names = [e["name"] for e in walk_listing(client, server, "")]
    assert names == sorted(visible(root, "", show_hidden=True))
    assert {".hidden", ".git", ".report-secret", ".cache", "link-to-hidden"} <= set(names)
    assert not set(names) & {"link-outside.txt", "dir-outside"}
    assert ".env" in {e["name"] for e in walk_listing(client, server, "sub")}

    # A hidden name directly under ROOT keeps its leading dot in the entry, path and url.
    entry = get_json(client, server.url + api_path(".hidden"))
    assert (entry["name"], entry["path"], entry["url"]) == (".hidden", ".hidden", "/files/.hidden")
    for rel in [".cache", ".git"]:
        for url, params in [(api_path(rel), {}), (files_dir(rel), {"format": "json"})]:
            page = get_json(client, server.url + url, **params)
            assert page["path"] == rel, url
            assert [e["name"] for e in page["entries"]] == sorted(visible(root, rel, show_hidden=True)), url
    # ... and asking for it leaves no made-up entries behind in the index.
    assert [e["name"] for e in walk_listing(client, server, "")] == names
    assert search_paths(client, server, "hidden") == expected_search(root, "hidden", show_hidden=True)

    for rel in ["", "sub", ".cache", ".git"]:
        check_entries(client, server, root, rel, walk_listing(client, server, rel), show_hidden=True)


def test_a_file_path_gives_its_single_entry(shared: Servers, client: httpx.Client) -> None:
    server = shared.get()
    for rel in [
        "hello.txt",
        "résumé 数据.bin",
        f"{AWKWARD_DIR}/what?#&=.txt",
        "reports/2024/Quarterly-Report Q1.pdf",
    ]:
        entry = get_json(client, server.url + api_path(rel))
        assert set(entry) == FIELDS
        assert entry["path"] == rel
        assert entry["name"] == rel.rpartition("/")[2]
        assert entry["type"] == "file"
        assert entry["size"] == (shared.root / rel).stat().st_size
        check_mtime(entry["mtime"], (shared.root / rel).stat(), rel)
        assert client.head(server.url + entry["url"]).headers["etag"] == entry["etag"]


@pytest.mark.parametrize(
    "rel",
    [
        "no-such-file.txt",
        "sub/no/such/dir",
        "sub/inner.txt/below-a-file",
        ".hidden",
        "sub/.env",
        ".git",
        "link-outside.txt",
        "dir-outside",
        "dir-outside/x.txt",
        "link-to-hidden",
    ],
)
def test_missing_or_refused_paths_are_404(shared: Servers, client: httpx.Client, rel: str) -> None:
    server = shared.get()
    assert client.get(server.url + api_path(rel)).status_code == 404
    if not rel.startswith("sub/inner.txt"):
        assert client.get(server.url + files_dir(rel), params={"format": "json"}).status_code == 404


def _cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# Invalid wherever a cursor is taken: not ours at all, or a list of the wrong length or types.
BAD_CURSORS = [
    pytest.param("!!!", id="not-base64"),
    pytest.param("bm90IGpzb24", id="base64-not-json"),
    pytest.param(_cursor({"a": 1}), id="json-object"),
    pytest.param(_cursor("name"), id="json-string"),
    pytest.param(_cursor([1, 2, 3]), id="wrong-length"),
    pytest.param(_cursor([[1]]), id="list-of-list"),
    pytest.param(_cursor([{"a": 1}]), id="list-of-object"),
    pytest.param(_cursor([None]), id="list-of-null"),
]
# A listing's cursor is a name, a search's a position: each one's shape is invalid for the other.
BAD_SEARCH_CURSORS = [pytest.param(_cursor(["item-0001.dat"]), id="list-of-name")]
ENDPOINTS = {
    "api-files": (api_path(BIG_DIR), {}),
    "files-format-json": (files_dir(BIG_DIR), {"format": "json"}),
    "search-trigram": ("/api/search", {"q": "item"}),
    "search-short": ("/api/search", {"q": "it"}),
}


@pytest.mark.parametrize(
    ("where", "cursor"),
    [
        *[pytest.param(w, *c.values, id=f"{w}-{c.id}") for w in ENDPOINTS for c in BAD_CURSORS],
        *[
            pytest.param(w, *c.values, id=f"{w}-{c.id}")
            for w in ("search-trigram", "search-short")
            for c in BAD_SEARCH_CURSORS
        ],
    ],
)
def test_an_invalid_cursor_is_400(shared: Servers, client: httpx.Client, where: str, cursor: str) -> None:
    server = shared.get()
    url, params = ENDPOINTS[where]
    r = client.get(server.url + url, params={**params, "cursor": cursor})
    assert r.status_code == 400, (where, cursor, r.status_code, r.text[:200])
    assert client.get(server.url + "/healthz").status_code == 200


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "1e3", "99999999999999999999"])
@pytest.mark.parametrize("where", ["api-files", "files-format-json", "search"])
def test_a_limit_outside_1_to_1000_is_refused(
    shared: Servers, client: httpx.Client, where: str, limit: str
) -> None:
    server = shared.get()
    url, params = {
        "api-files": (api_path("sub"), {}),
        "files-format-json": (files_dir("sub"), {"format": "json"}),
        "search": ("/api/search", {"q": "report"}),
    }[where]
    r = client.get(server.url + url, params={**params, "limit": limit})
    assert r.status_code in (400, 422), (where, limit, r.status_code, r.text[:200])


# --------------------------------------------------------------------------- pagination


@pytest.mark.parametrize("limit", [100, 1000])
@pytest.mark.parametrize("via", ["api", "files"])
def test_pagination_walks_2500_entries_once_each_in_name_order(
    shared: Servers, client: httpx.Client, limit: int, via: str
) -> None:
    server = shared.get()
    entries = walk_listing(client, server, BIG_DIR, limit=limit, via=via)
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), "an entry came twice"
    assert set(names) == set(big_names()), "an entry is missing or foreign"
    assert names == sorted(names), "not in name order"
    kinds = big_names()
    assert all((e["type"] == "dir") == kinds[e["name"]] for e in entries)
    assert all(
        e["size"] == (shared.root / BIG_DIR / e["name"]).stat().st_size
        for e in entries
        if e["type"] == "file"
    )


# --------------------------------------------------------------------------- search


@pytest.mark.parametrize(
    "q",
    [
        "report",
        "REPORT",
        "RePoRt",
        "annual report",
        "Q1.PDF",
        "xqzv",
        "résumé",
        "RÉSUMÉ",
        "Résumé",
        "ÍTEM-",
        "日本語",
        "100% s",
        'double"q',
        "<script>",
        "#hash#",
        "what?#&=",
        "%20",
        "\U0001f680",
        "Q1",
        "q1",
        "Q",
        "数据",
        "%",
        "#",
        "?",
        "_",
        '"',
        "'",
        "ß",
    ],
)
def test_search_finds_parts_of_names_anywhere_ignoring_case(
    shared: Servers, client: httpx.Client, q: str
) -> None:
    server = shared.get()
    want = expected_search(shared.root, q)
    assert want, f"the corpus has nothing for {q!r}"
    found = search_all(client, server, q)
    assert {e["path"] for e in found} == want
    for e in found:
        assert set(e) == FIELDS
        assert e["name"] == e["path"].rpartition("/")[2]
        assert not any(part.startswith(".") for part in e["path"].split("/"))


def test_search_spans_directories(shared: Servers, client: httpx.Client) -> None:
    server = shared.get()
    found = search_paths(client, server, "report")
    assert {
        "report-summary.csv",
        "reports",
        "reports/annual report.txt",
        "reports/2024/Quarterly-Report Q1.pdf",
        "misc/REPORTER.md",
        "misc/deep/er/still/reportage.TXT",
    } <= found
    assert len({p.rpartition("/")[0] for p in found}) >= 5


def test_search_folds_non_ascii_case_for_long_queries(shared: Servers, client: httpx.Client) -> None:
    """SQLite's trigram tokenizer folds Unicode case: 'RÉSUMÉ' and 'résumé' find the same names."""
    server = shared.get()
    want = {"résumé 数据.bin", "cv/RÉSUMÉ-final.PDF", "cv/Résumé.odt"}
    assert search_paths(client, server, "résumé") == want
    assert search_paths(client, server, "RÉSUMÉ") == want
    assert search_paths(client, server, "ésumé") == want
    assert search_paths(client, server, "ÉSU") == want


@pytest.mark.parametrize("q", ["É", "é", "ÉS", "ÍT"])
def test_search_folds_non_ascii_case_for_short_queries_too(
    shared: Servers, client: httpx.Client, q: str
) -> None:
    """A one- or two-character query ignores case the way a longer one does ('É' finds 'résumé' as
    'ÉSU' does)."""
    server = shared.get()
    assert search_paths(client, server, q) == expected_search(shared.root, q)


@pytest.mark.parametrize(
    ("q", "limit"), [("item", 100), ("ITEM", 1000), ("it", 100), ("ítem", 37), (".", 250)]
)
def test_search_pages_without_repeats(shared: Servers, client: httpx.Client, q: str, limit: int) -> None:
    server = shared.get()
    found = search_all(client, server, q, limit=limit)  # fails on a repeat
    want = expected_search(shared.root, q)
    assert len(want) > limit, "the query must need several pages"
    assert {e["path"] for e in found} == want
    assert len(found) == len(want)


@pytest.mark.parametrize(
    "q", ["hidden", "secret", "env", "config", "git", "cache", "outside", "link-to", "."]
)
def test_search_never_returns_hidden_names_or_escaping_links(
    shared: Servers, client: httpx.Client, q: str
) -> None:
    server = shared.get()
    found = search_paths(client, server, q)
    assert found == expected_search(shared.root, q)
    for path in found:
        assert not any(part.startswith(".") for part in path.split("/")), path
        assert path not in {"link-outside.txt", "dir-outside", "link-to-hidden"}
        assert not path.startswith("dir-outside/")


def test_search_with_show_hidden_finds_hidden_names(shared: Servers, client: httpx.Client) -> None:
    server = shared.get("--show-hidden")
    for q in ["hidden", "env", "config", "report"]:
        assert search_paths(client, server, q) == expected_search(shared.root, q, show_hidden=True), q
    assert {".hidden", "link-to-hidden"} <= search_paths(client, server, "hidden")
    assert "sub/.env" in search_paths(client, server, "env")
    assert ".cache/report-in-hidden-dir.txt" in search_paths(client, server, "report")
    assert not search_paths(client, server, "outside")


@pytest.mark.parametrize("q", ["no-such-name-anywhere", "qqqq", "zj", "ǂ", "%%%", '"""'])
def test_search_for_a_name_that_does_not_exist_is_empty(
    shared: Servers, client: httpx.Client, q: str
) -> None:
    server = shared.get()
    assert not expected_search(shared.root, q)
    body = get_json(client, server.url + "/api/search", q=q)
    assert body["entries"] == []
    assert body["next_cursor"] is None


# --------------------------------------------------------------------------- changes by other programs

MODES = [
    pytest.param((), id="inotify"),
    pytest.param(("--no-watch", "--rescan-interval", "1"), id="rescan-only"),
]


def small_tree(base: Path) -> Path:
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "keep.txt").write_bytes(b"keep\n")
    (root / "sub" / "stays.txt").write_bytes(b"stays\n")
    return root


@pytest.mark.parametrize("flags", MODES)
def test_a_file_created_renamed_deleted_by_another_process_is_seen(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client, flags: tuple[str, ...]
) -> None:
    root = small_tree(tmp_path)
    server = launch(root, *flags)

    (root / "sub" / "fresh-ZQX file.txt").write_bytes(b"new\n")
    eventually(
        state_is(
            client, server, {"sub": {"stays.txt", "fresh-ZQX file.txt"}}, {"zqx": {"sub/fresh-ZQX file.txt"}}
        ),
        "a created file",
    )
    entry = get_json(client, server.url + api_path("sub/fresh-ZQX file.txt"))
    assert entry["size"] == 4

    os.rename(root / "sub" / "fresh-ZQX file.txt", root / "other" / "moved-ZQX file.txt")
    eventually(
        state_is(
            client,
            server,
            {"sub": {"stays.txt"}, "other": {"moved-ZQX file.txt"}},
            {"zqx": {"other/moved-ZQX file.txt"}, "fresh": set()},
        ),
        "a renamed file",
    )

    os.remove(root / "other" / "moved-ZQX file.txt")
    eventually(
        state_is(client, server, {"sub": {"stays.txt"}, "other": set()}, {"zqx": set(), "moved": set()}),
        "a deleted file",
    )


@pytest.mark.parametrize(
    ("flags", "search_first"),
    [
        pytest.param((), True, id="inotify-search-polled-first"),
        pytest.param((), False, id="inotify-listings-polled-first"),
        pytest.param(("--no-watch", "--rescan-interval", "1"), False, id="rescan-only"),
    ],
)
def test_a_tree_copied_in_moved_and_removed_by_another_process_is_seen(
    launch: Callable[..., FerryServer],
    tmp_path: Path,
    client: httpx.Client,
    flags: tuple[str, ...],
    search_first: bool,
) -> None:
    """A tree copied in (shutil.copytree), renamed into another directory, then removed (rmtree).

    Polling the listings first is what a person browsing meanwhile does: a listing of the parent
    may see the new directory before the watcher does."""
    root = small_tree(tmp_path)
    source = tmp_path / "outside" / "Tree ÄÖ"
    (source / "deep" / "deeper").mkdir(parents=True)
    (source / "a-TRQ.txt").write_bytes(b"a\n")
    (source / "deep" / "b-TRQ.txt").write_bytes(b"bb\n")
    (source / "deep" / "deeper" / "c-TRQ #?.bin").write_bytes(b"ccc\n")
    server = launch(root, *flags)

    shutil.copytree(source, root / "incoming")
    eventually(
        state_is(
            client,
            server,
            {
                "": {"sub", "other", "keep.txt", "incoming"},
                "incoming": {"a-TRQ.txt", "deep"},
                "incoming/deep/deeper": {"c-TRQ #?.bin"},
            },
            {
                "trq": {"incoming/a-TRQ.txt", "incoming/deep/b-TRQ.txt", "incoming/deep/deeper/c-TRQ #?.bin"},
                "deeper": {"incoming/deep/deeper"},
            },
            search_first=search_first,
        ),
        "a tree copied in",
    )

    os.rename(root / "incoming", root / "sub" / "landed")
    eventually(
        state_is(
            client,
            server,
            {
                "": {"sub", "other", "keep.txt"},
                "incoming": None,
                "sub": {"stays.txt", "landed"},
                "sub/landed/deep/deeper": {"c-TRQ #?.bin"},
            },
            {
                "trq": {
                    "sub/landed/a-TRQ.txt",
                    "sub/landed/deep/b-TRQ.txt",
                    "sub/landed/deep/deeper/c-TRQ #?.bin",
                },
                "deeper": {"sub/landed/deep/deeper"},
                "incoming": set(),
            },
            search_first=search_first,
        ),
        "a tree moved",
    )

    shutil.rmtree(root / "sub" / "landed")
    eventually(
        state_is(
            client,
            server,
            {"sub": {"stays.txt"}, "sub/landed": None},
            {"trq": set(), "deeper": set(), "landed": set()},
            search_first=search_first,
        ),
        "a tree removed",
    )


@pytest.mark.parametrize("flags", MODES)
def test_a_file_rewritten_in_place_by_another_process_is_seen(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client, flags: tuple[str, ...]
) -> None:
    """Appending to a file changes its size, mtime and ETag but not its directory's mtime; the listing
    must still catch up (the rescan is the safety net "for anything inotify missed")."""
    root = small_tree(tmp_path)
    server = launch(root, *flags)
    with (root / "sub" / "stays.txt").open("ab") as f:
        f.write(b"grown by another program\n")
    size = (root / "sub" / "stays.txt").stat().st_size

    def probe() -> str | None:
        listed = {e["name"]: e for e in get_json(client, server.url + api_path("sub"))["entries"]}[
            "stays.txt"
        ]
        etag = client.head(server.url + "/files/sub/stays.txt").headers["etag"]
        if (listed["size"], listed["etag"]) != (size, etag):
            return (
                f"listing says size {listed['size']} etag {listed['etag']}; disk/download say {size} {etag}"
            )
        return None

    eventually(probe, "a file appended to")


def test_a_listing_is_right_at_once_without_watcher_or_rescan(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client
) -> None:
    """With no inotify and no rescan, listing a directory whose mtime changed re-reads it."""
    root = small_tree(tmp_path)
    server = launch(root, "--no-watch", "--rescan-interval", "0")

    def right_now(*dirs: str) -> None:
        for rel in dirs:
            assert listing_names(client, server, rel) == disk_names(root, rel), rel

    right_now("", "sub", "other")
    (root / "sub" / "new #1?.txt").write_bytes(b"one\n")
    right_now("sub")
    entry = get_json(client, server.url + api_path("sub"))["entries"][0]
    assert entry["name"] == "new #1?.txt"
    assert entry["size"] == 4
    assert entry["etag"] == client.head(server.url + entry["url"]).headers["etag"]

    os.rename(root / "sub" / "new #1?.txt", root / "sub" / "renamed.txt")
    right_now("sub")
    os.rename(root / "sub" / "renamed.txt", root / "other" / "moved.txt")
    right_now("sub", "other")
    os.remove(root / "other" / "moved.txt")
    right_now("other")

    (root / "sub" / "made" / "deeper").mkdir(parents=True)
    (root / "sub" / "made" / "deeper" / "x.txt").write_bytes(b"x\n")
    right_now("sub", "sub/made", "sub/made/deeper")
    shutil.copytree(root / "sub" / "made", root / "other" / "copy")
    right_now("other", "other/copy", "other/copy/deeper")
    os.rename(root / "other" / "copy", root / "copy-moved")
    right_now("", "other", "copy-moved/deeper")
    assert listing_names(client, server, "other/copy") is None
    shutil.rmtree(root / "copy-moved")
    right_now("")
    assert listing_names(client, server, "copy-moved") is None
    for i in range(30):  # quick successive changes, each listed at once
        (root / "sub" / f"quick-{i}").write_bytes(b"q")
        right_now("sub")


# --------------------------------------------------------------------------- downloads and the index


def test_downloads_never_depend_on_the_index(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client
) -> None:
    root = small_tree(tmp_path)
    (root / "sub" / "old-file-KQW.txt").write_bytes(b"was here at start-up\n")
    server = launch(root, "--no-watch", "--rescan-interval", "0")
    assert search_paths(client, server, "kqw") == {"sub/old-file-KQW.txt"}

    # Created after start-up: served although the index has not seen it.
    (root / "late-file-JXV.txt").write_bytes(b"late bytes\n")
    (root / "late-dir").mkdir()
    (root / "late-dir" / "inner-JXV.bin").write_bytes(b"\x00\x01late\n")
    assert search_paths(client, server, "jxv") == set(), "the index saw it: the test proves nothing"
    r = client.get(server.url + "/files/late-file-JXV.txt")
    assert (r.status_code, r.content) == (200, b"late bytes\n")
    r = client.get(server.url + "/files/late-dir/inner-JXV.bin")
    assert (r.status_code, r.content) == (200, b"\x00\x01late\n")
    assert client.head(server.url + "/files/late-file-JXV.txt").status_code == 200

    # Deleted after start-up: 404 although the index still lists it, and then the index drops it.
    os.remove(root / "sub" / "old-file-KQW.txt")
    assert search_paths(client, server, "kqw") == {"sub/old-file-KQW.txt"}, "the index already dropped it"
    assert client.get(server.url + "/files/sub/old-file-KQW.txt").status_code == 404
    assert client.head(server.url + "/files/sub/old-file-KQW.txt").status_code == 404
    assert client.get(server.url + api_path("sub/old-file-KQW.txt")).status_code == 404
    assert search_paths(client, server, "kqw") == set()
    assert search_paths(client, server, "old-file") == set()


# --------------------------------------------------------------------------- restarts


def many_dirs(base: Path) -> tuple[Path, int]:
    """20 directories of 10 directories of 3 files: 221 directories with ROOT."""
    root = base / "root"
    for i in range(20):
        for j in range(10):
            leaf = root / f"d{i:02d}" / f"e{j:02d}"
            leaf.mkdir(parents=True)
            for k in range(3):
                (leaf / f"file-{i:02d}-{j:02d}-{k}.txt").write_bytes(b"x" * (i + j + k))
    return root, 1 + 20 + 20 * 10


def test_a_restart_reads_only_changed_directories(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client
) -> None:
    root, dirs = many_dirs(tmp_path)
    index = tmp_path / "var" / "index.sqlite3"

    first = launch(root, "--index-path", str(index))
    assert wait_for_scans(first)[0][:2] == (dirs, dirs)
    first.stop()
    assert index.exists()

    second = launch(root, "--index-path", str(index))
    assert wait_for_scans(second)[0][:2] == (dirs, 0), "unchanged directories were read again"
    for rel in ["", "d03", "d19/e09"]:
        check_entries(client, second, root, rel, walk_listing(client, second, rel))
    assert search_paths(client, second, "file-07-04") == {f"d07/e04/file-07-04-{k}.txt" for k in range(3)}
    second.stop()

    (root / "d07" / "e04" / "added-while-stopped.txt").write_bytes(b"added\n")
    third = launch(root, "--index-path", str(index))
    assert wait_for_scans(third)[0][:2] == (dirs, 1), "not exactly the changed directory was read"
    check_entries(client, third, root, "d07/e04", walk_listing(client, third, "d07/e04"))
    assert search_paths(client, third, "added-while") == {"d07/e04/added-while-stopped.txt"}
    assert search_paths(client, third, "file-19-09") == {f"d19/e09/file-19-09-{k}.txt" for k in range(3)}


@pytest.mark.parametrize("sidecars", ["removed", "kept"])
def test_a_corrupt_index_is_rebuilt_at_start_up(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client, sidecars: str
) -> None:
    """Garbage in the index file while Ferry is stopped. With the -wal/-shm files kept, SQLite may
    still find every page in the WAL; with them removed (as after a checkpoint), the main file is all
    there is."""
    root, dirs = many_dirs(tmp_path)
    index = tmp_path / "var" / "index.sqlite3"
    first = launch(root, "--index-path", str(index))
    wait_for_scans(first)
    first.stop()

    index.write_bytes(b"this is not a database, just garbage\x00\xff" * 2000)
    if sidecars == "removed":
        for suffix in ("-wal", "-shm"):
            Path(f"{index}{suffix}").unlink(missing_ok=True)

    second = launch(root, "--index-path", str(index))  # fails if it does not start
    scans = wait_for_scans(second)
    if sidecars == "removed":
        assert scans[0][:2] == (dirs, dirs), "the index was not rebuilt from the disk"
    for rel in ["", "d11", "d11/e05"]:
        check_entries(client, second, root, rel, walk_listing(client, second, rel))
    assert search_paths(client, second, "file-11-05") == {f"d11/e05/file-11-05-{k}.txt" for k in range(3)}


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_describes_the_json_with_real_models(shared: Servers, client: httpx.Client) -> None:
    spec = get_json(client, shared.get().url + "/openapi.json")
    schemas = spec["components"]["schemas"]

    def deref(schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = schemas[schema["$ref"].rpartition("/")[2]]
        return schema

    def variants(schema: dict[str, Any]) -> list[dict[str, Any]]:
        schema = deref(schema)
        found = schema.get("anyOf") or schema.get("oneOf")
        return [deref(s) for s in found] if found else [schema]

    def is_entry(schema: dict[str, Any]) -> bool:
        props = schema.get("properties", {})
        if not FIELDS <= set(props):
            return False
        assert props["mtime"].get("format") == "date-time"
        assert set(deref(props["type"]).get("enum", [])) == {"file", "dir"}
        return True

    def ok_schema(path: str) -> dict[str, Any]:
        op = spec["paths"][path]["get"]
        schema: dict[str, Any] = op["responses"]["200"]["content"]["application/json"]["schema"]
        return schema

    def check_page(schema: dict[str, Any]) -> None:
        props = schema["properties"]
        assert {"entries", "next_cursor"} <= set(props)
        assert props["entries"]["type"] == "array"
        assert is_entry(deref(props["entries"]["items"]))

    files = variants(ok_schema("/api/files/{path}"))
    assert any(is_entry(s) for s in files), "no entry model for /api/files/{path}"
    listings = [s for s in files if "entries" in s.get("properties", {})]
    assert listings, "no listing model for /api/files/{path}"
    check_page(listings[0])
    assert "path" in listings[0]["properties"]
    search = variants(ok_schema("/api/search"))
    assert len(search) == 1
    check_page(search[0])
    params = {p["name"] for p in spec["paths"]["/api/search"]["get"]["parameters"]}
    assert {"q", "limit", "cursor"} <= params
    params = {p["name"] for p in spec["paths"]["/api/files/{path}"]["get"]["parameters"]}
    assert {"limit", "cursor"} <= params
