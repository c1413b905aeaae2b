"""THE path gate: the lexical pass (split_url_path) and the physical one (resolve, open_beneath)."""

from __future__ import annotations

import ctypes
import os
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.storage import paths
from app.storage.errors import InvalidInput, NotServable
from app.storage.paths import (
    PathPolicy,
    SafePath,
    normal_url_path,
    open_beneath,
    open_write_target,
    resolve,
    resolve_to_open,
    split_key,
    split_url_path,
    stat_child,
)

POLICY = PathPolicy(root=Path("/srv/ferry"))
SHOW_HIDDEN = replace(POLICY, show_hidden=True)

# --- lexical ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url_path", "segments"),
    [
        pytest.param("", [], id="root"),
        pytest.param("a", ["a"], id="one"),
        pytest.param("a/b/c.txt", ["a", "b", "c.txt"], id="nested"),
        pytest.param("a/", ["a"], id="trailing-slash"),
        pytest.param("a/b/", ["a", "b"], id="nested-trailing-slash"),
        pytest.param("résumé 数据.bin", ["résumé 数据.bin"], id="unicode"),
        pytest.param("100% #1?.txt", ["100% #1?.txt"], id="url-syntax-chars"),
        pytest.param("%2e%2e", ["%2e%2e"], id="already-decoded-percent-is-literal"),
        pytest.param("a..b", ["a..b"], id="dots-inside-name"),
        pytest.param("..a", None, id="dot-dot-prefix-is-hidden"),
        pytest.param("a./b.", ["a.", "b."], id="trailing-dots"),
        pytest.param("...", None, id="three-dots-is-hidden"),
        # '.' names the directory it stands in (RFC 3986 §5.2.4): dropped, as nginx does
        pytest.param("./colon:name.txt", ["colon:name.txt"], id="go-escaped-colon-name"),
        pytest.param("a/./b", ["a", "b"], id="dot-middle"),
        pytest.param("a/./././b", ["a", "b"], id="dots-middle"),
        pytest.param("a/.", ["a"], id="trailing-dot"),
        pytest.param("a/./", ["a"], id="dot-slash-trailing"),
        pytest.param(".", [], id="bare-dot-is-root"),
        pytest.param("./", [], id="dot-slash-is-root"),
        pytest.param("./.", [], id="dot-dot-separate"),
        pytest.param(".//", [], id="dot-then-empty-is-root-slash"),
    ],
)
def test_split_url_path_plain_names(url_path: str, segments: list[str] | None) -> None:
    if segments is None:
        with pytest.raises(NotServable):
            split_url_path(url_path, POLICY)
    else:
        assert split_url_path(url_path, POLICY) == segments


