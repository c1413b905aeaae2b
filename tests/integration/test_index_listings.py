"""The storage index (issue 4; CONTRACT.md "Listings and the index") in-process: listings, search
and pagination over one tree nobody changes.

- JSON listings (`/api/files/{dir}`, `/files/{dir}/?format=json`, `Accept: application/json`) match
  the disk exactly, awkward names included; every entry carries the contract's fields, and a file's
  `etag`, `size` and `content_type` are what a download of its `url` answers with;
- pagination walks a 2,500-entry directory with nothing missing or repeated, in name order;
- `/api/search` finds by part of a name, across directories, ignoring case, for short and long
  queries, pages without repeats and never shows hidden names;
- `/openapi.json` describes the JSON with real models.

Expectations are computed from the disk with the contract's rules (hidden names, symlinks leading out
of ROOT, names no URL can name), never from the server. One app per set of flags, each with its own
index, is shared by the module. What other programs change, restarts and a corrupt index are
tests/clients/test_index.py's, against a real `ferry serve`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import build_storage_tree
from tests.support.inprocess import AppPool, module_app_pool
from tests.support.servers import Server

FIELDS = {"name", "path", "type", "size", "mtime", "content_type", "etag", "url", "sha256"}
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]00:00)$")

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
    client: httpx.Client, server: Server, rel: str, *, limit: int = 1000, via: str = "api"
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


def search_all(client: httpx.Client, server: Server, q: str, *, limit: int = 1000) -> list[dict[str, Any]]:
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


def search_paths(client: httpx.Client, server: Server, q: str) -> set[str]:
    return {e["path"] for e in search_all(client, server, q)}


def listing_names(client: httpx.Client, server: Server, rel: str) -> set[str] | None:
    """The names a directory's JSON listing shows now, or None if it is 404."""
    r = client.get(server.url + api_path(rel), params={"limit": 1000})
    if r.status_code == 404:
        return None
    assert r.status_code == 200, (rel, r.status_code, r.text[:300])
    body = r.json()
    assert body["next_cursor"] is None
    return {e["name"] for e in body["entries"]}


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
    server: Server,
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


# --------------------------------------------------------------------------- the shared tree

shared = module_app_pool("index", tree=build_index_tree)


@pytest.fixture
def client(shared: AppPool) -> httpx.Client:
    return shared.client


# --------------------------------------------------------------------------- listings

LISTED_DIRS = ["", "sub", AWKWARD_DIR, NESTED_DIR, "reports", "reports/2024", "cv"]


@pytest.mark.parametrize(
    "rel", LISTED_DIRS, ids=["root", "sub", "awkward", "nested", "reports", "2024", "cv"]
)
def test_json_listing_matches_the_disk(shared: AppPool, client: httpx.Client, rel: str) -> None:
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
    shared: AppPool, client: httpx.Client
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


def test_a_file_path_gives_its_single_entry(shared: AppPool, client: httpx.Client) -> None:
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
def test_missing_or_refused_paths_are_404(shared: AppPool, client: httpx.Client, rel: str) -> None:
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
def test_an_invalid_cursor_is_400(shared: AppPool, client: httpx.Client, where: str, cursor: str) -> None:
    server = shared.get()
    url, params = ENDPOINTS[where]
    r = client.get(server.url + url, params={**params, "cursor": cursor})
    assert r.status_code == 400, (where, cursor, r.status_code, r.text[:200])
    assert client.get(server.url + "/healthz").status_code == 200


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "1e3", "99999999999999999999"])
@pytest.mark.parametrize("where", ["api-files", "files-format-json", "search"])
def test_a_limit_outside_1_to_1000_is_refused(
    shared: AppPool, client: httpx.Client, where: str, limit: str
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
    shared: AppPool, client: httpx.Client, limit: int, via: str
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
    shared: AppPool, client: httpx.Client, q: str
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


def test_search_spans_directories(shared: AppPool, client: httpx.Client) -> None:
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


def test_search_folds_non_ascii_case_for_long_queries(shared: AppPool, client: httpx.Client) -> None:
    """SQLite's trigram tokenizer folds Unicode case: 'RÉSUMÉ' and 'résumé' find the same names."""
    server = shared.get()
    want = {"résumé 数据.bin", "cv/RÉSUMÉ-final.PDF", "cv/Résumé.odt"}
    assert search_paths(client, server, "résumé") == want
    assert search_paths(client, server, "RÉSUMÉ") == want
    assert search_paths(client, server, "ésumé") == want
    assert search_paths(client, server, "ÉSU") == want


@pytest.mark.parametrize("q", ["É", "é", "ÉS", "ÍT"])
def test_search_folds_non_ascii_case_for_short_queries_too(
    shared: AppPool, client: httpx.Client, q: str
) -> None:
    """A one- or two-character query ignores case the way a longer one does ('É' finds 'résumé' as
    'ÉSU' does)."""
    server = shared.get()
    assert search_paths(client, server, q) == expected_search(shared.root, q)


@pytest.mark.parametrize(
    ("q", "limit"), [("item", 100), ("ITEM", 1000), ("it", 100), ("ítem", 37), (".", 250)]
)
def test_search_pages_without_repeats(shared: AppPool, client: httpx.Client, q: str, limit: int) -> None:
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
    shared: AppPool, client: httpx.Client, q: str
) -> None:
    server = shared.get()
    found = search_paths(client, server, q)
    assert found == expected_search(shared.root, q)
    for path in found:
        assert not any(part.startswith(".") for part in path.split("/")), path
        assert path not in {"link-outside.txt", "dir-outside", "link-to-hidden"}
        assert not path.startswith("dir-outside/")


def test_search_with_show_hidden_finds_hidden_names(shared: AppPool, client: httpx.Client) -> None:
    server = shared.get("--show-hidden")
    for q in ["hidden", "env", "config", "report"]:
        assert search_paths(client, server, q) == expected_search(shared.root, q, show_hidden=True), q
    assert {".hidden", "link-to-hidden"} <= search_paths(client, server, "hidden")
    assert "sub/.env" in search_paths(client, server, "env")
    assert ".cache/report-in-hidden-dir.txt" in search_paths(client, server, "report")
    assert not search_paths(client, server, "outside")


@pytest.mark.parametrize("q", ["no-such-name-anywhere", "qqqq", "zj", "ǂ", "%%%", '"""'])
def test_search_for_a_name_that_does_not_exist_is_empty(
    shared: AppPool, client: httpx.Client, q: str
) -> None:
    server = shared.get()
    assert not expected_search(shared.root, q)
    body = get_json(client, server.url + "/api/search", q=q)
    assert body["entries"] == []
    assert body["next_cursor"] is None


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_describes_the_json_with_real_models(shared: AppPool, client: httpx.Client) -> None:
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
