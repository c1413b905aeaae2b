"""Page cursors: the last row's sort key of one page, handed to the client and back.

A cursor comes back from the client, so it is checked as input (`decode_cursor`)."""

from __future__ import annotations

import base64
import json

from app.storage.errors import InvalidInput

# A cursor holds SQLite values: integers are 64-bit, and a genuine cursor is one flat JSON list.
_INT64 = range(-(2**63), 2**63)
_MAX_CURSOR = 65536  # characters; a genuine cursor holds at most one path (PATH_MAX, escaped)


def encode_cursor(values: list[object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[object]:
    """The values of a cursor made by `encode_cursor`, each of the given type, or 400.

    A cursor comes back from the client, so it is checked as input: nested JSON deep enough to
    exhaust the parser's recursion, or a value SQLite cannot bind, is refused here rather than
    failing later as a server error."""
    if len(cursor) > _MAX_CURSOR:
        raise InvalidInput("invalid cursor")
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInput("invalid cursor") from exc
    if not isinstance(values, list) or len(values) != len(types):
        raise InvalidInput("invalid cursor")
    # bool is an int to isinstance; a cursor never holds one.
    if not all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(values, types, strict=True)):
        raise InvalidInput("invalid cursor")
    if not all(_bindable(v) for v in values):
        raise InvalidInput("invalid cursor")
    return values


def _bindable(value: object) -> bool:
    """Whether SQLite takes the value as it is: a 64-bit integer, or text that is valid UTF-8."""
    if isinstance(value, int):
        return value in _INT64
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # JSON may carry lone surrogates ("\\ud800")
        except UnicodeEncodeError:
            return False
    return True
