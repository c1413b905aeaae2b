"""A SHA-256 whose running state can be saved and continued in another process.

hashlib cannot export a hash's state; a resumable upload to a bucket (bucket_resumable.py) is
continued by whichever replica the next request reaches, and the stored file's SHA-256 must be
known at completion without reading the object back (its parts cannot be read before then). So
the state is OpenSSL's own SHA256_CTX (the library hashlib itself uses), saved as its 112 bytes
with the upload's record: a hash continued elsewhere needs only those bytes. ctypes lets go of
the GIL around each call, as hashlib does. Where that library cannot be loaded, `available()` is
False and an upload continued in another process completes without a known SHA-256 (the
background hasher fills it in, as for any object Ferry did not upload).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_CTX_SIZE = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len (32-bit words)


def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        for function in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
            function.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return lib


_LIB = _library()


def available() -> bool:
    return _LIB is not None


class RunningSha256:
    """SHA-256 over bytes given in order; `saved()` saves it, `RunningSha256(saved)` continues it."""

    def __init__(self, state: bytes | None = None) -> None:
        if _LIB is None:
            raise RuntimeError("OpenSSL's SHA-256 is not available in this process")
        self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
        if state is None:
            _LIB.SHA256_Init(self._ctx)
        elif len(state) == _CTX_SIZE:
            ctypes.memmove(self._ctx, state, _CTX_SIZE)
        else:
            raise ValueError("not a saved SHA-256 state")

    def update(self, data: bytes | bytearray | memoryview) -> None:
        assert _LIB is not None
        view = memoryview(data)
        if not view.nbytes:
            return
        if view.readonly:
            # A bytes object is passed as it is (its own buffer); another read-only buffer copied.
            buffer = ctypes.c_char_p(data if isinstance(data, bytes) else bytes(view))
        else:
            buffer = (ctypes.c_char * view.nbytes).from_buffer(view)  # type: ignore[assignment]
        _LIB.SHA256_Update(self._ctx, buffer, view.nbytes)

    def saved(self) -> bytes:
        return self._ctx.raw

    def digest(self) -> bytes:
        assert _LIB is not None
        finished = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)  # Final would end this one
        out = ctypes.create_string_buffer(32)
        _LIB.SHA256_Final(out, finished)
        return out.raw
