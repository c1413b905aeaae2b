"""Preconditions (RFC 9110 §13), validators (§8.8) and HTTP-date / entity-tag parsing (§5.6.7, §8.8.3)."""

from __future__ import annotations

import calendar
import email.utils

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.http.conditional import (
    Precondition,
    RequestConditions,
    Validators,
    evaluate,
    if_range_matches,
    make_validators,
)
from app.http.headers import EntityTag, format_http_date, parse_etag_list, parse_http_date

# RFC 9110 §5.6.7's example instant, in its three forms.
T = 784111777
IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
RFC850 = "Sunday, 06-Nov-94 08:49:37 GMT"
ASCTIME = "Sun Nov  6 08:49:37 1994"
EARLIER = "Sun, 06 Nov 1994 08:49:36 GMT"  # T - 1
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"  # T + 1

ETAG = '"abc"'
CURRENT = Validators(etag=ETAG, last_modified=T)
COMMA = Validators(etag='"a,b"', last_modified=T)

P = Precondition


def cond(
    *,
    im: str | None = None,
    inm: str | None = None,
    ims: str | None = None,
    ius: str | None = None,
) -> RequestConditions:
    return RequestConditions(if_match=im, if_none_match=inm, if_modified_since=ims, if_unmodified_since=ius)


EVALUATE_CASES = [
    pytest.param("GET", cond(), CURRENT, P.PROCEED, id="no-conditions"),
    # §13.1.1 If-Match: strong comparison; "*" matches any current representation.
    pytest.param("GET", cond(im=ETAG), CURRENT, P.PROCEED, id="if-match-equal"),
    pytest.param("GET", cond(im='"xyz"'), CURRENT, P.FAILED, id="if-match-different"),
    pytest.param("GET", cond(im="*"), CURRENT, P.PROCEED, id="if-match-star"),
    pytest.param("GET", cond(im=" * "), CURRENT, P.PROCEED, id="if-match-star-ows"),
    pytest.param("GET", cond(im='W/"abc"'), CURRENT, P.FAILED, id="if-match-weak-never-matches"),
    pytest.param("GET", cond(im='"xyz", "abc"'), CURRENT, P.PROCEED, id="if-match-list-second"),
    pytest.param("GET", cond(im='W/"abc", "abc"'), CURRENT, P.PROCEED, id="if-match-list-strong-wins"),
    pytest.param("GET", cond(im='"xyz" ,W/"abc"'), CURRENT, P.FAILED, id="if-match-list-only-weak"),
    pytest.param("PUT", cond(im='"xyz"'), CURRENT, P.FAILED, id="if-match-different-put"),
    pytest.param("GET", cond(im="abc"), CURRENT, P.FAILED, id="if-match-unquoted-malformed"),
    pytest.param("GET", cond(im='"abc'), CURRENT, P.FAILED, id="if-match-unterminated-malformed"),
    pytest.param("GET", cond(im='"abc" "xyz"'), CURRENT, P.FAILED, id="if-match-missing-comma"),
    pytest.param("GET", cond(im='w/"abc"'), CURRENT, P.FAILED, id="if-match-lowercase-w-malformed"),
    pytest.param("GET", cond(im=""), CURRENT, P.FAILED, id="if-match-empty"),
    pytest.param("GET", cond(im='"a,b"'), COMMA, P.PROCEED, id="if-match-tag-with-comma"),
    pytest.param("GET", cond(im='"a"'), COMMA, P.FAILED, id="if-match-comma-tag-not-split"),
    # §13.1.4 If-Unmodified-Since: true when Last-Modified <= date; ignored with If-Match or bad date.
    pytest.param("GET", cond(ius=IMF), CURRENT, P.PROCEED, id="ius-equal"),
    pytest.param("GET", cond(ius=LATER), CURRENT, P.PROCEED, id="ius-later"),
    pytest.param("GET", cond(ius=EARLIER), CURRENT, P.FAILED, id="ius-earlier"),
    pytest.param("DELETE", cond(ius=EARLIER), CURRENT, P.FAILED, id="ius-earlier-delete"),
    pytest.param("GET", cond(ius=RFC850), CURRENT, P.PROCEED, id="ius-rfc850-equal"),
    pytest.param("GET", cond(ius=ASCTIME), CURRENT, P.PROCEED, id="ius-asctime-equal"),
    pytest.param("GET", cond(im=ETAG, ius=EARLIER), CURRENT, P.PROCEED, id="ius-ignored-with-if-match"),
    pytest.param("GET", cond(ius="not a date"), CURRENT, P.PROCEED, id="ius-invalid-ignored"),
    pytest.param("GET", cond(ius=""), CURRENT, P.PROCEED, id="ius-empty-ignored"),
    # §13.1.2 If-None-Match: weak comparison; 304 for GET/HEAD, 412 for other methods.
    pytest.param("GET", cond(inm=ETAG), CURRENT, P.NOT_MODIFIED, id="inm-equal-get"),
    pytest.param("HEAD", cond(inm=ETAG), CURRENT, P.NOT_MODIFIED, id="inm-equal-head"),
    pytest.param("POST", cond(inm=ETAG), CURRENT, P.FAILED, id="inm-equal-post"),
    pytest.param("PUT", cond(inm=ETAG), CURRENT, P.FAILED, id="inm-equal-put"),
    pytest.param("DELETE", cond(inm=ETAG), CURRENT, P.FAILED, id="inm-equal-delete"),
    pytest.param("GET", cond(inm='W/"abc"'), CURRENT, P.NOT_MODIFIED, id="inm-weak-matches"),
    pytest.param("GET", cond(inm='"xyz"'), CURRENT, P.PROCEED, id="inm-different"),
    pytest.param("GET", cond(inm="*"), CURRENT, P.NOT_MODIFIED, id="inm-star-get"),
    pytest.param("PUT", cond(inm="*"), CURRENT, P.FAILED, id="inm-star-put"),
    pytest.param("GET", cond(inm='"x", "y", W/"abc"'), CURRENT, P.NOT_MODIFIED, id="inm-list-third"),
    pytest.param("GET", cond(inm='"x", "y"'), CURRENT, P.PROCEED, id="inm-list-none"),
    pytest.param("GET", cond(inm='"x", "a,b"'), COMMA, P.NOT_MODIFIED, id="inm-tag-with-comma"),
    pytest.param("GET", cond(inm='"a", "b"'), COMMA, P.PROCEED, id="inm-comma-tag-not-split"),
    pytest.param("GET", cond(inm="abc"), CURRENT, P.PROCEED, id="inm-malformed-no-match"),
    # §13.1.3 If-Modified-Since: 304 when Last-Modified <= date; GET/HEAD only; ignored with
    # If-None-Match or an invalid date.
    pytest.param("GET", cond(ims=IMF), CURRENT, P.NOT_MODIFIED, id="ims-equal"),
    pytest.param("HEAD", cond(ims=IMF), CURRENT, P.NOT_MODIFIED, id="ims-equal-head"),
    pytest.param("GET", cond(ims=LATER), CURRENT, P.NOT_MODIFIED, id="ims-later"),
    pytest.param("GET", cond(ims=EARLIER), CURRENT, P.PROCEED, id="ims-earlier"),
    pytest.param("GET", cond(ims=RFC850), CURRENT, P.NOT_MODIFIED, id="ims-rfc850"),
    pytest.param("GET", cond(ims=ASCTIME), CURRENT, P.NOT_MODIFIED, id="ims-asctime"),
    pytest.param("POST", cond(ims=IMF), CURRENT, P.PROCEED, id="ims-ignored-for-post"),
    pytest.param("PUT", cond(ims=LATER), CURRENT, P.PROCEED, id="ims-ignored-for-put"),
    pytest.param("GET", cond(inm='"xyz"', ims=IMF), CURRENT, P.PROCEED, id="ims-ignored-with-inm"),
    pytest.param("GET", cond(ims="yesterday"), CURRENT, P.PROCEED, id="ims-invalid-ignored"),
    # §13.2.2 order: If-Match / If-Unmodified-Since before If-None-Match / If-Modified-Since.
    pytest.param("GET", cond(im='"xyz"', inm=ETAG), CURRENT, P.FAILED, id="if-match-fail-first"),
    pytest.param("GET", cond(im=ETAG, inm=ETAG), CURRENT, P.NOT_MODIFIED, id="if-match-pass-then-inm"),
    pytest.param("GET", cond(ius=EARLIER, inm=ETAG), CURRENT, P.FAILED, id="ius-fail-before-inm"),
    pytest.param("GET", cond(ius=EARLIER, ims=IMF), CURRENT, P.FAILED, id="ius-fail-before-ims"),
    pytest.param("GET", cond(im=ETAG, ims=IMF), CURRENT, P.NOT_MODIFIED, id="if-match-pass-then-ims"),
    pytest.param("GET", cond(im="*", inm='"xyz"', ims=IMF), CURRENT, P.PROCEED, id="all-but-ims-ignored"),
]


