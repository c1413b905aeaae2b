"""The path traversal corpus: request targets that try to leave ROOT (refused by the lexical gate
whatever FOLLOW_SYMLINKS and SHOW_HIDDEN say) and those refused only by policy (symlinks out of
ROOT, hidden names). tests/clients/test_traversal.py sends them as downloads; tests/security/
test_paths.py extends them and sends them as API look-ups and uploads too."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import pytest

from tests.support.servers import CANARY


class Tree(Protocol):
    """Where a pool's tree is: `base` holds the canary beside `root`."""

    @property
    def base(self) -> Path: ...

    @property
    def root(self) -> Path: ...


# Bytes from outside ROOT, and from hidden files inside it (tests/conftest.py storage_tree).
OUTSIDE_BYTES = [CANARY, CANARY.strip()[:12]]
HIDDEN_BYTES = [b"SECRET=1", b"[core]", b"hidden\n"]


def expand(target: str, pool: Tree) -> str:
    """Fill in absolute locations of this run's tree: {outside} is the canary's absolute path."""
    outside = str(pool.base / "secret.txt")
    return target.format(
        outside=outside,
        outside_enc=quote(outside, safe=""),
        root=str(pool.root),
    )


# Escapes refused by the lexical gate, whatever FOLLOW_SYMLINKS and SHOW_HIDDEN say.
ESCAPES = [
    # `..` plain and percent-encoded (Apache CVE-2021-41773 / CVE-2021-42013, aiohttp CVE-2024-23334)
    pytest.param("/files/../secret.txt", id="dotdot"),
    pytest.param("/files/%2e%2e/secret.txt", id="enc-dotdot"),
    pytest.param("/files/%2E%2E/secret.txt", id="enc-dotdot-upper"),
    pytest.param("/files/.%2e/secret.txt", id="half-enc-dotdot-1"),
    pytest.param("/files/%2e./secret.txt", id="half-enc-dotdot-2"),
    pytest.param("/files/..%2fsecret.txt", id="enc-slash"),
    pytest.param("/files/..%2Fsecret.txt", id="enc-slash-upper"),
    pytest.param("/files/%2e%2e%2fsecret.txt", id="enc-dotdot-slash"),
    pytest.param("/files/%2e%2e%2f..%2fsecret.txt", id="enc-dotdot-twice"),
    pytest.param("/files/sub/..%2f..%2fsecret.txt", id="from-subdir-enc"),
    pytest.param("/files/sub/../../secret.txt", id="from-subdir"),
    pytest.param("/files/sub%2f..%2f..%2fsecret.txt", id="subdir-all-enc"),
    pytest.param("/files/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", id="etc-passwd-enc"),
    pytest.param("/files/..", id="bare-dotdot"),
    pytest.param("/files/sub/..", id="subdir-dotdot"),
    pytest.param("/files/hello.txt/../secret.txt", id="through-a-file"),
    pytest.param("/files/link-inside.txt/../../secret.txt", id="through-a-symlink"),
    pytest.param("/files/dir-outside/..%2f..%2fsecret.txt", id="through-outside-dir-link"),
    pytest.param("//files/../secret.txt", id="double-leading-slash"),
    pytest.param("/files/....//secret.txt", id="four-dots"),
    pytest.param("/files/..;/secret.txt", id="dotdot-semicolon"),
    pytest.param("/files/sub/..;/..;/secret.txt", id="dotdot-semicolon-twice"),
    # double encoding: decoded once, the result is a literal name
    pytest.param("/files/%252e%252e%252fsecret.txt", id="double-enc"),
    pytest.param("/files/%252e%252e/secret.txt", id="double-enc-dots"),
    pytest.param("/files/..%252fsecret.txt", id="double-enc-slash"),
    pytest.param("/files/%25252e%25252e%25252fsecret.txt", id="triple-enc"),
    # sibling-prefix confusion (Starlette CVE-2023-29159)
    pytest.param("/files/../data_secret/x.txt", id="sibling-prefix"),
    pytest.param("/files/%2e%2e/data_secret/x.txt", id="sibling-prefix-enc"),
    pytest.param("/files/..%2fdata_secret%2fx.txt", id="sibling-prefix-enc-slash"),
    pytest.param("/files/../data/../secret.txt", id="out-and-back-in-and-out"),
    pytest.param("/files/../data/hello.txt", id="out-and-back-in"),
    # backslashes and Windows forms (vert.x CVE-2018-12542, Starlette #981, Werkzeug CVE-2024-49766)
    pytest.param("/files/..%5csecret.txt", id="enc-backslash"),
    pytest.param("/files/%5c..%5csecret.txt", id="enc-backslash-leading"),
    pytest.param("/files/..\\secret.txt", id="raw-backslash"),
    pytest.param("/files/sub\\..\\..\\secret.txt", id="raw-backslash-subdir"),
    pytest.param("/files/..%255csecret.txt", id="double-enc-backslash"),
    pytest.param("/files/C:%5cwindows%5cwin.ini", id="drive-backslash"),
    pytest.param("/files/C:/windows/win.ini", id="drive-slash"),
    pytest.param("/files/%5c%5cserver%5cshare%5csecret.txt", id="unc"),
    pytest.param("/files/CON", id="device-con"),
    pytest.param("/files/nul", id="device-nul"),
    # absolute paths
    pytest.param("/files//etc/passwd", id="abs-etc-passwd"),
    pytest.param("/files/%2fetc%2fpasswd", id="abs-etc-passwd-enc"),
    pytest.param("/files/{outside}", id="abs-canary"),
    pytest.param("/files/{outside_enc}", id="abs-canary-enc"),
    pytest.param("/files/{root}/../secret.txt", id="abs-root-then-dotdot"),
    # NUL and control characters (Caddy 500, http.server dropped connection)
    pytest.param("/files/hello.txt%00", id="nul-suffix"),
    pytest.param("/files/hello.txt%00.png", id="nul-extension"),
    pytest.param("/files/%00../secret.txt", id="nul-then-dotdot"),
    pytest.param("/files/..%00/secret.txt", id="dotdot-nul"),
    pytest.param("/files/a%0ab", id="lf"),
    pytest.param("/files/a%0db", id="cr"),
    pytest.param("/files/%0d%0aSet-Cookie:%20x=1", id="crlf-injection"),
    pytest.param("/files/line%0abreak.txt", id="lf-existing-name"),
    pytest.param("/files/a%09b", id="tab"),
    pytest.param("/files/a%7fb", id="del"),
    # overlong and bogus UTF-8 (IIS-era decoders)
    pytest.param("/files/%c0%ae%c0%ae/secret.txt", id="overlong-dots"),
    pytest.param("/files/%c0%ae%c0%ae%c0%afsecret.txt", id="overlong-dots-slash"),
    pytest.param("/files/..%c0%afsecret.txt", id="overlong-slash"),
    pytest.param("/files/%e0%80%ae%e0%80%ae/secret.txt", id="overlong-3-byte"),
    pytest.param("/files/\xc0\xae\xc0\xae/secret.txt", id="overlong-raw-bytes"),
    pytest.param("/files/%u002e%u002e/secret.txt", id="iis-u-encoding"),
    pytest.param("/files/%ff%fe/secret.txt", id="invalid-utf8"),
    # '.' segments are dropped, and what remains is checked as any other path
    pytest.param("/files/./../secret.txt", id="dot-then-dotdot"),
    pytest.param("/files/sub/./../../secret.txt", id="dot-then-dotdot-subdir"),
    pytest.param("/files/%2e/%2e%2e/secret.txt", id="enc-dot-then-enc-dotdot"),
    pytest.param("/files/./%2e%2e%2fsecret.txt", id="dot-then-enc-dotdot-slash"),
    pytest.param("/files/.//etc/passwd", id="dot-then-absolute"),
    pytest.param("/files/.%2f%2fetc%2fpasswd", id="dot-then-enc-absolute"),
    pytest.param("/files/sub/.//inner.txt", id="dot-then-empty-segment"),
    pytest.param("/files/./{outside}", id="dot-then-abs-canary"),
    pytest.param("/files/hello.txt/.", id="file-trailing-dot"),
    # a file with a trailing slash is not a directory
    pytest.param("/files/hello.txt/", id="file-trailing-slash"),
    # absolute-form and otherwise odd request targets
    pytest.param("http://x/files/../secret.txt", id="absolute-form"),
    pytest.param("http://x/files/%2e%2e/secret.txt", id="absolute-form-enc"),
    pytest.param("../secret.txt", id="relative-target"),
    pytest.param("@evil.example/files/../secret.txt", id="at-target"),
]

