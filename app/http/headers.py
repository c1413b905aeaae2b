"""HTTP dates, entity tags and Content-Disposition (RFC 9110 §5.6.7, §8.8.3; RFC 6266, RFC 8187).

Pure: no I/O, no framework imports.
"""

from __future__ import annotations

import calendar
import email.utils
import time
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

# RFC 8187 §3.2.1 attr-char, minus ALPHA / DIGIT (which quote() never escapes).
_ATTR_CHAR_SAFE = "!#$&+-.^_`|~"
_FALLBACK_NAME = "download"


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_http_date(timestamp: int) -> str:
    """IMF-fixdate (RFC 9110 §5.6.7), e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    t = time.gmtime(timestamp)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch for any of the three HTTP-date forms, or None if it is not one."""
    try:
        parsed = email.utils.parsedate_tz(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    try:
        # parsedate_tz gives the zone offset separately; HTTP-dates are always GMT.
        seconds = calendar.timegm(parsed[:6] + (0, 1, 0))
    except (OverflowError, ValueError):
        return None
    return seconds - (parsed[9] or 0)


@dataclass(frozen=True, slots=True)
class EntityTag:
    opaque: str  # with its quotes, e.g. '"abc"'
    weak: bool


def parse_etag_list(value: str) -> list[EntityTag] | None:
    """The entity tags of an If-Match / If-None-Match value; None for ``*``; [] if malformed.

    etagc allows commas inside the quotes, so the list is scanned rather than split.
    """
    text = value.strip()
    if text == "*":
        return None
    tags: list[EntityTag] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        weak = text.startswith("W/", i)
        if weak:
            i += 2
        if i >= n or text[i] != '"':
            return []
        end = text.find('"', i + 1)
        if end < 0:
            return []
        tags.append(EntityTag(text[i : end + 1], weak))
        i = end + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] != ",":
            return []
    return tags


def _ascii_fallback(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name)
    chars = []
    for ch in decomposed:
        if unicodedata.combining(ch):
            continue  # é -> e
        if ch in '"\\' or not (" " <= ch <= "~"):
            chars.append("_")  # quotes, backslashes, controls and non-ASCII
        else:
            chars.append(ch)
    fallback = "".join(chars).strip()
    return fallback if fallback.strip("._") else _FALLBACK_NAME


def content_disposition(disposition: str, filename: str) -> str:
    """``attachment; filename="ascii"; filename*=UTF-8''pct`` (RFC 6266 §4.3, RFC 8187).

    The quoted fallback holds printable ASCII only (no quote, backslash or control character), so
    the header stays one well-formed field whatever the name; ``filename*`` carries the exact name.
    """
    fallback = _ascii_fallback(filename)
    encoded = quote(filename, safe=_ATTR_CHAR_SAFE, encoding="utf-8", errors="surrogateescape")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
