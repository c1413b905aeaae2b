"""Metalink: the RFC 5854 `.meta4` document for one file and the RFC 6249 `Link` fields. Pure.

aria2 (and other segmented downloaders) read a `.meta4` to fetch one file from several URLs at
once and verify it: the whole file's SHA-256, and the hash of every piece so a bad piece is
fetched again rather than the whole file.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

METALINK_TYPE = "application/metalink4+xml"


@dataclass(frozen=True, slots=True)
class Mirror:
    url: str
    priority: int  # 1 is the most preferred (RFC 5854 §4.2.16)


@dataclass(frozen=True, slots=True)
class Pieces:
    length: int
    hashes: tuple[str, ...]  # hex SHA-256 of each piece, in order


def metalink_document(
    *, name: str, size: int, sha256: str, urls: list[Mirror], pieces: Pieces | None, generator: str
) -> str:
    """A Metalink 4 document describing one file."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<metalink xmlns="urn:ietf:params:xml:ns:metalink">',
        f"  <generator>{escape(generator)}</generator>",
        f"  <file name={quoteattr(name)}>",
        f"    <size>{size}</size>",
        f'    <hash type="sha-256">{sha256}</hash>',
    ]
    if pieces is not None and pieces.hashes:
        lines.append(f'    <pieces length="{pieces.length}" type="sha-256">')
        lines.extend(f"      <hash>{h}</hash>" for h in pieces.hashes)
        lines.append("    </pieces>")
    lines.extend(f'    <url priority="{m.priority}">{escape(m.url)}</url>' for m in urls)
    lines += ["  </file>", "</metalink>", ""]
    return "\n".join(lines)


def link_field(*, describedby: str | None, duplicates: list[Mirror]) -> str:
    """The RFC 6249 Link field: the `.meta4` that describes the file, then its mirrors.

    The URLs are already percent-encoded; '<' and '>' cannot occur in them."""
    links = []
    if describedby is not None:
        links.append(f'<{describedby}>; rel=describedby; type="{METALINK_TYPE}"')
    links.extend(f"<{m.url}>; rel=duplicate; pri={m.priority}" for m in duplicates)
    return ", ".join(links)
