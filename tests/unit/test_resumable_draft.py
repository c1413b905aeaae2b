"""The IETF resumable-upload draft's fields (app/http/resumable_draft.py): tables of what is
accepted, ignored and refused, and round trips of Upload-Limit and the problem documents."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.http import resumable_draft as draft
from app.http.resumable_draft import DraftError


def _refusal(call: object, *args: object) -> DraftError:
    with pytest.raises(DraftError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


@pytest.mark.parametrize(
    ("value", "result"),
    [
        ("?1", True),
        ("?0", False),
        (" ?1 ", True),
        ("?1;a=1", True),
        (None, None),
        ("1", None),
        ("true", None),
        ("?", None),
        ("?2", None),
        ("", None),
        ("?1, ?0", None),
    ],
)
def test_upload_complete(value: str | None, result: bool | None) -> None:
    assert draft.parse_boolean(value) is result


@pytest.mark.parametrize(
    ("value", "result"),
    [
        ("0", 0),
        ("12", 12),
        ("007", 7),
        ("5;x", 5),
        ("9" * 15, int("9" * 15)),
        (None, None),
        ("-1", None),
        ("+1", None),
        ("1.0", None),
        ("9" * 16, None),
        ("", None),
        ("0x1", None),
        ("1 2", None),
    ],
)
def test_upload_offset_and_length(value: str | None, result: int | None) -> None:
    assert draft.parse_integer(value) == result


@given(st.integers(min_value=0, max_value=10**15 - 1))
def test_integers_round_trip(number: int) -> None:
    assert draft.parse_integer(str(number)) == number


@given(st.booleans())
def test_booleans_round_trip(value: bool) -> None:
    assert draft.parse_boolean(draft.format_boolean(value)) is value


@pytest.mark.parametrize("value", ["8", "6", " 8 "])
def test_interop_versions_accepted(value: str) -> None:
    assert draft.check_interop(value) in draft.ACCEPTED_VERSIONS


@pytest.mark.parametrize("value", [None, "", "5", "7", "9", "?1", "ietf-draft-05"])
def test_interop_versions_refused(value: str | None) -> None:
    assert _refusal(draft.check_interop, value).status == 400


@given(
    st.dictionaries(
        st.sampled_from(["max-size", "min-size", "max-append-size", "min-append-size", "max-age"]),
        st.integers(min_value=0, max_value=10**15 - 1),
    )
)
def test_upload_limit_round_trips(limits: dict[str, int]) -> None:
    assert draft.parse_limit(draft.format_limit(limits)) == (limits or {"min-size": 0})


@pytest.mark.parametrize(
    ("value", "result"),
    [
        ("max-size=10, max-age=5", {"max-size": 10, "max-age": 5}),
        ("max-size=1, future=?1", {"max-size": 1}),
        ("max-size=abc", None),
        ("Max-Size=1", None),
        ("max-age=1.5", None),
        (None, None),
    ],
)
def test_upload_limit_parsed_as_clients_do(value: str | None, result: dict[str, int] | None) -> None:
    assert draft.parse_limit(value) == result


def test_a_mismatching_offset_is_409_with_both_offsets() -> None:
    refusal = _refusal(draft.check_offset, 3, 5)
    assert refusal.status == 409
    assert refusal.document() == {
        "type": "https://iana.org/assignments/http-problem-types#mismatching-upload-offset",
        "title": "offset from request does not match offset of resource",
        "detail": "Upload-Offset 3 is not the upload's offset 5",
        "expected-offset": 5,
        "provided-offset": 3,
    }
    assert _refusal(draft.check_offset, None, 5).status == 400
    draft.check_offset(5, 5)


def test_problem_types() -> None:
    assert draft.completed().status == 400
    assert draft.completed().document()["type"].endswith("#completed-upload")
    assert draft.inconsistent("x").document()["type"].endswith("#inconsistent-upload-length")
    assert DraftError(415, "no").document() == {"detail": "no"}


@pytest.mark.parametrize(
    ("length", "complete", "content_length", "offset", "result"),
    [
        ("10", False, None, 0, 10),
        (None, True, "7", 3, 10),
        ("10", True, "7", 3, 10),
        (None, False, "7", 0, None),
        (None, True, None, 0, None),
        ("x", True, "4", 0, 4),
    ],
)
def test_request_length(
    length: str | None, complete: bool, content_length: str | None, offset: int, result: int | None
) -> None:
    assert draft.request_length(length, complete, content_length, offset) == result


def test_request_lengths_that_disagree_are_inconsistent() -> None:
    refusal = _refusal(draft.request_length, "11", True, "7", 3)
    assert refusal.status == 400 and refusal.problem == draft.INCONSISTENT_LENGTH
    assert _refusal(draft.check_known_length, 10, 11, 0).problem == draft.INCONSISTENT_LENGTH
    assert _refusal(draft.check_known_length, None, 3, 4).problem == draft.INCONSISTENT_LENGTH
    draft.check_known_length(10, 10, 4)
    draft.check_known_length(None, None, 4)


@pytest.mark.parametrize("value", ["application/partial-upload", "Application/Partial-Upload; x=1"])
def test_partial_upload_accepted(value: str) -> None:
    draft.check_partial(value)


@pytest.mark.parametrize("value", [None, "", "application/offset+octet-stream", "application/octet-stream"])
def test_other_bodies_refused(value: str | None) -> None:
    assert _refusal(draft.check_partial, value).status == 415


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ('attachment; filename="a b.txt"', "a b.txt"),
        ("inline; filename=plain.bin", "plain.bin"),
        ("attachment; filename*=UTF-8''%C3%A9t%C3%A9.txt", "été.txt"),
        ("attachment; filename=\"x.txt\"; filename*=UTF-8''y.txt", "y.txt"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="C:\\\\dir\\\\w.txt"', "w.txt"),
        ('attachment; filename=".."', None),
        ("attachment", None),
        (None, None),
        ("attachment; filename*=UTF-8''%FF", None),
    ],
)
def test_disposition_filename(value: str | None, name: str | None) -> None:
    assert draft.disposition_filename(value) == name


@given(st.text(min_size=1, max_size=40).filter(lambda t: '"' not in t and "\\" not in t))
def test_a_disposition_name_never_has_a_folder(text: str) -> None:
    name = draft.disposition_filename(f'attachment; filename="{text}"')
    assert name is None or ("/" not in name and name not in (".", ".."))
