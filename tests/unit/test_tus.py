"""tus 1.0 header fields (app/http/tus.py): tables of what is accepted and refused, and round
trips of metadata and checksums."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.http import tus
from app.http.tus import TusError


def _status(call: object, *args: object) -> int:
    with pytest.raises(TusError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.status


@pytest.mark.parametrize(
    ("value", "status"),
    [(None, 412), ("0.2.2", 412), ("1.0", 412), ("", 412)],
)
def test_tus_resumable_refused(value: str | None, status: int) -> None:
    assert _status(tus.check_resumable, value) == status


def test_tus_resumable_accepted() -> None:
    tus.check_resumable("1.0.0")
    tus.check_resumable(" 1.0.0 ")


@pytest.mark.parametrize("value", ["-1", "+1", "1.5", "", " ", "0x10", "1e3", "１", "9" * 20, "1 2"])
def test_integers_refused(value: str) -> None:
    assert _status(tus.parse_integer, value, "Upload-Offset") == 400


@pytest.mark.parametrize(("value", "number"), [("0", 0), ("007", 7), (" 12 ", 12), (str(2**62), 2**62)])
def test_integers_accepted(value: str, number: int) -> None:
    assert tus.parse_integer(value, "Upload-Offset") == number
    assert tus.parse_integer(None, "Upload-Offset") is None


@pytest.mark.parametrize(
    ("length", "defer", "result"),
    [("10", None, 10), ("0", None, 0), (None, "1", None)],
)
def test_creation_accepted(length: str | None, defer: str | None, result: int | None) -> None:
    assert tus.parse_creation(length, defer) == result


@pytest.mark.parametrize(
    ("length", "defer"), [(None, None), ("10", "1"), (None, "0"), (None, "yes"), ("-1", None)]
)
def test_creation_refused(length: str | None, defer: str | None) -> None:
    assert _status(tus.parse_creation, length, defer) == 400


def test_metadata_as_clients_send_it() -> None:
    # tuspy: "key b64" pairs joined by ","; tus-js-client the same; a key alone is an empty value.
    header = "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential,path ZG9jcy9h"
    assert tus.parse_metadata(header) == {
        "filename": b"world_domination_plan.pdf",
        "is_confidential": b"",
        "path": b"docs/a",
    }
    assert tus.parse_metadata(None) == {} and tus.parse_metadata("  ") == {}


@pytest.mark.parametrize(
    "header",
    ["a b c", "a !!!", ",", "a YQ==,a YQ==", "a YQ", "é YQ==", "x" * (tus.MAX_METADATA + 1)],
)
def test_metadata_refused(header: str) -> None:
    assert _status(tus.parse_metadata, header) == 400


_KEYS = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","), min_size=1
)


@given(st.dictionaries(_KEYS, st.binary(max_size=200), max_size=8))
def test_metadata_round_trip(metadata: dict[str, bytes]) -> None:
    assert tus.parse_metadata(tus.format_metadata(metadata)) == metadata


@given(st.sampled_from(tus.CHECKSUM_ALGORITHMS), st.binary(max_size=300))
def test_checksum_round_trip(algorithm: str, data: bytes) -> None:
    digest = hashlib.new(algorithm, data).digest()
    header = f"{algorithm} {base64.b64encode(digest).decode()}"
    assert tus.parse_checksum(header) == (algorithm, digest)
    assert tus.parse_checksum(f"{algorithm.upper()} {header.partition(' ')[2]}") == (algorithm, digest)


@pytest.mark.parametrize(
    "header",
    [
        "crc32 AAAAAA==",  # an algorithm Ferry does not compute: 400, as tus says
        "sha256",
        "sha256 not-base64!",
        f"sha256 {base64.b64encode(b'short').decode()}",  # the wrong length for the algorithm
        f"sha1 {base64.b64encode(bytes(32)).decode()}",
    ],
)
def test_checksum_refused(header: str) -> None:
    assert _status(tus.parse_checksum, header) == 400
    assert tus.parse_checksum(None) is None


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/offset+octet-stream", True),
        ("Application/Offset+Octet-Stream; charset=x", True),
        ("application/octet-stream", False),
        (None, False),
        ("application/partial-upload", False),
    ],
)
def test_patch_content_type(content_type: str | None, ok: bool) -> None:
    if ok:
        tus.check_patch(content_type)
    else:
        assert _status(tus.check_patch, content_type) == 415


def test_offsets_and_lengths() -> None:
    tus.check_offset(5, 5)
    assert _status(tus.check_offset, 4, 5) == 409
    assert _status(tus.check_offset, None, 5) == 400
    tus.check_length(None, 10, 100)
    tus.check_length(100, 10, 100)
    assert _status(tus.check_length, 101, 0, 100) == 413
    assert _status(tus.check_length, 9, 10, 100) == 400


@pytest.mark.parametrize(
    ("metadata", "path"),
    [
        ({"path": b"docs/a.bin"}, "docs/a.bin"),
        ({"path": b"/docs/a.bin", "filename": b"ignored"}, "docs/a.bin"),
        ({"path": b"docs/", "filename": b"a.bin"}, "docs/a.bin"),
        ({"folder": b"/docs/x/", "filename": b"C:\\Users\\me\\a.bin"}, "docs/x/a.bin"),
        ({"filename": b"../../a.bin"}, "a.bin"),
        ({"filename": "résumé.txt".encode()}, "résumé.txt"),
    ],
)
def test_target_path(metadata: dict[str, bytes], path: str) -> None:
    assert tus.target_path(metadata) == path


@pytest.mark.parametrize(
    "metadata",
    [{}, {"path": b"docs/"}, {"filename": b".."}, {"filename": b"dir/"}, {"path": b"\xff"}],
)
def test_target_path_refused(metadata: dict[str, bytes]) -> None:
    assert _status(tus.target_path, metadata) == 400


def test_options_and_expires() -> None:
    headers = tus.options_headers(1024)
    assert headers["tus-version"] == "1.0.0" and headers["tus-max-size"] == "1024"
    assert set(headers["tus-extension"].split(",")) >= {"creation", "termination", "checksum", "expiration"}
    assert "sha256" in headers["tus-checksum-algorithm"].split(",")
    assert tus.format_expires(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
