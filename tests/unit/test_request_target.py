"""app/transfer/uvicorn_adapter.py `request_target`: the path, raw path and query a request
target gives a scope, as uvicorn's parsing gives them; targets asked again come from what was
kept, and give the same."""

from __future__ import annotations

import urllib.parse

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st

from app.transfer import uvicorn_adapter
from app.transfer.uvicorn_adapter import request_target


def uvicorn_s(url: bytes, root_path: str) -> tuple[str, bytes, bytes] | None:
    """What uvicorn's httptools protocol puts in the scope for this target."""
    try:
        parsed = httptools.parse_url(url)
        path = parsed.path.decode("ascii")
    except (httptools.HttpParserError, UnicodeDecodeError):
        return None
    if "%" in path:
        path = urllib.parse.unquote(path)
    return root_path + path, root_path.encode("ascii") + parsed.path, parsed.query or b""


def test_a_target_s_parts_as_uvicorn_gives_them() -> None:
    assert request_target(b"/files/a%20b.bin?download=1", "") == (
        "/files/a b.bin",
        b"/files/a%20b.bin",
        b"download=1",
    )
    assert request_target(b"/files/x", "/ferry") == ("/ferry/files/x", b"/ferry/files/x", b"")
    assert request_target(b"/files/caf\xc3\xa9", "") is None  # (not ASCII: uvicorn's parsing answers it)


@settings(max_examples=300, deadline=None)
@given(
    urls=st.lists(
        st.binary(max_size=40).map(lambda tail: b"/files/" + tail)
        | st.sampled_from([b"/files/same", b"/files/same?x=1", b"/files/%41"]),
        min_size=1,
        max_size=20,
    ),
    root_path=st.sampled_from(["", "/ferry"]),
)
def test_a_target_asked_again_gives_what_parsing_it_gives(urls: list[bytes], root_path: str) -> None:
    for url in urls + urls:
        assert request_target(url, root_path) == uvicorn_s(url, root_path)


def test_the_targets_kept_are_bounded() -> None:
    for n in range(uvicorn_adapter._KEPT_TARGETS + 10):
        request_target(b"/files/%d" % n, "")
    assert len(uvicorn_adapter._TARGETS) <= uvicorn_adapter._KEPT_TARGETS
    assert request_target(b"/files/0", "") == ("/files/0", b"/files/0", b"")
