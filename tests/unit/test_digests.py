"""Integrity fields (RFC 9530, RFC 3230), SHA256SUMS lines, Metalink documents and the digest
builder: tables from the RFCs and properties."""

from __future__ import annotations

import base64
import hashlib
import random
import xml.etree.ElementTree as ET
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.http.conditional import RequestConditions, Validators
from app.http.digests import (
    DigestFieldError,
    checksum_line,
    format_digest_field,
    format_legacy_digest,
    parse_digest_field,
    parse_want_field,
    wanted_algorithm,
)
from app.http.metalink import Mirror, Pieces, link_field, metalink_document
from app.http.plan import DownloadRequest, FileFacts, plan_download
from app.storage.digests import MIN_PIECE, DigestBuilder, crc32, piece_length
from app.storage.values import EMPTY_DIGEST

# RFC 9530 Appendix D.1: {"hello": "world"}, and the digests it gives for it.
HELLO = b'{"hello": "world"}'
SHA256_B64 = "X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="
SHA512_B64 = "WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew=="
NS = {"m": "urn:ietf:params:xml:ns:metalink"}


def test_rfc9530_example_digests() -> None:
    assert base64.b64encode(hashlib.sha256(HELLO).digest()).decode() == SHA256_B64
    assert base64.b64encode(hashlib.sha512(HELLO).digest()).decode() == SHA512_B64


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (f"sha-256=:{SHA256_B64}:", {"sha-256": SHA256_B64}),
        (f"sha-512=:{SHA512_B64}:", {"sha-512": SHA512_B64}),
        (f"sha-256=:{SHA256_B64}:, sha-512=:{SHA512_B64}:", {"sha-256": SHA256_B64, "sha-512": SHA512_B64}),
        (f"sha-256=:{SHA256_B64}:;x=1", {"sha-256": SHA256_B64}),  # parameters are ignored
        (f"md5=:AAAA:, sha-256=:{SHA256_B64}:", {"sha-256": SHA256_B64}),  # unknown algorithms skipped
        ("md5=:AAAA:", {}),
    ],
)
def test_parse_digest_field(field: str, expected: dict[str, str]) -> None:
    assert parse_digest_field(field) == {k: base64.b64decode(v) for k, v in expected.items()}


@pytest.mark.parametrize(
    "field",
    [
        "",
        "sha-256",  # a boolean, not a byte sequence
        "unixsum=30637",  # RFC 9530 values are byte sequences, whatever the algorithm
        "sha-256=abc",
        f"sha-256={SHA256_B64}",  # RFC 3230 form: no colons
        "sha-256=:not base64!:",
        "sha-256=:AAAA:",  # the wrong length
        f"SHA-256=:{SHA256_B64}:",  # keys are lower case
        f"sha-256=:{SHA256_B64}:,,",
        "x" * 5000,
    ],
)
def test_parse_digest_field_refuses_malformed(field: str) -> None:
    with pytest.raises(DigestFieldError):
        parse_digest_field(field)


@pytest.mark.parametrize(
    ("field", "wants", "preferred"),
    [
        ("sha-256=10", {"sha-256": 10}, "sha-256"),
        ("sha-512=3, sha-256=10", {"sha-512": 3, "sha-256": 10}, "sha-256"),
        ("sha-256=1, sha-512=3", {"sha-256": 1, "sha-512": 3}, "sha-512"),
        ("sha-256=5, sha-512=5", {"sha-256": 5, "sha-512": 5}, "sha-256"),
        ("sha-256=0", {"sha-256": 0}, None),  # 0: not acceptable
        ("unixsum=10", {}, None),
        ("sha-256=11", {}, None),
        ("sha-256=x", {}, None),
        ("SHA-256=10", {}, None),  # a malformed field is ignored, never an error
    ],
)
def test_parse_want_field(field: str, wants: dict[str, int], preferred: str | None) -> None:
    assert parse_want_field(field) == wants
    assert wanted_algorithm(parse_want_field(field)) == preferred


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64))
def test_digest_field_round_trip(sha256: bytes, sha512: bytes) -> None:
    digests = {"sha-256": sha256, "sha-512": sha512}
    assert parse_digest_field(format_digest_field(digests)) == digests