@pytest.mark.parametrize(("method", "conditions", "current", "expected"), EVALUATE_CASES)
def test_evaluate_rfc9110_precedence(
    method: str, conditions: RequestConditions, current: Validators, expected: Precondition
) -> None:
    assert evaluate(method, conditions, current) is expected


IF_RANGE_CASES = [
    # §13.1.5: an entity-tag matches only by the strong comparison.
    pytest.param(ETAG, T + 10, True, id="strong-equal"),
    pytest.param(f" {ETAG} ", T + 10, True, id="strong-equal-ows"),
    pytest.param('W/"abc"', T + 10, False, id="weak-never"),
    pytest.param('"stale"', T + 10, False, id="stale-tag"),
    pytest.param('"abc", "xyz"', T + 10, False, id="list-is-not-an-entity-tag"),
    # A date matches only when it equals Last-Modified exactly and that is a strong validator,
    # i.e. at least one second older than the response (§8.8.2.2).
    pytest.param(IMF, T + 1, True, id="date-equal-one-second-old"),
    pytest.param(IMF, T + 3600, True, id="date-equal-an-hour-old"),
    pytest.param(RFC850, T + 3600, True, id="date-equal-rfc850"),
    pytest.param(ASCTIME, T + 3600, True, id="date-equal-asctime"),
    pytest.param(IMF, T, False, id="date-equal-but-modified-this-second"),
    pytest.param(EARLIER, T + 3600, False, id="date-earlier"),
    pytest.param(LATER, T + 3600, False, id="date-later"),
    pytest.param("yesterday", T + 3600, False, id="garbage"),
    pytest.param("", T + 3600, False, id="empty"),
    pytest.param("*", T + 3600, False, id="star"),
]


