"""Signed links (app/http/signing.py): a pinned known answer, tables, and properties that no
altered path, expiry, signature, method class, scope or network is ever accepted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.cli import main
from app.http.signing import (
    MAX_TTL,
    Link,
    Verdict,
    canonical_path,
    link_params,
    link_target,
    new_link,
    parse_duration,
    signature,
    verify,
)

NEW = b"new-key-0123456789abcdef"
OLD = b"old-key-0123456789abcdef"
NOW = 1_700_000_000
LATER = NOW + 3600


def check(
    link: Link,
    path: str,
    *,
    keys: tuple[bytes, ...] = (NEW,),
    signed_with: bytes = NEW,
    now: int = NOW,
    client: str | None = "192.0.2.7",
    method_class: str = "read",
) -> Verdict:
    params = link_params(signed_with, link)
    return verify(keys, path, params, client=client, now=now, method_class=method_class)


# --- the format, pinned --------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_the_documented_message_in_base64url() -> None:
    message = b"ferry-link-v1\nread\nfile\n1700003600\n\n/docs/a b.txt"
    expected = base64.urlsafe_b64encode(hmac.new(NEW, message, hashlib.sha256).digest()).rstrip(b"=")
    assert signature(NEW, Link("/docs/a b.txt", LATER)) == expected.decode()
    prefix = b"ferry-link-v1\nread\nprefix\n1700003600\n10.0.0.0/8\n/docs/"
    expected = base64.urlsafe_b64encode(hmac.new(NEW, prefix, hashlib.sha256).digest()).rstrip(b"=")
    assert signature(NEW, Link("/docs/", LATER, prefix=True, ip="10.0.0.0/8")) == expected.decode()


def test_link_target_percent_encodes_the_path_and_lists_the_parameters() -> None:
    link = Link("/docs/a b#1.txt", LATER)
    assert link_target(NEW, link) == f"/files/docs/a%20b%231.txt?expires={LATER}&sig={signature(NEW, link)}"
    folder = Link("/my docs/", LATER, prefix=True, ip="192.0.2.0/24")
    target = link_target(NEW, folder)
    assert target.startswith(f"/files/my%20docs/?expires={LATER}&prefix=/my+docs/&ip=192.0.2.0/24&sig=")


# --- tables ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "prefix", "expected"),
    [
        ("docs/a.txt", False, "/docs/a.txt"),
        ("/docs/a.txt", False, "/docs/a.txt"),
        ("docs", True, "/docs/"),
        ("docs/", True, "/docs/"),
        ("/", True, "/"),
        ("", True, "/"),
        ("résumé 数据/x y.bin", False, "/résumé 数据/x y.bin"),
        ("docs/", False, "/docs/"),  # only that listing
    ],
)
def test_canonical_path(path: str, prefix: bool, expected: str) -> None:
    assert canonical_path(path, prefix=prefix) == expected


@pytest.mark.parametrize(
    "path", ["", "/", "../etc/passwd", "a/../b", "a/./b", "a//b", "a\\b", "a\x00b", "a\nb", ".."]
)
def test_canonical_path_refuses_what_no_request_names_exactly(path: str) -> None:
    with pytest.raises(ValueError):
        canonical_path(path, prefix=False)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1", 1), ("90", 90), ("90s", 90), ("30m", 1800), ("1h", 3600), ("1H", 3600), ("7d", 604800)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-1h", "1.5h", "1y", "h", "367d", "1h30m", "9999999999"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


FILE = Link("/docs/a.txt", LATER)
FOLDER = Link("/docs/", LATER, prefix=True)


@pytest.mark.parametrize(
    ("link", "path", "expected"),
    [
        pytest.param(FILE, "/docs/a.txt", Verdict.VALID, id="file"),
        pytest.param(FILE, "/docs/b.txt", Verdict.INVALID, id="file-other-path"),
        pytest.param(FILE, "/docs/a.txt/", Verdict.INVALID, id="file-with-slash"),
        pytest.param(FILE, "/docs/A.txt", Verdict.INVALID, id="file-case"),
        pytest.param(FOLDER, "/docs/", Verdict.VALID, id="prefix-listing"),
        pytest.param(FOLDER, "/docs", Verdict.VALID, id="prefix-redirect"),
        pytest.param(FOLDER, "/docs/a.txt", Verdict.VALID, id="prefix-file"),
        pytest.param(FOLDER, "/docs/sub/deep/x.bin", Verdict.VALID, id="prefix-deep"),
        pytest.param(FOLDER, "/docs/sub/", Verdict.VALID, id="prefix-sub-listing"),
        pytest.param(FOLDER, "/docs-other/x", Verdict.INVALID, id="prefix-sibling-name"),
        pytest.param(FOLDER, "/docsx", Verdict.INVALID, id="prefix-longer-name"),
        pytest.param(FOLDER, "/", Verdict.INVALID, id="prefix-parent"),
        pytest.param(FOLDER, "/docs/../secret.txt", Verdict.INVALID, id="prefix-dotdot"),
        pytest.param(FOLDER, "/docs/./a.txt", Verdict.INVALID, id="prefix-dot"),
        pytest.param(FOLDER, "/docs//a.txt", Verdict.INVALID, id="prefix-empty-segment"),
        pytest.param(FOLDER, "/docs/a\\..\\b", Verdict.INVALID, id="prefix-backslash"),
        pytest.param(Link("/", LATER, prefix=True), "/anything/at/all", Verdict.VALID, id="root-prefix"),
    ],
)
def test_verify_paths(link: Link, path: str, expected: Verdict) -> None:
    assert check(link, path) is expected


def test_verify_expiry_is_checked_after_the_signature() -> None:
    assert check(FILE, "/docs/a.txt", now=LATER - 1) is Verdict.VALID
    assert check(FILE, "/docs/a.txt", now=LATER) is Verdict.EXPIRED
    assert check(FILE, "/docs/a.txt", now=LATER + 10**6) is Verdict.EXPIRED
    forged = [("expires", str(NOW - 5)), ("sig", "A" * 43)]
    assert verify([NEW], "/docs/a.txt", forged, client=None, now=NOW) is Verdict.INVALID


def test_verify_keys_rotate() -> None:
    assert check(FILE, "/docs/a.txt", keys=(NEW, OLD), signed_with=OLD) is Verdict.VALID
    assert check(FILE, "/docs/a.txt", keys=(NEW, OLD), signed_with=NEW) is Verdict.VALID
    assert check(FILE, "/docs/a.txt", keys=(NEW,), signed_with=OLD) is Verdict.INVALID  # rotated out
    assert check(FILE, "/docs/a.txt", keys=(), signed_with=NEW) is Verdict.INVALID


@pytest.mark.parametrize(
    ("network", "client", "expected"),
    [
        ("192.0.2.0/24", "192.0.2.7", Verdict.VALID),
        ("192.0.2.7/32", "192.0.2.7", Verdict.VALID),
        ("192.0.2.0/24", "192.0.3.7", Verdict.INVALID),
        ("192.0.2.0/24", None, Verdict.INVALID),
        ("192.0.2.0/24", "not-an-address", Verdict.INVALID),
        ("2001:db8::/32", "2001:db8::1", Verdict.VALID),
        ("2001:db8::/32", "192.0.2.7", Verdict.INVALID),
    ],
)
def test_verify_client_network(network: str, client: str | None, expected: Verdict) -> None:
    assert check(Link("/docs/a.txt", LATER, ip=network), "/docs/a.txt", client=client) is expected


@pytest.mark.parametrize(
    "params",
    [
        pytest.param([("expires", str(LATER))], id="no-sig"),
        pytest.param([("sig", signature(NEW, FILE))], id="no-expires"),
        pytest.param([("expires", "soon"), ("sig", signature(NEW, FILE))], id="expires-not-a-number"),
        pytest.param([("expires", "1" * 13), ("sig", signature(NEW, FILE))], id="expires-too-long"),
        pytest.param([("expires", str(LATER)), ("sig", signature(NEW, FILE) + "=")], id="sig-padded"),
        pytest.param([("expires", str(LATER)), ("sig", signature(NEW, FILE)[:-1])], id="sig-short"),
        pytest.param(
            [("expires", str(LATER)), ("sig", signature(NEW, FILE)), ("sig", "B" * 43)], id="sig-twice"
        ),
        pytest.param(
            [
                ("expires", str(LATER)),
                ("prefix", "/docs"),
                ("sig", signature(NEW, Link("/docs", LATER, True))),
            ],
            id="prefix-without-slash",
        ),
    ],
)
def test_verify_refuses_malformed_parameters(params: list[tuple[str, str]]) -> None:
    assert verify([NEW], "/docs/a.txt", params, client=None, now=NOW) is Verdict.INVALID


def test_verify_without_link_parameters_is_missing() -> None:
    assert verify([NEW], "/docs/a.txt", [], client=None, now=NOW) is Verdict.MISSING
    assert verify([NEW], "/docs/a.txt", [("inline", "1")], client=None, now=NOW) is Verdict.MISSING


def test_verify_ignores_other_parameters() -> None:
    params = [("inline", "1"), *link_params(NEW, FILE), ("download", "1")]
    assert verify([NEW], "/docs/a.txt", params, client=None, now=NOW) is Verdict.VALID


def test_new_link() -> None:
    assert new_link("docs/a.txt", ttl=60, now=NOW) == Link("/docs/a.txt", NOW + 60)
    assert new_link("docs", ttl=60, now=NOW, prefix=True, ip="10.1.2.3/8") == Link(
        "/docs/", NOW + 60, True, "10.0.0.0/8"
    )
    for ttl, ip in ((0, None), (MAX_TTL + 1, None), (60, "10.0.0.300")):
        with pytest.raises(ValueError):
            new_link("docs/a.txt", ttl=ttl, now=NOW, ip=ip)


# --- properties ----------------------------------------------------------------------------------

_segment = st.text(
    st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="/\\"), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
paths = st.lists(_segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
networks = st.one_of(
    st.none(),
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(v=4).map(str), st.integers(8, 32)),
)
keys = st.binary(min_size=16, max_size=64)
expiries = st.integers(NOW + 1, NOW + MAX_TTL)
signatures = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=43, max_size=43
)


def _link(path: str, expires: int, prefix: bool, network: str | None) -> Link:
    network = None if network is None else str(ipaddress.ip_network(network, strict=False))
    return Link(path + "/" if prefix else path, expires, prefix, network)


def _client(link: Link) -> str | None:
    if link.ip is None:
        return None
    return str(next(iter(ipaddress.ip_network(link.ip))))


@settings(max_examples=200, deadline=None)
@given(paths, expiries, st.booleans(), networks, keys)
def test_property_a_minted_link_verifies_until_it_expires(
    path: str, expires: int, prefix: bool, network: str | None, key: bytes
) -> None:
    link = _link(path, expires, prefix, network)
    params = link_params(key, link)
    client = _client(link)
    assert verify([OLD, key], link.path, params, client=client, now=NOW) is Verdict.VALID
    assert verify([key], link.path, params, client=client, now=expires) is Verdict.EXPIRED


@settings(max_examples=200, deadline=None)
@given(paths, expiries, st.booleans(), networks, keys, paths)
def test_property_no_other_path_is_accepted(
    path: str, expires: int, prefix: bool, network: str | None, key: bytes, other: str
) -> None:
    link = _link(path, expires, prefix, network)
    covered = other == link.path if not prefix else (other + "/").startswith(link.path)
    verdict = verify([key], other, link_params(key, link), client=_client(link), now=NOW)
    assert (verdict is Verdict.VALID) == covered


@settings(max_examples=200, deadline=None)
@given(paths, expiries, st.booleans(), networks, keys, st.data())
def test_property_any_altered_field_is_rejected(
    path: str, expires: int, prefix: bool, network: str | None, key: bytes, data: st.DataObject
) -> None:
    link = _link(path, expires, prefix, network)
    params = dict(link_params(key, link))
    client = _client(link)
    target = link.path
    field = data.draw(st.sampled_from(["expires", "sig", "prefix", "ip", "key", "method"]))
    method = "read"
    keys_used = [key]
    if field == "expires":
        params["expires"] = str(data.draw(expiries.filter(lambda e: e != expires)))
    elif field == "sig":
        params["sig"] = data.draw(signatures.filter(lambda s: s != params["sig"]))
    elif field == "prefix":
        if prefix:  # dropped, or another directory that still covers the request
            if data.draw(st.booleans()):
                del params["prefix"]
            else:
                params["prefix"] = "/"
        else:
            params["prefix"] = target.rpartition("/")[0] + "/"
    elif field == "ip":
        if network is None:
            params["ip"] = "0.0.0.0/0"
        else:
            params.pop("ip")
    elif field == "key":
        keys_used = [data.draw(keys.filter(lambda k: k != key))]
    else:
        method = data.draw(st.text(min_size=1, max_size=8).filter(lambda m: m != "read"))
    ordered = list(params.items())
    verdict = verify(keys_used, target, ordered, client=client or "192.0.2.1", now=NOW, method_class=method)
    assert verdict is Verdict.INVALID


# --- `ferry sign` --------------------------------------------------------------------------------


def test_ferry_sign_prints_one_verifiable_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no config/ferry.env here
    monkeypatch.setenv("FERRY_SIGNING_KEYS", f"{NEW.decode()},{OLD.decode()}")
    monkeypatch.setenv("FERRY_PORT", "9000")
    assert main(["sign", "docs/a b.txt", "--ttl", "2h"]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("http://127.0.0.1:9000/files/docs/a%20b.txt?expires=")
    query = url.partition("?")[2]
    params = [(name, value) for name, _, value in (item.partition("=") for item in query.split("&"))]
    expires = int(dict(params)["expires"])
    assert verify([NEW], "/docs/a b.txt", params, client=None, now=expires - 7200) is Verdict.VALID

    assert (
        main(["sign", "docs", "--prefix", "--ip", "10.9.8.7/8", "--public-url", "https://f.example/x/"]) == 0
    )
    url = capsys.readouterr().out.strip()
    assert url.startswith("https://f.example/x/files/docs/?expires=")
    assert "&prefix=/docs/&ip=10.0.0.0/8&sig=" in url


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        pytest.param(["sign", "a.txt"], {}, "FERRY_SIGNING_KEYS is not set", id="no-keys"),
        pytest.param(
            ["sign", "a.txt"], {"FERRY_SIGNING_KEYS": "short"}, "FERRY_SIGNING_KEYS", id="short-key"
        ),
        pytest.param(["sign", "../a.txt"], {"FERRY_SIGNING_KEYS": NEW.decode()}, "plain path", id="dotdot"),
        pytest.param(
            ["sign", "a.txt", "--ttl", "1y"], {"FERRY_SIGNING_KEYS": NEW.decode()}, "duration", id="ttl"
        ),
        pytest.param(["sign", "a.txt", "--ip", "x"], {"FERRY_SIGNING_KEYS": NEW.decode()}, "'x'", id="ip"),
    ],
)
def test_ferry_sign_refuses_with_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and needle in lines[0], captured.err
    assert captured.out == ""