def test_legacy_digest_uses_rfc5843_names() -> None:
    digest = hashlib.sha256(HELLO).digest()
    assert format_legacy_digest({"sha-256": digest}) == f"SHA-256={SHA256_B64}"


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("a.txt", "{h}  a.txt\n"),
        ("with space.iso", "{h}  with space.iso\n"),
        ("dir/ü.bin", "{h}  dir/ü.bin\n"),
        ("back\\slash", "\\{h}  back\\\\slash\n"),
        ("new\nline", "\\{h}  new\\nline\n"),
        ("carriage\rreturn", "\\{h}  carriage\\rreturn\n"),
    ],
)
def test_checksum_line_as_gnu_sha256sum_writes_it(name: str, line: str) -> None:
    h = hashlib.sha256(name.encode()).hexdigest()
    assert checksum_line(h, name) == line.format(h=h)


def _unescape(line: str) -> tuple[str, str]:
    """What `sha256sum -c` reads back from a line."""
    escaped = line.startswith("\\")
    digest, _, name = line[1:-1].partition("  ") if escaped else line[:-1].partition("  ")
    if escaped:
        out, i = [], 0
        while i < len(name):
            if name[i] == "\\":
                out.append({"\\": "\\", "n": "\n", "r": "\r"}[name[i + 1]])
                i += 2
            else:
                out.append(name[i])
                i += 1
        name = "".join(out)
    return digest, name


@given(st.text(min_size=1).filter(lambda s: "\x00" not in s))
def test_checksum_line_round_trips_any_name(name: str) -> None:
    h = hashlib.sha256(name.encode()).hexdigest()
    line = checksum_line(h, name)
    assert line.count("\n") == 1 and line.endswith("\n")
    assert _unescape(line) == (h, name)


def test_metalink_document_is_rfc5854() -> None:
    data = random.Random(3).randbytes(3 * MIN_PIECE + 5)
    builder = DigestBuilder(len(data))
    builder.update(data)
    digest = builder.result()
    urls = [
        Mirror("http://127.0.0.1:8000/files/a%20%26%20b.iso", 1),
        Mirror("https://m.example/a.iso?x=1&y=2", 2),
    ]
    pieces = Pieces(digest.piece_length, digest.piece_hexes())
    text = metalink_document(
        name='a & b "<1>".iso',
        size=len(data),
        sha256=digest.hex,
        urls=urls,
        pieces=pieces,
        generator="Ferry/1",
    )
    root = ET.fromstring(text.encode())
    file = root.find("m:file", NS)
    assert file is not None and file.get("name") == 'a & b "<1>".iso'
    assert file.findtext("m:size", namespaces=NS) == str(len(data))
    assert file.findtext("m:hash[@type='sha-256']", namespaces=NS) == hashlib.sha256(data).hexdigest()
    got = [(u.text, u.get("priority")) for u in file.findall("m:url", NS)]
    assert got == [(m.url, str(m.priority)) for m in urls]
    node = file.find("m:pieces", NS)
    assert node is not None and node.get("length") == str(MIN_PIECE) and node.get("type") == "sha-256"
    expected = [hashlib.sha256(data[i : i + MIN_PIECE]).hexdigest() for i in range(0, len(data), MIN_PIECE)]
    assert [h.text for h in node.findall("m:hash", NS)] == expected


def test_link_field() -> None:
    field = link_field(describedby="/files/a.iso?meta4", duplicates=[Mirror("https://m.example/a.iso", 1)])
    assert field == (
        '</files/a.iso?meta4>; rel=describedby; type="application/metalink4+xml", '
        "<https://m.example/a.iso>; rel=duplicate; pri=1"
    )
    assert link_field(describedby=None, duplicates=[]) == ""


@pytest.mark.parametrize(
    ("size", "length"),
    [(0, MIN_PIECE), (MIN_PIECE * 1024, MIN_PIECE), (MIN_PIECE * 1024 + 1, 2 * MIN_PIECE), (2**40, 2**30)],
)
def test_piece_length_keeps_at_most_1024_pieces(size: int, length: int) -> None:
    assert piece_length(size) == length


