"""A small answer whose body is a span of an open file, sent there and then with sendfile.

The fast path (app/routes/fast_files.py) answers a span of a file starting on a page boundary (a
whole 64 KiB file, say) with a `FileSpan` when its caller can send one: the connection's front
(front.py) on a plain TCP connection with FERRY_ZERO_COPY not off. `send_span` writes the head
with MSG_MORE and the span with sendfile, so head and body leave in the same segments and the
body never passes through Python: two copies of it fewer than a read and a write.
"""

from __future__ import annotations

import asyncio
import os
import socket

_MSG_MORE: int = getattr(socket, "MSG_MORE", 0)


class FileSpan:
    """`count` bytes of the open file `fd` from `offset`: a body for its receiver to send (with
    `send_span`) and then close `fd`."""

    __slots__ = ("fd", "offset", "count")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.fd, self.offset, self.count = fd, offset, count

    def __len__(self) -> int:
        return self.count


Body = bytes | bytearray | FileSpan  # a whole small answer's body


def send_span(sender: socket.socket, transport: asyncio.Transport, head: bytes, span: FileSpan) -> bool:
    """One whole answer, its body `span`, written now: `head` to `sender` (a dup of the transport's
    socket) with MSG_MORE, then the span with sendfile; what the socket does not take at once is
    queued in `transport` (read from the file: its pages were found in the page cache). The
    span's file is closed. False when the connection must close: the file ended short of the
    span (the Content-Length sent cannot be kept), or the client is gone."""
    fd, offset, count = span.fd, span.offset, span.count
    try:
        if not transport.get_write_buffer_size():  # nothing queued ahead of this answer
            try:
                head = head[sender.send(head, _MSG_MORE) :]
                while count and not head:
                    sent = os.sendfile(sender.fileno(), fd, offset, count)
                    if not sent:
                        return False
                    offset, count = offset + sent, count - sent
            except BlockingIOError:
                pass  # the socket is full: the rest waits in the transport
            except OSError:
                return False  # the client is gone (or the file unreadable): close
        if head:
            transport.write(head)
        if count:
            rest = os.pread(fd, count, offset)
            transport.write(rest)
            return len(rest) == count
        return True
    finally:
        os.close(fd)
