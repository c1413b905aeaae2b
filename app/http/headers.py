"""HTTP dates, entity tags, Content-Disposition and HTTP/1.0 keep-alive (RFC 9110 §5.6.7, §8.8.3;
RFC 6266, RFC 8187, RFC 9112 §9.3).

Pure: no I/O, no framework imports.
"""

from __future__ import annotations

import calendar
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

# RFC 8187 §3.2.1 attr-char, minus ALPHA / DIGIT (which quote() never escapes).
_ATTR_CHAR_SAFE = "!#$&+-.^_`|~"
_FALLBACK_NAME = "download"


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_http_date(timestamp: int) -> str:
    """IMF-fixdate (RFC 9110 §5.6.7), e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``.

    The same bytes as ``email.utils.formatdate(timestamp, usegmt=True)`` for the years 1 to 9999,
    but that raises past 9999, a year a file's mtime can have (tmpfs); this writes it out.
    """
    t = time.gmtime(timestamp)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


_MONTH_NUMBER = {name: i for i, name in enumerate(_MONTHS, start=1)}
_DAY = "|".join(_DAYS)
_LONG_DAY = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_MON = "|".join(_MONTHS)
_HMS = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 §5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms a recipient must accept.
_IMF_FIXDATE = re.compile(rf"(?:{_DAY}), (\d\d) ({_MON}) (\d{{4}}) {_HMS} GMT", re.ASCII)
_RFC850_DATE = re.compile(rf"(?:{_LONG_DAY}), (\d\d)-({_MON})-(\d\d) {_HMS} GMT", re.ASCII)
_ASCTIME_DATE = re.compile(rf"(?:{_DAY}) ({_MON}) ([ \d]\d) {_HMS} (\d{{4}})", re.ASCII)


def parse_http_date(value: str, *, now: int | None = None) -> int | None:
    """Seconds since the epoch for any of the three HTTP-date forms, or None if it is not one."""
    text = value.strip(" \t")
    if m := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = m.groups()
    elif m := _RFC850_DATE.fullmatch(text):
        day, month, yy, hour, minute, second = m.groups()
        year = str(_two_digit_year(int(yy), now))
    elif m := _ASCTIME_DATE.fullmatch(text):
        month, day, hour, minute, second, year = m.groups()
    else:
        return None
    try:
        # datetime validates the calendar: no 31 Feb, no hour 25, no leap second.
        moment = datetime(
            int(year), _MONTH_NUMBER[month], int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except ValueError:
        return None
    return calendar.timegm(moment.timetuple())


def _two_digit_year(yy: int, now: int | None) -> int:
    # RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is in the past century.
    current = time.gmtime(time.time() if now is None else now).tm_year
    year = current - current % 100 + yy
    return year - 100 if year > current + 50 else year


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


# RFC 6266 appendix D: some recipients decode %XX in the quoted filename, others keep it.
_PERCENT_ESCAPE = re.compile(r"%(?=[0-9A-Fa-f]{2})")


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
    # After the other replacements: dropping an accent can bring a '%' next to two hex digits.
    fallback = _PERCENT_ESCAPE.sub("_", "".join(chars)).strip()
    return fallback if fallback.strip("._") else _FALLBACK_NAME


def content_disposition(disposition: str, filename: str | None = None) -> str:
    """``attachment; filename="ascii"; filename*=UTF-8''pct`` (RFC 6266 §4.3, RFC 8187), or the
    type alone when there is no name to suggest.

    The quoted fallback holds printable ASCII only (no quote, backslash, control character or
    ``%XX`` sequence), so the header stays one well-formed field whatever the name and every
    recipient reads the fallback alike; ``filename*`` carries the exact name.
    """
    if filename is None:
        return disposition
    fallback = _ascii_fallback(filename)
    encoded = quote(filename, safe=_ATTR_CHAR_SAFE, encoding="utf-8", errors="surrogateescape")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def file_disposition(disposition: str, name: str, *, query: bool) -> str:
    """The Content-Disposition of a file served at a URL whose last path segment is its `name`.

    Such a URL already carries the exact name: a browser saving an attachment takes it from the
    URL, decoded, so a filename parameter would add nothing; and rclone (1.72 and later) takes
    any attachment's filename for the file's whole path below the folder it lists, dropping the
    folder. So the name is sent only when the request has a query (a signed link, ``?download=1``),
    which the URL's name does not include but clients may keep in it (``wget`` saves
    ``name?query``) or read as a reason to change the extension (Chromium).
    """
    return content_disposition(disposition, name if query else None)


def http10_keeps_alive(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an HTTP/1.0 request asks to keep its connection (RFC 9112 §9.3: the "keep-alive"
    connection option; RFC 9110 §7.6.1: "close" wins wherever it appears). `fields`: (name, value),
    names in lower case, as the ASGI scope has them."""
    options = {
        option.strip().lower()
        for name, value in fields
        if name == b"connection"
        for option in value.split(b",")
    }
    return b"keep-alive" in options and b"close" not in options