@given(st.lists(st.integers(min_value=0, max_value=3 * MIN_PIECE // 2), min_size=1, max_size=4))
def test_builder_pieces_match_hashing_each_piece(writes: list[int]) -> None:
    data = random.Random(sum(writes)).randbytes(sum(writes))
    builder = DigestBuilder(len(data), extra=("sha512",))
    offset = 0
    for n in writes:  # however the bytes arrive, the digests are the same
        builder.update(data[offset : offset + n])
        offset += n
    result = builder.result()
    assert result.sha256 == hashlib.sha256(data).digest()
    assert result.crc32 == zlib.crc32(data)  # over the whole file, across piece boundaries
    assert builder.digest("sha512") == hashlib.sha512(data).digest()
    expected = [hashlib.sha256(data[i : i + MIN_PIECE]).digest() for i in range(0, len(data), MIN_PIECE)]
    if len(expected) > 1:
        assert (result.piece_length, result.pieces) == (MIN_PIECE, b"".join(expected))
    else:
        assert result.pieces == b""


@pytest.mark.parametrize("expected_size", [None, 5 * MIN_PIECE + 3])
def test_builder_crc32_is_zlibs_over_every_byte(expected_size: int | None) -> None:
    """What a ZIP entry needs, the same with or without piece hashes (an upload has none)."""
    data = random.Random(7).randbytes(5 * MIN_PIECE + 3)
    builder = DigestBuilder(expected_size)
    for offset in range(0, len(data), 1_000_003):  # reads that straddle the piece boundaries
        builder.update(memoryview(data)[offset : offset + 1_000_003])
    result = builder.result()
    assert result.crc32 == zlib.crc32(data) and result.sha256 == hashlib.sha256(data).digest()
    assert len(result.pieces) == (6 * 32 if expected_size else 0)


def test_builder_of_no_bytes_has_the_empty_digest() -> None:
    assert DigestBuilder().result() == EMPTY_DIGEST
    assert EMPTY_DIGEST.crc32 == zlib.crc32(b"") == 0


# -- in the download plan ----------------------------------------------------------------------

ETAG = '"1-2-3-4"'
SHA = hashlib.sha256(b"0123456789").digest()


def _plan(method: str = "GET", rng: str | None = None, **conditions: str) -> dict[str, str]:
    facts = FileFacts(
        size=10,
        validators=Validators(etag=ETAG, last_modified=784111777),
        content_type="text/plain",
        content_disposition="attachment",
        digests={"sha-256": SHA},
        link="</files/x?meta4>; rel=describedby",
    )
    request = DownloadRequest(method=method, range=rng, conditions=RequestConditions(**conditions))
    plan = plan_download(request, facts, max_ranges=4, now=784111777 + 60)
    return {"status": str(plan.status), **dict(plan.headers)}


@pytest.mark.parametrize(
    ("method", "rng", "conditions", "status"),
    [
        ("GET", None, {}, "200"),
        ("HEAD", None, {}, "200"),
        ("GET", "bytes=2-5", {}, "206"),
        ("GET", "bytes=0-1,5-6", {}, "206"),
        ("GET", None, {"if_none_match": ETAG}, "304"),
        ("HEAD", None, {"if_none_match": ETAG}, "304"),
    ],
)
def test_repr_digest_describes_the_representation(
    method: str, rng: str | None, conditions: dict[str, str], status: str
) -> None:
    headers = _plan(method, rng, **conditions)
    assert headers["status"] == status
    assert headers["repr-digest"] == f"sha-256=:{base64.b64encode(SHA).decode()}:"
    assert headers["digest"] == f"SHA-256={base64.b64encode(SHA).decode()}"
    assert "link" in headers


@pytest.mark.parametrize(
    ("rng", "conditions", "status"),
    [(None, {"if_match": '"other"'}, "412"), ("bytes=50-60", {}, "416")],
)
def test_no_repr_digest_without_the_representation(
    rng: str | None, conditions: dict[str, str], status: str
) -> None:
    headers = _plan("GET", rng, **conditions)
    assert headers["status"] == status
    assert "repr-digest" not in headers and "digest" not in headers


def test_the_fast_crc32_is_the_one_in_use() -> None:
    # python-isal is a dependency: its CRC-32 (ISA-L's) serves uploads, hashes and ZIP entries.
    from isal import isal_zlib

    assert crc32 is isal_zlib.crc32


@given(st.lists(st.binary(max_size=3000), max_size=8), st.integers(0, 2**32 - 1))
def test_crc32_continues_as_zlibs_does(pieces: list[bytes], start: int) -> None:
    value = start
    for piece in pieces:
        value = crc32(memoryview(piece)[1:], value)
    assert value == zlib.crc32(b"".join(piece[1:] for piece in pieces), start)