@pytest.mark.parametrize(("if_range", "now", "expected"), IF_RANGE_CASES)
def test_if_range_matches_strong_tag_or_exact_date(if_range: str, now: int, expected: bool) -> None:
    assert if_range_matches(if_range, CURRENT, now=now) is expected


STAT = {"dev": 0x803, "ino": 123456, "size": 10_000, "mtime_ns": T * 10**9 + 500_000_000}


@pytest.mark.parametrize("field", ["dev", "ino", "size", "mtime_ns"])
def test_make_validators_etag_changes_with_each_stat_field(field: str) -> None:
    before = make_validators(**STAT)
    after = make_validators(**{**STAT, field: STAT[field] + 1})
    assert before.etag != after.etag


def test_make_validators_is_deterministic() -> None:
    assert make_validators(**STAT) == make_validators(**STAT)


def test_make_validators_etag_is_a_strong_entity_tag() -> None:
    etag = make_validators(**STAT).etag
    # §8.8.3: entity-tag = [ weak ] opaque-tag; opaque-tag = DQUOTE *etagc DQUOTE
    assert etag.startswith('"') and etag.endswith('"') and len(etag) >= 2
    assert all(c == "\x21" or "\x23" <= c <= "\x7e" for c in etag[1:-1])
    assert parse_etag_list(etag) == [EntityTag(etag, weak=False)]


def test_make_validators_last_modified_is_whole_seconds() -> None:
    v = make_validators(**STAT)
    assert v.last_modified == T
    assert v.last_modified_header == IMF


def test_make_validators_sub_second_change_keeps_last_modified_but_changes_etag() -> None:
    before = make_validators(**STAT)
    after = make_validators(**{**STAT, "mtime_ns": STAT["mtime_ns"] + 1})
    assert before.last_modified == after.last_modified
    assert before.etag != after.etag


ETAG_LIST_CASES = [
    pytest.param("*", None, id="star"),
    pytest.param('"a"', [EntityTag('"a"', False)], id="one-strong"),
    pytest.param('W/"a"', [EntityTag('"a"', True)], id="one-weak"),
    pytest.param('""', [EntityTag('""', False)], id="empty-opaque"),
    pytest.param('"a", W/"b"', [EntityTag('"a"', False), EntityTag('"b"', True)], id="two"),
    pytest.param('"a,b", "c"', [EntityTag('"a,b"', False), EntityTag('"c"', False)], id="comma-inside"),
    pytest.param(' , "a" ,, ', [EntityTag('"a"', False)], id="empty-elements"),
    pytest.param('"a"\t,\t"b"', [EntityTag('"a"', False), EntityTag('"b"', False)], id="tabs"),
    pytest.param("", [], id="empty"),
    pytest.param("a", [], id="unquoted"),
    pytest.param('"a', [], id="unterminated"),
    pytest.param('"a" "b"', [], id="missing-comma"),
    pytest.param('w/"a"', [], id="lowercase-weak"),
    pytest.param('W/ "a"', [], id="space-after-weak"),
    pytest.param('"a", *', [], id="star-in-list"),
]