NOT_FOUND = [
    pytest.param("..", id="dot-dot"),
    pytest.param("../etc/passwd", id="dot-dot-first"),
    pytest.param("a/..", id="dot-dot-last"),
    pytest.param("a/../b", id="dot-dot-middle"),
    pytest.param("./..", id="dot-then-dot-dot"),
    pytest.param("a/./../b", id="dot-then-dot-dot-middle"),
    pytest.param("./../etc/passwd", id="dot-then-traversal"),
    pytest.param("a/.//b", id="dot-then-empty-segment"),
    pytest.param("a/../../x", id="double-dot-dot"),
    pytest.param("../", id="dot-dot-slash"),
    pytest.param("a//b", id="empty-segment"),
    pytest.param("a//", id="double-trailing-slash"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param(".//etc/passwd", id="dot-then-absolute"),
    pytest.param("//etc/passwd", id="double-slash-absolute"),
    pytest.param("..\\x", id="backslash-dot-dot"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("\\etc\\passwd", id="backslash-absolute"),
    pytest.param("a\\..\\..\\x", id="backslash-traversal"),
    pytest.param("C:\\windows", id="drive-letter"),
]


@pytest.mark.parametrize("url_path", NOT_FOUND)
@pytest.mark.parametrize("policy", [POLICY, SHOW_HIDDEN], ids=["hidden-off", "hidden-on"])
def test_split_url_path_refuses_traversal(url_path: str, policy: PathPolicy) -> None:
    with pytest.raises(NotServable):
        split_url_path(url_path, policy)


@pytest.mark.parametrize(
    ("url_path", "normal"),
    [
        pytest.param("a/b", "a/b", id="plain"),
        pytest.param("./colon:name.txt", "colon:name.txt", id="leading"),
        pytest.param("a/./b/./c", "a/b/c", id="middle"),
        pytest.param("a/.", "a/", id="trailing-names-the-directory"),
        pytest.param("a/./", "a/", id="trailing-slash"),
        pytest.param(".", "", id="bare"),
        pytest.param("/./docs/x", "/docs/x", id="rooted"),
        pytest.param("/.", "/", id="rooted-bare"),
        pytest.param("a/./../b", "a/../b", id="dot-dot-kept-for-refusal"),
        pytest.param("..", "..", id="dot-dot"),
        pytest.param("a/.b/c.", "a/.b/c.", id="dots-inside-names"),
        pytest.param(".//b", "/b", id="then-empty"),
    ],
)
def test_normal_url_path_drops_only_dot_segments(url_path: str, normal: str) -> None:
    assert normal_url_path(url_path) == normal


@pytest.mark.parametrize(
    "url_path",
    [
        pytest.param("a\x00b", id="nul"),
        pytest.param("a.txt\x00.png", id="nul-extension"),
        pytest.param("a\nb", id="lf"),
        pytest.param("a\rb", id="cr"),
        pytest.param("a\tb", id="tab"),
        pytest.param("\x1b[31m", id="escape"),
        pytest.param("a\x7fb", id="del"),
        pytest.param("../\x00", id="nul-after-traversal"),
    ],
)
def test_split_url_path_control_characters_are_bad_requests(url_path: str) -> None:
    with pytest.raises(InvalidInput):
        split_url_path(url_path, POLICY)


# Object keys (an S3 bucket's "paths") obey the same names' rules, without a request path's '.'
# normalisation: 'a/./b' is another key than 'a/b', so it is refused rather than rewritten.
@pytest.mark.parametrize(
    ("key", "show_hidden", "segments"),
    [
        ("", False, []),
        ("a", False, ["a"]),
        ("a/b/c.txt", False, ["a", "b", "c.txt"]),
        ("films/", False, ["films"]),
        ("résumé 数据.bin", False, ["résumé 数据.bin"]),
        ("100% #1?.txt", False, ["100% #1?.txt"]),
        (".env", True, [".env"]),
        ("a/.git/config", True, ["a", ".git", "config"]),
        (".env", False, None),
        ("a/.git/config", False, None),
        ("..", True, None),
        ("a/../b", True, None),
        ("a/./b", True, None),
        ("./a", True, None),
        (".", True, None),
        ("a//b", True, None),
        ("/a", True, None),
        ("a\\b", True, None),
        (".ferry-upload-x.part", True, None),
        ("a/.ferry-upload-x.part", True, None),
    ],
)
def test_split_key_applies_the_names_rules_without_normalising(
    key: str, show_hidden: bool, segments: list[str] | None
) -> None:
    if segments is None:
        with pytest.raises(NotServable):
            split_key(key, show_hidden=show_hidden)
    else:
        assert split_key(key, show_hidden=show_hidden) == segments


@pytest.mark.parametrize("key", ["a\x00b", "a/\nb", "\x7f", "a\tb/c"])
def test_split_key_control_characters_are_invalid_input(key: str) -> None:
    with pytest.raises(InvalidInput):
        split_key(key, show_hidden=True)


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4))
@settings(max_examples=300)
def test_split_key_agrees_with_split_url_path_where_no_dot_segment_is_involved(names: list[str]) -> None:
    key = "/".join(names)
    if "." in key.split("/"):
        return
    try:
        expected: list[str] | type[Exception] = split_url_path(key, SHOW_HIDDEN)
    except (NotServable, InvalidInput) as exc:
        expected = type(exc)
    try:
        got: list[str] | type[Exception] = split_key(key, show_hidden=True)
    except (NotServable, InvalidInput) as exc:
        got = type(exc)
    assert got == expected


@pytest.mark.parametrize(
    ("url_path", "segments"),
    [
        pytest.param(".hidden", [".hidden"], id="hidden-file"),
        pytest.param("a/.env", ["a", ".env"], id="hidden-in-dir"),
        pytest.param(".git/config", [".git", "config"], id="hidden-dir"),
        pytest.param(".git/", [".git"], id="hidden-dir-slash"),
        pytest.param("./.hidden", [".hidden"], id="dot-then-hidden"),
    ],
)
def test_split_url_path_hidden_names_only_when_shown(url_path: str, segments: list[str]) -> None:
    with pytest.raises(NotServable):
        split_url_path(url_path, POLICY)
    assert split_url_path(url_path, SHOW_HIDDEN) == segments