# Refused only by policy: symlinks leading outside ROOT and hidden names (default settings).
POLICY = [
    pytest.param("/files/link-outside.txt", id="symlink-file-outside"),
    pytest.param("/files/dir-outside/x.txt", id="symlink-dir-outside"),
    pytest.param("/files/%64ir-outside/x.txt", id="symlink-dir-outside-enc"),
    pytest.param("/files/dir-outside/", id="symlink-dir-outside-listing"),
    pytest.param("/files/dir-outside", id="symlink-dir-outside-redirect"),
    pytest.param("/files/dir-outside/?format=json", id="symlink-dir-outside-json"),
    pytest.param("/files/link-to-hidden", id="symlink-to-hidden"),
    pytest.param("/files/.hidden", id="hidden"),
    pytest.param("/files/%2ehidden", id="hidden-enc"),
    pytest.param("/files/.hidden/", id="hidden-slash"),
    pytest.param("/files/sub/.env", id="hidden-nested"),
    pytest.param("/files/sub/%2eenv", id="hidden-nested-enc"),
    pytest.param("/files/.git/config", id="hidden-dir-file"),
    pytest.param("/files/%2egit%2fconfig", id="hidden-dir-file-enc"),
    pytest.param("/files/.git/", id="hidden-dir-listing"),
    pytest.param("/files/.git", id="hidden-dir-redirect"),
    pytest.param("/files/./.hidden", id="dot-then-hidden"),
    pytest.param("/files/./link-outside.txt", id="dot-then-symlink-file-outside"),
    pytest.param("/files/dir-outside/./x.txt", id="symlink-dir-outside-then-dot"),
]