@pytest.mark.parametrize(("value", "expected"), ETAG_LIST_CASES)
def test_parse_etag_list_table(value: str, expected: list[EntityTag] | None) -> None:
    assert parse_etag_list(value) == expected


@settings(max_examples=300)
@given(st.text())
def test_parse_etag_list_never_raises(value: str) -> None:
    tags = parse_etag_list(value)
    assert tags is None or all(t.opaque.startswith('"') and t.opaque.endswith('"') for t in tags)


@pytest.mark.parametrize(
    "value", [IMF, RFC850, ASCTIME, f"  {IMF}  "], ids=["imf", "rfc850", "asctime", "ows"]
)
def test_parse_http_date_accepts_all_three_forms(value: str) -> None:
    assert parse_http_date(value) == T


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "yesterday",
        "0",
        "784111777",
        "-1",
        "2024-01-01T00:00:00Z",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994",
        "Sun, 06 Nov 99999 08:49:37 GMT",
        '"abc"',
    ],
)
def test_parse_http_date_garbage_is_none(value: str) -> None:
    assert parse_http_date(value) is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("Sun, 06 Nov 1994 25:49:37 GMT", id="hour_25"),
        pytest.param("Sun, 31 Feb 1994 08:49:37 GMT", id="no_31_february"),
        pytest.param("Sun, 06 Nov 1994 08:49:60 GMT", id="leap_second"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 +0100", id="numeric_zone"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 EST", id="other_zone"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT junk", id="trailing_junk"),
        pytest.param("Sun, 6 Nov 1994 08:49:37 GMT", id="one_digit_day_in_imf"),
        pytest.param("sun, 06 nov 1994 08:49:37 gmt", id="case_is_significant"),
    ],
)
def test_parse_http_date_rejects_what_is_not_an_http_date(value: str) -> None:
    # RFC 9110 §13.1.3/§13.1.4: an invalid date is ignored, so it must not parse at all.
    assert parse_http_date(value) is None


def test_parse_http_date_two_digit_years_stay_within_fifty_years() -> None:
    # RFC 9110 §5.6.7: a year more than 50 years in the future is read as the past century.
    now_2026 = 1_795_000_000
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now=now_2026) == T
    assert parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT", now=now_2026) == 3_155_760_000  # 2070
    assert parse_http_date("Saturday, 01-Jan-77 00:00:00 GMT", now=now_2026) == 220_924_800  # 1977


@pytest.mark.parametrize("timestamp", [0, T, 2**31, 253402300799])
def test_format_http_date_round_trips(timestamp: int) -> None:
    text = format_http_date(timestamp)
    assert text.endswith(" GMT")
    assert parse_http_date(text) == timestamp


def test_format_http_date_is_imf_fixdate() -> None:
    assert format_http_date(T) == IMF


FIRST_SECOND = calendar.timegm((1, 1, 1, 0, 0, 0))  # 0001-01-01T00:00:00Z
LAST_SECOND = calendar.timegm((9999, 12, 31, 23, 59, 59))


@given(st.integers(min_value=FIRST_SECOND, max_value=LAST_SECOND))
def test_format_http_date_is_the_standard_librarys_for_years_1_to_9999(timestamp: int) -> None:
    assert format_http_date(timestamp) == email.utils.formatdate(timestamp, usegmt=True)


def test_format_http_date_writes_years_past_9999_where_the_standard_library_raises() -> None:
    # Why format_http_date is not email.utils.formatdate: a file's mtime can be past 9999 (tmpfs
    # takes any 64-bit time), and its Last-Modified must not turn a download into a 500.
    with pytest.raises(ValueError):
        email.utils.formatdate(LAST_SECOND + 1, usegmt=True)
    assert format_http_date(LAST_SECOND + 1) == "Sat, 01 Jan 10000 00:00:00 GMT"


DATE_ALPHABET = "SunMoTeWdhFriaJFbMpyAglOcNvD, -:0123456789GMT+"


@settings(max_examples=400)
@given(st.one_of(st.text(), st.text(alphabet=DATE_ALPHABET, max_size=40)))
def test_parse_http_date_never_raises(value: str) -> None:
    result = parse_http_date(value)
    assert result is None or isinstance(result, int)


@settings(max_examples=300)
@given(
    header=st.one_of(st.none(), st.text(max_size=40)),
    date=st.one_of(st.none(), st.text(max_size=40)),
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE"]),
)
def test_evaluate_never_raises(header: str | None, date: str | None, method: str) -> None:
    for conditions in (cond(im=header, ius=date), cond(inm=header, ims=date)):
        assert evaluate(method, conditions, CURRENT) in set(Precondition)
    if header is not None:
        assert if_range_matches(header, CURRENT, now=T + 10) in (True, False)