# --- physical ---------------------------------------------------------------------------------------------


@dataclass
class Tree:
    root: Path
    outside: Path

    def policy(self, **overrides: bool) -> PathPolicy:
        return PathPolicy(root=self.root, **overrides)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """root/ with symlinks in and out, next to secret.txt and a sibling `root_secret/`."""
    base = tmp_path.resolve()
    root = base / "root"
    root.mkdir()
    (base / "secret.txt").write_bytes(b"SECRET")
    sibling = base / "root_secret"  # shares root's name as a string prefix
    sibling.mkdir()
    (sibling / "x.txt").write_bytes(b"SIBLING")
    (root / "hello.txt").write_bytes(b"hello")
    (root / ".hidden").write_bytes(b"hidden")
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"[core]")
    (root / "link-inside.txt").symlink_to(root / "hello.txt")
    (root / "relative-link.txt").symlink_to("sub/inner.txt")
    (root / "sub" / "up-link.txt").symlink_to("../hello.txt")
    (root / "link-outside.txt").symlink_to(base / "secret.txt")
    (root / "relative-outside.txt").symlink_to("../secret.txt")
    (root / "dir-outside").symlink_to(sibling)
    (root / "sibling-prefix").symlink_to("../root_secret/x.txt")
    (root / "link-to-hidden").symlink_to(root / ".hidden")
    (root / "visible-dir").symlink_to(root / ".git")
    (root / "dangling").symlink_to(root / "missing")
    (root / "loop").symlink_to(root / "loop")
    os.mkfifo(root / "fifo")
    return Tree(root=root, outside=base)


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Every descriptor the gate opens is closed again, also when it refuses. (Descriptors of
    earlier tests in this process may close meanwhile, when the collector frees what held them:
    only ones left open that were not there before are the gate's.)"""
    before = open_fds()
    yield
    assert open_fds() - before == set()


def open_and_read(url_path: str, policy: PathPolicy) -> bytes:
    fd, st = open_beneath(resolve(url_path, policy), policy)
    try:
        assert stat.S_ISREG(st.st_mode)
        return read_all(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("url_path", "content"),
    [
        pytest.param("hello.txt", b"hello", id="plain"),
        pytest.param("sub/inner.txt", b"inner", id="nested"),
        pytest.param("link-inside.txt", b"hello", id="symlink-inside"),
        pytest.param("relative-link.txt", b"inner", id="relative-symlink-inside"),
        pytest.param("sub/up-link.txt", b"hello", id="symlink-up-but-inside"),
    ],
)
def test_resolve_serves_paths_inside_root(
    tree: Tree, url_path: str, content: bytes, no_fd_leak: None
) -> None:
    assert open_and_read(url_path, tree.policy()) == content


def test_resolve_returns_the_joined_path(tree: Tree) -> None:
    assert resolve("sub/inner.txt", tree.policy()) == tree.root / "sub" / "inner.txt"
    assert resolve("", tree.policy()) == tree.root


OUTSIDE = [
    pytest.param("link-outside.txt", b"SECRET", id="symlink-outside"),
    pytest.param("relative-outside.txt", b"SECRET", id="relative-symlink-outside"),
    pytest.param("dir-outside/x.txt", b"SIBLING", id="intermediate-dir-symlink-outside"),
    pytest.param("sibling-prefix", b"SIBLING", id="sibling-dir-sharing-the-prefix"),
]


@pytest.mark.parametrize(("url_path", "content"), OUTSIDE)
def test_resolve_refuses_symlinks_leading_outside_root(
    tree: Tree, url_path: str, content: bytes, no_fd_leak: None
) -> None:
    with pytest.raises(NotServable):
        resolve(url_path, tree.policy())
    with pytest.raises(NotServable):
        resolve(url_path, tree.policy(show_hidden=True))


@pytest.mark.parametrize(("url_path", "content"), OUTSIDE)
def test_resolve_follows_symlinks_outside_when_allowed(
    tree: Tree, url_path: str, content: bytes, no_fd_leak: None
) -> None:
    assert open_and_read(url_path, tree.policy(follow_symlinks=True)) == content


@pytest.mark.parametrize(
    ("url_path", "content"),
    [
        pytest.param("link-to-hidden", b"hidden", id="symlink-to-hidden-file"),
        pytest.param("visible-dir/config", b"[core]", id="symlink-to-hidden-dir"),
    ],
)
def test_resolve_refuses_symlinks_to_hidden_names(
    tree: Tree, url_path: str, content: bytes, no_fd_leak: None
) -> None:
    with pytest.raises(NotServable):
        resolve(url_path, tree.policy())
    with pytest.raises(NotServable):
        resolve(url_path, tree.policy(follow_symlinks=True))
    assert open_and_read(url_path, tree.policy(show_hidden=True)) == content


def test_resolve_hidden_names_only_when_shown(tree: Tree, no_fd_leak: None) -> None:
    with pytest.raises(NotServable):
        resolve(".hidden", tree.policy())
    assert open_and_read(".hidden", tree.policy(show_hidden=True)) == b"hidden"


@pytest.mark.parametrize(
    ("url_path", "path", "name"),
    [
        pytest.param("sub/./new.txt", "sub/new.txt", "new.txt", id="dot-middle"),
        pytest.param("./sub/new.txt", "sub/new.txt", "new.txt", id="dot-first"),
        pytest.param("sub/.", "sub", "", id="trailing-dot-is-the-directory"),
        pytest.param("./sub/./", "sub", "", id="directory"),
    ],
)
def test_writes_land_where_reads_look(
    tree: Tree, url_path: str, path: str, name: str, no_fd_leak: None
) -> None:
    target = open_write_target(url_path, tree.policy(), create_parents=False)
    try:
        assert (target.path, target.name) == (path, name)
        assert os.path.samestat(os.fstat(target.dir_fd), os.stat(tree.root / "sub"))
    finally:
        target.close()


@pytest.mark.parametrize("url_path", ["missing.txt", "dangling", "loop", "hello.txt/x", "sub/missing/x"])
def test_open_beneath_missing_or_broken_is_not_found(tree: Tree, url_path: str, no_fd_leak: None) -> None:
    policy = tree.policy()
    with pytest.raises(NotServable):
        open_beneath(resolve(url_path, policy), policy)


def test_open_beneath_refuses_a_fifo_without_hanging(tree: Tree, no_fd_leak: None) -> None:
    policy = tree.policy()
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            open_beneath(resolve("fifo", policy), policy)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "open_beneath hung on a FIFO"
    assert len(outcome) == 1 and isinstance(outcome[0], NotServable)


@pytest.mark.parametrize("url_path", ["", "sub", "sub/"])
def test_open_beneath_directory_returns_a_directory_stat(tree: Tree, url_path: str, no_fd_leak: None) -> None:
    policy = tree.policy()
    fd, st = open_beneath(resolve(url_path, policy), policy)
    try:
        assert stat.S_ISDIR(st.st_mode)
        assert os.path.samestat(st, os.stat(tree.root.joinpath(url_path)))
    finally:
        os.close(fd)


def test_open_beneath_stat_is_of_the_opened_file(tree: Tree, no_fd_leak: None) -> None:
    policy = tree.policy()
    fd, st = open_beneath(resolve("link-inside.txt", policy), policy)
    try:
        assert os.path.samestat(st, os.stat(tree.root / "hello.txt"))
        assert st.st_size == 5
    finally:
        os.close(fd)


def _read_gated(url_path: str, policy: PathPolicy) -> tuple[bytes, os.stat_result]:
    fd, st = open_beneath(resolve_to_open(url_path, policy), policy)
    try:
        return (read_all(fd) if stat.S_ISREG(st.st_mode) else b""), st
    finally:
        os.close(fd)


def test_open_beneath_opens_a_known_file_without_pinning_it_again(
    tree: Tree, no_fd_leak: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tree.policy()
    assert _read_gated("sub/inner.txt", policy)[0] == b"inner"
    pins: list[bytes] = []
    pin = paths._PLAIN.pin

    def counted(raw: bytes) -> int | None:
        pins.append(raw)
        return pin(raw)

    monkeypatch.setattr(paths._PLAIN, "pin", counted)
    assert _read_gated("sub/inner.txt", policy)[0] == b"inner"
    assert pins == []
    assert _read_gated("hello.txt", policy)[0] == b"hello"  # not known yet: pinned
    assert pins == [os.fsencode(tree.root / "hello.txt")]


@pytest.mark.parametrize("replacement", ["file", "fifo", "symlink-out", "symlink-in", "directory", "gone"])
def test_open_beneath_sees_a_known_file_replaced(tree: Tree, replacement: str, no_fd_leak: None) -> None:
    """A name once opened as a regular file is opened at once next time, but what it names now is
    what is served or refused, as on the first open."""
    policy = tree.policy()
    target = tree.root / "known.txt"
    target.write_bytes(b"first")
    assert _read_gated("known.txt", policy)[0] == b"first"
    target.unlink()
    if replacement == "file":
        target.write_bytes(b"second")
    elif replacement == "fifo":
        os.mkfifo(target)
    elif replacement == "symlink-out":
        target.symlink_to(tree.outside / "secret.txt")
    elif replacement == "symlink-in":
        target.symlink_to("hello.txt")
    elif replacement == "directory":
        target.mkdir()
    outcome: list[object] = []

    def attempt() -> None:  # in a thread: a FIFO opened blocking would hang
        try:
            outcome.append(_read_gated("known.txt", policy))
        except NotServable as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "open_beneath hung"
    (found,) = outcome
    if replacement == "file":
        assert isinstance(found, tuple) and found[0] == b"second"
    elif replacement == "symlink-in":
        assert isinstance(found, tuple) and found[0] == b"hello"
    elif replacement == "directory":
        assert isinstance(found, tuple) and stat.S_ISDIR(found[1].st_mode)
    else:
        assert isinstance(found, NotServable)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to see where a descriptor leads")
def test_open_beneath_catches_a_directory_swapped_for_a_symlink_after_resolve(
    tree: Tree, no_fd_leak: None
) -> None:
    policy = tree.policy()
    (tree.root / "swap").mkdir()
    (tree.root / "swap" / "x.txt").write_bytes(b"inside")
    safe: SafePath = resolve("swap/x.txt", policy)
    # Between the check and the open, `swap` becomes a symlink to a directory outside ROOT.
    (tree.root / "swap").rename(tree.root / "swapped-away")
    (tree.root / "swap").symlink_to(tree.outside / "root_secret")
    (tree.outside / "root_secret" / "x.txt").write_bytes(b"OUTSIDE")
    with pytest.raises(NotServable):
        open_beneath(safe, policy)


# Text built from what path attacks are made of, plus anything at all.
_PATH_TEXT = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.sampled_from(["..", ".", "", "a", ".h", "\\", "%2e", "..\\", "\x00", "\r", "é", "b.txt"]),
        max_size=8,
    ).map("/".join),
)


