"""An answer whose body is a span of an open file, sent with sendfile by the connection's front.

The fast path (app/routes/fast_files.py) answers with a `FileSpan` when its caller can send one:
the connection's front (front.py) on a plain TCP connection with FERRY_ZERO_COPY not off.

- A small span (a whole 64 KiB file, a range of it): `send_span` writes the head with MSG_MORE
  and the span with sendfile there and then, so head and body leave in the same segments and the
  body never passes through Python — two copies fewer than a read and a write. A span starting
  mid-page sends that page's part with the head (read by `cached_span`), and the rest with
  sendfile from the boundary.
- A large span (a big file, or one range of it): `SpanStream` sends the head at once, then the
  span in sendfile calls of FERRY_CHUNK_SIZE bytes from the event loop, a turn of the loop every
  `SENDFILE_SPAN` bytes (the file checked for changes each time, as the app's sends
  do), waiting for room when the socket is full, and from a worker thread where the pages are
  not in the page cache. Nothing of the ASGI app runs, so its first byte leaves as soon as the
  head is planned.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from app.transfer.page_cache import PAGE, pages_cached, read_cached_into

_MSG_MORE: int = getattr(socket, "MSG_MORE", 0)
# Bytes per zero-copy message (sendfile calls of CHUNK_SIZE each, then one fstat check of the file
# and one turn of the event loop), here and in download.py's sends: per-message Python and syscalls
# cost a 1 GiB stream ~20 % of its server CPU at 1 MiB, little at this size, and no connection
# waits more than a few ms for its turn.
SENDFILE_SPAN = 4 * 1024 * 1024


class FileSpan:
    """`count` bytes of the open file `fd` from `offset`: a body for its receiver to send (with
    `send_span`) and then close `fd` — unless `shared` (a descriptor kept open across requests,
    app/storage/kept.py: sent from within the turn, closed by its keeper). `lead`: the span's
    first bytes up to a page boundary, when already read (`cached_span`)."""

    __slots__ = ("fd", "offset", "count", "on_end", "lead", "shared")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.fd, self.offset, self.count = fd, offset, count
        # A streamed span's bookkeeping once it ends: (bytes sent, whether it was cut short).
        self.on_end: Callable[[int, bool], None] | None = None
        self.lead = b""
        self.shared = False

    def __len__(self) -> int:
        return self.count


def cached_span(fd: int, offset: int, count: int) -> FileSpan | None:
    """The span, if its first and last bytes are in the page cache (else None). One starting
    mid-page carries its first page's part, read here: that read is the probe of its first byte,
    and `send_span` sends the part with the head (sendfile from mid-page costs more than copying
    it), the rest with sendfile from the page boundary."""
    lead = -offset % PAGE
    if lead and count > lead:
        part = bytearray(lead)
        if not read_cached_into(fd, memoryview(part), offset) or not pages_cached(fd, offset + count - 1, 1):
            return None
        span = FileSpan(fd, offset, count)
        span.lead = bytes(part)
        return span
    return FileSpan(fd, offset, count) if pages_cached(fd, offset, count) else None


Body = bytes | bytearray | FileSpan  # a whole small answer's body


def send_span(sender: socket.socket, transport: asyncio.Transport, head: bytes, span: FileSpan) -> bool:
    """One whole answer, its body `span`, written now: `head` to `sender` (the transport's socket,
    or a dup of it) with MSG_MORE, then the span with sendfile; what the socket does not take at once is
    queued in `transport` (read from the file: its pages were found in the page cache). The
    span's file is closed (unless shared). False when the connection must close: the file ended short of the
    span (the Content-Length sent cannot be kept), or the client is gone."""
    fd, offset, count = span.fd, span.offset, span.count
    try:
        if span.lead:  # read already (`cached_span`): it goes with the head
            head, offset, count = head + span.lead, offset + len(span.lead), count - len(span.lead)
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
        if not span.shared:
            os.close(fd)


class SpanStream:
    """One large answer sent from the event loop: `head`, then `span` (see the module's docstring).
    `ended(complete)` is called once, after the span's file is closed and its `on_end` ran."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sender: socket.socket,
        head: bytes,
        span: FileSpan,
        ended: Callable[[bool], None],
        chunk: int = 1024 * 1024,
    ) -> None:
        # Sent from the loop on `sender`'s descriptor; a worker thread and a writer use a
        # descriptor of the stream's own (`own_fd`: it stays valid whatever happens to the
        # front's, and both loops refuse a writer on a transport's own descriptor).
        self.loop, self.sender, self.fd = loop, sender, -1
        self.head, self.span, self.ended = memoryview(head), span, ended
        self.offset, self.left, self.sent = span.offset, span.count, 0
        self.st = os.fstat(span.fd)
        self.waiting = False  # for room in the socket (a writer on `own_fd`, kept until the end)
        self.threaded = False  # a sendfile call running in a worker thread
        self.done = False
        self.chunk = chunk  # bytes per sendfile call (FERRY_CHUNK_SIZE)
        self.cached_until = self.offset  # the span's pages before here were found in the page cache
        self.unchecked = 0  # bytes sent since the file was last checked for changes

    def pump(self) -> None:
        """Send until the socket is full, a turn's worth is out, or the span is.

        A sendfile call that sends less than it was given found the socket full: the stream waits
        for room then, without another call to be told so (EAGAIN). A chunk's pages are probed
        once (`cached_until`), not again at each wait. The writer that signals room stays
        registered from the first wait to the end of the stream (registering it costs the event
        loop a poll handle, an ioctl and two epoll_ctl calls); it is left only while a thread
        sends."""
        if self.done or self.threaded:
            return
        try:
            while self.head:
                self.head = self.head[self.sender.send(self.head, _MSG_MORE) :]
            while self.left:
                if self.unchecked >= SENDFILE_SPAN:
                    if self._changed():
                        return
                    self.unchecked = 0
                    self.loop.call_soon(self.pump)  # the other connections' turn
                    return
                size = min(self.left, self.chunk)
                if self.offset < self.cached_until:
                    size = min(size, self.cached_until - self.offset)
                elif pages_cached(self.span.fd, self.offset, size):
                    self.cached_until = self.offset + size
                else:
                    self._thread(size)
                    return
                out = self.fd if self.fd >= 0 else self.sender.fileno()  # (-1 once the loop closed it)
                sent = os.sendfile(out, self.span.fd, self.offset, size)
                if not self._took(sent):
                    return
                if sent < size and self.left:
                    self._wait()  # the socket is full
                    return
        except BlockingIOError:
            self._wait()
            return
        except OSError:
            self.end(False)  # the client is gone
            return
        self.end(True)

    def _thread(self, size: int) -> None:
        """Send the next `size` bytes, whose pages are not all cached, from a worker thread."""
        if self.waiting:  # (a writer left registered would fire at every turn meanwhile)
            self.loop.remove_writer(self.fd)
            self.waiting = False
        self.threaded = True
        work = self.loop.run_in_executor(None, os.sendfile, self.own_fd(), self.span.fd, self.offset, size)
        work.add_done_callback(self._sent_by_thread)

    def _took(self, sent: int) -> bool:
        if not sent:  # the file ended before the span: cut the response short
            self.end(False)
            return False
        self.offset, self.left, self.sent = self.offset + sent, self.left - sent, self.sent + sent
        self.unchecked += sent
        return True

    def _changed(self) -> bool:
        now = os.fstat(self.span.fd)
        if now.st_size != self.st.st_size or now.st_mtime_ns != self.st.st_mtime_ns:
            self.end(False)  # never a complete-looking mix of two versions
            return True
        return False

    def _sent_by_thread(self, work: asyncio.Future[int]) -> None:
        self.threaded = False
        if self.done:  # the connection was lost meanwhile
            self._finish(False)
            return
        try:
            if not self._took(work.result()):
                return
        except BlockingIOError:
            self._wait()
            return
        except OSError:
            self.end(False)
            return
        self.pump()

    def own_fd(self) -> int:
        """The stream's own descriptor of the socket, made at the first need."""
        if self.fd < 0:
            self.fd = os.dup(self.sender.fileno())
        return self.fd

    def _wait(self) -> None:
        if not self.waiting:
            try:
                fd = self.own_fd()
            except OSError:
                self.end(False)  # the connection closed meanwhile
                return
            self.waiting = True
            self.loop.add_writer(fd, self._writable)

    def _writable(self) -> None:
        self.pump()

    def end(self, complete: bool) -> None:
        """Stop (complete, cut short, or the connection gone); the bookkeeping runs once no
        worker thread is using the file."""
        if self.done:
            return
        self.done = True
        if self.waiting:
            self.loop.remove_writer(self.fd)
            self.waiting = False
        if not self.threaded:
            self._finish(complete)

    def _finish(self, complete: bool) -> None:
        os.close(self.span.fd)
        if self.fd >= 0:
            os.close(self.fd)
        try:
            if self.span.on_end is not None:
                self.span.on_end(self.sent, not complete)
        finally:
            self.ended(complete)
