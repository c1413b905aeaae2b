"""The download contract where bytes cross a real socket: ranges, multipart/byteranges, whole and
empty files and their framing, against a real `ferry serve` on every transfer path of a local ROOT
— the fast path (FERRY_FAST_PATH=on: small answers written by the protocol itself) with zero-copy
off and on, and the ASGI app alone (FERRY_FAST_PATH=off) — and serving the same tree from a bucket
(FERRY_STORAGE=s3://…, `weed mini`, marker `engine`: bytes read in windows pinned to the ETag).

The cases are tests/integration/test_download_contract.py's own, run here again over loopback: one
server per distinct set of flags and transfer path is started once for the module and shared by
every case that only reads the tree. The one test that modifies files gets its own server and tree.
The bucket runs the cases about framing (`_ON_BUCKETS`); the in-process module runs all of them there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FerryServer, ServerFactory, ServerPool
from tests.integration.test_download_contract import (
    Served,
    add_extra_files,
    dated,
    fetch,
    test_common_headers,
    test_content_disposition_filename,
    test_content_disposition_plain_url_leaves_the_name_to_the_url,
    test_content_disposition_type,
    test_content_disposition_unicode_fallback,
    test_content_type,
    test_directory_without_slash_redirects,
    test_empty_file,
    test_etag_is_strong_and_stable,
    test_head_ignores_range,
    test_head_matches_get,
    test_hidden_files,
    test_if_range,
    test_ignored_range_gets_the_whole_file,
    test_last_modified_is_the_file_mtime,
    test_max_ranges_setting,
    test_multipart_boundary_is_unpredictable,
    test_not_found,
    test_preconditions,
    test_several_ranges_are_multipart_byteranges,
    test_single_range_is_a_plain_206,
    test_symlink_inside_root_is_served,
    test_symlink_outside_root,
    test_symlink_to_a_hidden_file_is_hidden,
    test_unsatisfiable_range_is_416,
)
from tests.support.buckets import backend_fixture, module_server_pools

# The imported cases run here again, against a real server (and so on every transfer path).
__all__ = [
    "dated",
    "test_common_headers",
    "test_content_disposition_filename",
    "test_content_disposition_plain_url_leaves_the_name_to_the_url",
    "test_content_disposition_type",
    "test_content_disposition_unicode_fallback",
    "test_content_type",
    "test_directory_without_slash_redirects",
    "test_empty_file",
    "test_etag_is_strong_and_stable",
    "test_head_ignores_range",
    "test_head_matches_get",
    "test_hidden_files",
    "test_if_range",
    "test_ignored_range_gets_the_whole_file",
    "test_last_modified_is_the_file_mtime",
    "test_max_ranges_setting",
    "test_multipart_boundary_is_unpredictable",
    "test_not_found",
    "test_preconditions",
    "test_several_ranges_are_multipart_byteranges",
    "test_single_range_is_a_plain_206",
    "test_symlink_inside_root_is_served",
    "test_symlink_outside_root",
    "test_symlink_to_a_hidden_file_is_hidden",
    "test_unsatisfiable_range_is_416",
]
# The cases a bucket runs here too (the rest run on a bucket in-process only).
_ON_BUCKETS = frozenset(
    {
        "test_common_headers",
        "test_empty_file",
        "test_head_matches_get",
        "test_ignored_range_gets_the_whole_file",
        "test_several_ranges_are_multipart_byteranges",
        "test_single_range_is_a_plain_206",
    }
)

pytestmark = [pytest.mark.clients]

backend = backend_fixture()
pool = module_server_pools("contract", lambda shared: add_extra_files(shared.root))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A local ROOT on every transfer path; a bucket (no sendfile, no fast path there) for the
    cases about framing."""
    paths = [
        pytest.param("off", "on", id="fast-read"),
        pytest.param("on", "on", id="fast-zero-copy"),
        pytest.param("on", "off", id="asgi-zero-copy"),
    ]
    if "fast_path" not in metafunc.fixturenames:
        return
    if "backend" not in metafunc.fixturenames:
        metafunc.parametrize(("zero_copy", "fast_path"), paths)
        return
    cases = [pytest.param("local", *p.values, id=f"local-{p.id}") for p in paths]
    if metafunc.function.__name__ in _ON_BUCKETS and not getattr(metafunc.function, "disk_only", False):
        cases.append(pytest.param("s3", "auto", "on", id="s3", marks=pytest.mark.engine))
    metafunc.parametrize(("backend", "zero_copy", "fast_path"), cases, indirect=["backend"], scope="module")


@pytest.fixture
def served(pool: ServerPool, zero_copy: str, fast_path: str) -> Served:
    """served("--flag", "value") -> a shared server on this test's transfer path."""

    def get(*flags: str) -> FerryServer:
        return pool.get(zero_copy, *flags, "--fast-path", fast_path)

    return get


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(follow_redirects=False, timeout=10) as client:
        yield client


def test_etag_changes_when_the_file_is_replaced_or_modified(
    ferry: ServerFactory, storage_tree: Path, http: httpx.Client
) -> None:
    server = ferry(storage_tree)
    path = storage_tree / "changing.txt"
    path.write_bytes(b"version one\n")
    os.utime(path, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))

    def get(**headers: str) -> httpx.Response:
        return fetch(http, server, "/files/changing.txt", **headers)

    first = get()
    assert first.content == b"version one\n"
    etag1 = first.headers["etag"]

    # Replaced atomically by a file of the same size and the same mtime: only the inode differs.
    tmp = storage_tree / "changing.txt.tmp"
    tmp.write_bytes(b"version two\n")
    os.utime(tmp, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    os.replace(tmp, path)
    second = get()
    assert second.content == b"version two\n"
    etag2 = second.headers["etag"]
    assert etag2 != etag1
    assert get(if_none_match=etag1).status_code == 200
    assert get(if_match=etag1).status_code == 412
    resumed = get(range="bytes=8-", if_range=etag1)
    assert (resumed.status_code, resumed.content) == (200, b"version two\n")

    # Modified in place (same size, the kernel sets a new mtime).
    with path.open("r+b") as f:
        f.write(b"VERSION")
    third = get()
    assert third.content == b"VERSION two\n"
    etag3 = third.headers["etag"]
    assert etag3 not in (etag1, etag2)
    assert third.headers["last-modified"] != first.headers["last-modified"]
    assert get(if_none_match=etag2).status_code == 200
    assert get(if_none_match=etag3).status_code == 304

    # Grown by an append.
    with path.open("ab") as log:
        log.write(b"more\n")
    fourth = get()
    assert fourth.content == b"VERSION two\nmore\n"
    assert fourth.headers["etag"] not in (etag1, etag2, etag3)