@settings(max_examples=500, deadline=None)
@given(url_path=_PATH_TEXT, show_hidden=st.booleans())
def test_split_url_path_accepts_only_plain_names(url_path: str, show_hidden: bool) -> None:
    policy = PathPolicy(root=Path("/srv/root"), show_hidden=show_hidden)
    try:
        segments = split_url_path(url_path, policy)
    except (InvalidInput, NotServable):
        return
    for segment in segments:
        assert segment not in ("", ".", "..")
        assert "/" not in segment and "\\" not in segment
        assert all(ord(c) >= 0x20 and c != "\x7f" for c in segment)
        assert show_hidden or not segment.startswith(".")
    assert policy.root.joinpath(*segments).resolve().is_relative_to(policy.root)


@settings(max_examples=300, deadline=None)
@given(url_path=_PATH_TEXT)
def test_resolve_never_leaves_root(tmp_path_factory: pytest.TempPathFactory, url_path: str) -> None:
    base = tmp_path_factory.getbasetemp() / "resolve-property"
    root = base / "root"
    if not root.exists():
        (root / "a").mkdir(parents=True)
        (base / "outside").mkdir()
        (root / "link").symlink_to(base / "outside")
    policy = PathPolicy(root=root.resolve())
    try:
        safe = resolve(url_path, policy)
    except (InvalidInput, NotServable):
        return
    assert Path(os.path.realpath(safe)).is_relative_to(policy.root)


# --- nothing is opened before it is approved ---------------------------------------------------------------


class OpenWatch:
    """Counts open() calls on one path, by anyone, through inotify's IN_OPEN (an O_PATH lookup,
    which runs no driver code, is not an open and is not counted)."""

    IN_OPEN = 0x20

    def __init__(self, path: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        if self.libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_OPEN) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch", str(path))

    def opens(self) -> int:
        count = 0
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return count
            offset = 0
            while offset < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                count += bool(mask & self.IN_OPEN)
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Special:
    """A FIFO inside ROOT, and symlinks in ROOT to a FIFO and a terminal outside it."""

    tree: Tree
    fifo_outside: Path
    tty: Path


@pytest.fixture
def special(tree: Tree) -> Iterator[Special]:
    fifo_outside = tree.outside / "fifo-outside"
    os.mkfifo(fifo_outside)
    master, slave = os.openpty()
    tty = Path(os.ttyname(slave))
    (tree.root / "to-fifo").symlink_to(fifo_outside)
    (tree.root / "to-fifo-inside").symlink_to("fifo")
    (tree.root / "to-tty").symlink_to(tty)
    try:
        yield Special(tree, fifo_outside, tty)
    finally:
        os.close(slave)
        os.close(master)


SPECIAL_NAMES = ["fifo", "to-fifo", "to-fifo-inside", "to-tty"]


def _target(special: Special, name: str) -> Path:
    return {"to-fifo": special.fifo_outside, "to-tty": special.tty}.get(name, special.tree.root / "fifo")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify counts the opens")
@pytest.mark.parametrize("name", SPECIAL_NAMES)
@pytest.mark.parametrize("follow_symlinks", [False, True], ids=["confined", "follow-symlinks"])
@pytest.mark.parametrize("pinned", [True, False], ids=["o-path", "stat-first"])
def test_the_gate_never_opens_what_is_not_a_file_or_directory(
    special: Special,
    name: str,
    follow_symlinks: bool,
    pinned: bool,
    no_fd_leak: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Also where descriptors cannot be pinned (no O_PATH or no /proc): stat first, then open."""
    monkeypatch.setattr(paths, "_CAN_PIN", pinned)
    policy = special.tree.policy(follow_symlinks=follow_symlinks)
    watch = OpenWatch(_target(special, name))
    try:
        with pytest.raises(NotServable):
            open_beneath(SafePath(special.tree.root / name), policy)
        with pytest.raises(NotServable):
            open_beneath(resolve(name, replace(policy, follow_symlinks=True)), policy)
        dir_fd = os.open(special.tree.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert stat_child(dir_fd, name, policy) is None
        finally:
            os.close(dir_fd)
        assert watch.opens() == 0
    finally:
        watch.close()


def test_stat_child_still_follows_allowed_symlinks(tree: Tree, no_fd_leak: None) -> None:
    dir_fd = os.open(tree.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        st = stat_child(dir_fd, "link-inside.txt", tree.policy())
        assert st is not None and os.path.samestat(st, os.stat(tree.root / "hello.txt"))
        assert stat_child(dir_fd, "link-outside.txt", tree.policy()) is None
        assert stat_child(dir_fd, "link-outside.txt", tree.policy(follow_symlinks=True)) is not None
        assert stat_child(dir_fd, "dir-outside", tree.policy(follow_symlinks=True)) is not None
    finally:
        os.close(dir_fd)


_BECOMES_TERMINAL = """
import os, sys
from pathlib import Path
from app.storage.paths import PathPolicy, SafePath, open_beneath, stat_child
from app.storage.errors import NotServable

root, tty = Path(sys.argv[1]), sys.argv[2]
for follow in (False, True):
    policy = PathPolicy(root=root, follow_symlinks=follow)
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    assert stat_child(dir_fd, "to-tty", policy) is None
    try:
        open_beneath(SafePath(root / "to-tty"), policy)
    except NotServable:
        pass
# Field 7 of /proc/self/stat: the controlling terminal (0: none), after the process's name.
print(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[4])
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the controlling terminal from /proc")
def test_a_symlink_to_a_terminal_never_becomes_the_controlling_terminal(special: Special) -> None:
    """A daemon is a session leader without a terminal: opening a tty without O_NOCTTY would make
    it the controlling terminal, and closing that terminal would then hang the process up."""
    result = subprocess.run(
        [sys.executable, "-c", _BECOMES_TERMINAL, str(special.tree.root), str(special.tty)],
        cwd=Path(__file__).parents[2],
        start_new_session=True,  # a session leader without a controlling terminal, like a daemon
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0", "the gate's open made the terminal the controlling terminal"


def test_without_pinning_files_and_directories_still_open(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, no_fd_leak: None
) -> None:
    monkeypatch.setattr(paths, "_CAN_PIN", False)
    assert open_and_read("link-inside.txt", tree.policy()) == b"hello"
    assert open_and_read("sub/inner.txt", tree.policy()) == b"inner"
    fd, st = open_beneath(resolve("sub", tree.policy()), tree.policy())
    os.close(fd)
    assert stat.S_ISDIR(st.st_mode)
    with pytest.raises(NotServable):
        open_beneath(SafePath(tree.root / "link-outside.txt"), tree.policy())
