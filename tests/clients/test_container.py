"""The image without a Docker engine: Ferry started as the Dockerfile would start it.

The final stage's ENV, USER, WORKDIR, CMD and HEALTHCHECK are parsed from the Dockerfile and
used as they are; only paths and the port are substituted (the venv, the /data volume and the
index directory become local paths, FERRY_PORT a free port). docker-compose.yml is checked
against the Dockerfile and Settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
from ruamel.yaml import YAML

from app.settings import Settings
from app.storage.locations import parse_storage
from tests.conftest import free_port, wait_for
from tests.support.seaweed import Seaweed

pytestmark = pytest.mark.clients

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
# What python:3.11-slim's environment gives every process before the Dockerfile's own ENV.
BASE_IMAGE_ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


# -- the Dockerfile ------------------------------------------------------------------------------


@dataclass
class Stage:
    """One stage's instructions, in order, as (KEYWORD, arguments)."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"the final stage needs exactly one {keyword}, has {found}"
        return found[0]

    def env(self) -> dict[str, str]:
        """ENV in order, with $VAR and ${VAR} expanded from the base image's environment."""
        env = dict(BASE_IMAGE_ENV)
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                name, eq, value = pair.partition("=")
                assert eq, f"use the ENV key=value form: {pair!r}"
                env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
        return env

    def user(self) -> tuple[int, int]:
        uid, _, gid = self.one("USER").partition(":")
        return int(uid), int(gid or uid)

    def exec_form(self, keyword: str) -> list[str]:
        args = self.one(keyword)
        if keyword == "HEALTHCHECK":
            args = args.partition(" CMD ")[2]
        command: list[str] = json.loads(args)  # exec form: no shell in between
        return command

    def labels(self) -> dict[str, str]:
        pairs = (pair.partition("=") for args in self.all("LABEL") for pair in shlex.split(args))
        return {name: value for name, _, value in pairs}


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: comments dropped, continuation lines joined."""
    stages: list[Stage] = []
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        keyword, _, args = (logical + line).partition(" ")
        logical = ""
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            stages.append(Stage(base=args))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


FINAL = parse_dockerfile(REPO / "Dockerfile")[-1]


# -- running a command as the image's user -------------------------------------------------------


@dataclass
class ImageUser:
    """How to run a command as the Dockerfile's USER here, or why it runs as the current user."""

    uid: int
    gid: int
    prefix: list[str] = field(default_factory=list)  # a wrapper that switches, when one is needed
    popen: dict[str, Any] = field(default_factory=dict)  # user=/group= when subprocess can switch
    skipped: str | None = None

    def run(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self.prefix, *command], **self.popen, **kwargs)

    def start(self, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*self.prefix, *command], **self.popen, **kwargs)


def _closed_to_others(path: Path) -> Path | None:
    """The highest directory on the way to `path` that a stranger (neither owner nor group) cannot
    enter, else `path` itself if a stranger cannot list it, else None."""
    for directory in reversed(path.parents):
        if not directory.stat().st_mode & 0o001:
            return directory
    return None if path.stat().st_mode & 0o005 == 0o005 else path


def _reopened(paths: list[Path]) -> dict[Path, list[Path]]:
    """For each directory that closes one of `paths` to strangers, what to show inside it: the
    paths it closes (their children, when it is one of them), each once."""
    shown: dict[Path, list[Path]] = {}
    for path in sorted({p.resolve() for p in paths}):
        closed = _closed_to_others(path)
        if closed is None:
            continue
        targets = shown.setdefault(closed, [])
        if any(path.is_relative_to(t) for t in targets):
            continue  # already shown with a directory above it
        targets += sorted(path.iterdir()) if closed == path else [path]
    return shown


def _view_commands(shown: dict[Path, list[Path]], stage: Path, mount: str) -> list[str]:
    """Shell commands, for a private mount namespace, laying an empty 0755 tmpfs over each closed
    directory with only what must be shown bound back in (a symlink copied as a symlink). Each view
    is built on a staging mount point first: the closed directory still reachable while binding."""
    q = shlex.quote
    commands = ["umask 022"]
    for i, (closed, targets) in enumerate(shown.items()):
        view = stage / f"view-{i}"
        view.mkdir()
        commands.append(f"{mount} -t tmpfs -o mode=0755,size=1m ferry-test {q(str(view))}")
        for target in targets:
            inside = view / target.relative_to(closed)
            commands.append(f"mkdir -p {q(str(inside.parent))}")
            if target.is_symlink():
                commands.append(f"ln -s {q(os.readlink(target))} {q(str(inside))}")
            elif target.is_dir():
                commands.append(f"mkdir {q(str(inside))} && {mount} --bind {q(str(target))} {q(str(inside))}")
            else:
                commands.append(f": > {q(str(inside))} && {mount} --bind {q(str(target))} {q(str(inside))}")
    for i, closed in enumerate(shown):
        commands.append(f"{mount} --move {q(str(stage / f'view-{i}'))} {q(str(closed))}")
    return commands


def image_user(uid: int, gid: int, env: dict[str, str], cwd: Path, scratch: Path) -> ImageUser:
    if os.geteuid() != 0:
        return ImageUser(uid, gid, skipped=f"not root (uid {os.geteuid()}): cannot switch to {uid}:{gid}")
    user = ImageUser(uid, gid, popen={"user": uid, "group": gid, "extra_groups": []})
    probe = [str(VENV / "bin" / "python"), "-c", "import app.cli"]
    try:
        if user.run(probe, env=env, cwd=cwd, capture_output=True).returncode == 0:
            return user
    except PermissionError:
        pass  # the interpreter cannot even be executed by that uid
    # In the image Python, the venv and Ferry's code live in /usr/local and /opt, open to every
    # user. Here they may live under directories closed to strangers: the interpreter under pyenv in
    # /root (mode 0700), the checkout (with its venv) in a private temporary folder, as CI clones
    # do. A machine artefact, not the image's: a private mount namespace lays an empty 0755 tmpfs
    # over each closed directory with only the interpreter's tree and the checkout bound back in
    # (their files keep their own permissions), then setpriv drops to the image's uid/gid with no
    # supplementary groups and execs the command unchanged.
    shown = _reopened([Path(sys.base_prefix), VENV, REPO])
    tools = [shutil.which(tool) for tool in ("unshare", "setpriv", "mount", "sh")]
    if not shown or None in tools:
        return ImageUser(uid, gid, skipped=f"uid {uid} cannot run {probe[0]} and no tools to fix it")
    if _closed_to_others(scratch) is not None:
        return ImageUser(uid, gid, skipped=f"uid {uid} cannot reach {scratch}")
    unshare, setpriv, mount, sh = (str(tool) for tool in tools)
    stage = scratch / "views"
    stage.mkdir()
    script = "set -e; " + "; ".join(_view_commands(shown, stage, mount))
    script += f'; exec {setpriv} --reuid={uid} --regid={gid} --clear-groups --inh-caps=-all -- "$@"'
    wrapped = ImageUser(
        uid, gid, prefix=[unshare, "--mount", "--propagation", "private", "--", sh, "-c", script, "sh"]
    )
    result = wrapped.run(probe, env=env, cwd=cwd, capture_output=True)
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return ImageUser(uid, gid, skipped=f"uid {uid} cannot run {probe[0]} here: {reason}")
    return wrapped


# -- the image's layout on this machine ----------------------------------------------------------


@dataclass
class Image:
    env: dict[str, str]
    cwd: Path
    root: Path
    index: Path
    serve: list[str]
    healthcheck: list[str]
    user: ImageUser
    logs: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['FERRY_PORT']}"


def _readable_tree(root: Path) -> None:
    """What a host's ./storage must be for the image's user to serve it: dirs 0755, files 0644."""
    root.chmod(0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            (Path(dirpath) / name).chmod(0o755)
        for name in filenames:
            (Path(dirpath) / name).chmod(0o644)


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    # Not pytest's tmp_path: its parents are 0700, closed to the image's user.
    scratch = Path(tempfile.mkdtemp(prefix="ferry-container-"))
    try:
        scratch.chmod(0o755)
        env = FINAL.env()
        uid, gid = FINAL.user()
        (image_venv,) = [a.split()[-1] for a in FINAL.all("COPY") if a.startswith("--from=")]
        (volume,) = json.loads(FINAL.one("VOLUME"))
        index_dir = PurePosixPath(env["FERRY_INDEX_PATH"]).parent
        workdir = PurePosixPath(FINAL.one("WORKDIR"))
        local = {
            image_venv: VENV,
            volume: scratch / "data",
            str(index_dir): scratch / "index-dir",
        }
        local.setdefault(str(workdir), scratch / "workdir")  # the same directory in this image

        def substitute(value: str) -> str:
            parts = value.split(":")  # PATH-like values too
            for i, part in enumerate(parts):
                for image_path, local_path in sorted(local.items(), key=lambda kv: -len(kv[0])):
                    if part == image_path or part.startswith(image_path + "/"):
                        parts[i] = str(local_path) + part[len(image_path) :]
                        break
            return ":".join(parts)

        # Paths and the port are the only substitutions: the venv, the /data volume, the index
        # directory and the WORKDIR become local directories, FERRY_PORT a free port. Everything
        # else (FERRY_HOST=0.0.0.0, PYTHON* settings, ...) is the Dockerfile's own value.
        env = {name: substitute(value) for name, value in env.items()}
        env["FERRY_PORT"] = str(free_port())
        env["HOME"] = substitute(str(workdir))  # what Docker sets from the user's passwd entry
        cwd = Path(substitute(str(workdir)))
        root = Path(env["FERRY_ROOT"])
        index = Path(env["FERRY_INDEX_PATH"])
        assert root == scratch / "data", "FERRY_ROOT must be the VOLUME"
        root.mkdir()
        (root / "hello.txt").write_bytes(b"hello, ferry\n")
        (root / "sub").mkdir()
        (root / "sub" / "digits.bin").write_bytes(bytes(range(256)) * 64)
        _readable_tree(root)
        for directory in {index.parent, cwd}:  # created and owned by the user, as in the Dockerfile
            directory.mkdir(mode=0o755, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(directory, uid, gid)

        def resolve(command: list[str]) -> list[str]:
            program = shutil.which(command[0], path=env["PATH"])
            assert program == str(VENV / "bin" / command[0]), f"{command[0]} resolves to {program}"
            return [program, *command[1:]]

        yield Image(
            env=env,
            cwd=cwd,
            root=root,
            index=index,
            serve=resolve(FINAL.exec_form("CMD")),
            healthcheck=resolve(FINAL.exec_form("HEALTHCHECK")),
            user=image_user(uid, gid, env, cwd, scratch),
            logs=scratch / "logs",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()  # the image's STOPSIGNAL
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def server(image: Image) -> Iterator[Running]:
    image.logs.mkdir(exist_ok=True)
    log_path = image.logs / f"ferry-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = image.user.start(image.serve, env=image.env, cwd=image.cwd, stdout=log, stderr=log)
    running = Running(process, log_path)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise AssertionError(f"ferry serve exited {process.returncode}: {log_path.read_text()}")
        try:
            if httpx.get(f"{image.url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            running.stop()
            raise AssertionError(f"ferry serve did not become ready: {log_path.read_text()}")
        time.sleep(0.05)
    yield running
    running.stop()


# -- the tests -----------------------------------------------------------------------------------


def test_serves_healthz_and_downloads(image: Image, server: Running) -> None:
    assert httpx.get(f"{image.url}/healthz").json() == {"status": "ok"}
    response = httpx.get(f"{image.url}/files/hello.txt")
    assert response.status_code == 200
    assert response.content == b"hello, ferry\n"
    ranged = httpx.get(f"{image.url}/files/sub/digits.bin", headers={"Range": "bytes=256-511"})
    assert ranged.status_code == 206
    assert ranged.content == bytes(range(256))
    assert image.index.is_file(), "the index is written outside ROOT, where FERRY_INDEX_PATH says"


def test_runs_as_the_image_user(image: Image, server: Running) -> None:
    if image.user.skipped:
        pytest.skip(f"user switch skipped: {image.user.skipped}")
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines()
    )
    uid, gid = image.user.uid, image.user.gid
    assert status["Uid"].split() == [str(uid)] * 4
    assert status["Gid"].split() == [str(gid)] * 4
    assert status["Groups"].split() == []
    assert (image.index.stat().st_uid, image.index.stat().st_gid) == (uid, gid)


def test_healthcheck_command_up_then_down(image: Image, server: Running) -> None:
    up = image.user.run(image.healthcheck, env=image.env, cwd=image.cwd, capture_output=True, timeout=30)
    assert (up.returncode, up.stderr) == (0, b"")
    # The healthcheck reads only FERRY_HOST/FERRY_PORT: a missing ROOT does not make it fail.
    no_volume = {**image.env, "FERRY_ROOT": str(image.root / "missing")}
    assert image.user.run(image.healthcheck, env=no_volume, cwd=image.cwd, timeout=30).returncode == 0
    assert server.stop() == 0, server.log.read_text()  # SIGTERM: a clean exit
    down = image.user.run(image.healthcheck, env=image.env, cwd=image.cwd, capture_output=True, timeout=30)
    assert down.returncode == 1
    lines = down.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferry healthcheck: http://127.0.0.1:"), lines


def test_image_layout() -> None:
    """The final stage's promises: non-root, /data for ROOT, the index outside it, exec-form
    commands, the stop signal Ferry handles, and OCI labels that match pyproject.toml."""
    env = FINAL.env()
    uid, gid = FINAL.user()
    assert uid != 0 and gid != 0
    assert json.loads(FINAL.one("VOLUME")) == [env["FERRY_ROOT"]] == ["/data"]
    assert not PurePosixPath(env["FERRY_INDEX_PATH"]).is_relative_to(env["FERRY_ROOT"])
    assert FINAL.one("EXPOSE") == env["FERRY_PORT"] == "8000"
    assert env["FERRY_HOST"] == "0.0.0.0"
    assert FINAL.exec_form("CMD") == ["ferry", "serve"]
    assert FINAL.exec_form("HEALTHCHECK") == ["ferry", "healthcheck"]
    assert FINAL.one("STOPSIGNAL") == "SIGTERM"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    labels = FINAL.labels()
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    for name in ("title", "description", "source"):
        assert f"org.opencontainers.image.{name}" in labels


def _seconds(duration: str) -> float:
    """A Compose duration: 1m30s, 35s, 500ms, 1h."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_matches_the_image_and_the_shutdown_timeout() -> None:
    compose = YAML(typ="safe").load((REPO / "docker-compose.yml").read_text())
    service = compose["services"]["ferry"]
    env = FINAL.env()
    assert service["build"] == "."

    # SIGKILL must not come before Ferry's own shutdown timeout has run out.
    shutdown_timeout = Settings.model_fields["shutdown_timeout"].default
    assert _seconds(service["stop_grace_period"]) > shutdown_timeout
    assert service.get("stop_signal", "SIGTERM") == FINAL.one("STOPSIGNAL")

    host_port, _, container_port = service["ports"][0].partition(":")
    assert container_port == FINAL.one("EXPOSE") == host_port
    mounts = dict(reversed(volume.split(":")[:2]) for volume in service["volumes"])
    (data,) = json.loads(FINAL.one("VOLUME"))
    assert mounts[data] == "./storage"
    index_volume = mounts[str(PurePosixPath(env["FERRY_INDEX_PATH"]).parent)]
    assert index_volume in compose["volumes"], "the index gets a named volume"
    for name, value in service["environment"].items():
        assert str(value) == env[name], f"{name} differs from the Dockerfile"

    assert service["env_file"] == [{"path": "config/ferry.env", "required": False}]
    assert service["healthcheck"]["test"] == ["CMD", *FINAL.exec_form("HEALTHCHECK")]
    assert service["restart"] == "unless-stopped"


# -- docker-compose.s3.yml: one bucket, replicas, a load balancer --------------------------------

S3_COMPOSE = REPO / "docker-compose.s3.yml"
CADDYFILE = REPO / "config" / "Caddyfile"
CADDY = VENV / "bin" / "caddy"
MiB = 1024**2


def _s3_compose() -> dict[str, Any]:
    compose: dict[str, Any] = YAML(typ="safe").load(S3_COMPOSE.read_text())
    return compose


def _replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from the project's Dockerfile: the Ferry replicas."""
    return {name: service for name, service in compose["services"].items() if service.get("build") == "."}


def _engine_flags(service: dict[str, Any]) -> dict[str, str]:
    """`-name=value` flags of the engine's command (a bare `-flag` is "true")."""
    flags = [arg for arg in service["command"] if arg.startswith("-")]
    return dict((flag[1:].partition("=")[0], flag.partition("=")[2] or "true") for flag in flags)


def _caddy_site(text: str) -> tuple[str, list[str], dict[str, str]]:
    """The Caddyfile's site address, its reverse_proxy upstreams and that block's subdirectives."""
    (site,) = re.findall(r"^(\S+) \{$", text, re.MULTILINE)
    (upstreams,) = re.findall(r"^\s*reverse_proxy ([^{\n]+)\{$", text, re.MULTILINE)
    block = text.split("reverse_proxy", 1)[1].split("}", 1)[0]
    directives = dict(
        (line.split(None, 1) + [""])[:2]
        for line in (raw.strip() for raw in block.splitlines()[1:])
        if line and not line.startswith("#")
    )
    return site, upstreams.split(), directives


def test_s3_compose_replicas_share_one_bucket_behind_the_balancer() -> None:
    """Every replica is the same service on the same bucket and settings; the engine's bucket,
    S3 port and credentials are the ones the replicas use; the load balancer's upstreams are the
    replicas, checked on /healthz; only the balancer publishes a port."""
    compose = _s3_compose()
    services = compose["services"]
    replicas = _replicas(compose)
    assert len(replicas) >= 2
    first, *others = replicas.values()
    assert all(other == first for other in others), "replicas differ: tokens, bucket or keys would too"

    # The replica: the image's layout, the Dockerfile's healthcheck, Ferry's shutdown timeout.
    env = {name: str(value) for name, value in first["environment"].items()}
    image_env = FINAL.env()
    for name in ("FERRY_ROOT", "FERRY_INDEX_PATH", "FERRY_HOST", "FERRY_PORT"):
        assert env[name] == image_env[name], f"{name} differs from the Dockerfile"
    for name in env:
        assert name.removeprefix("FERRY_").lower() in Settings.model_fields, f"{name} is no setting"
    assert first["healthcheck"]["test"] == ["CMD", *FINAL.exec_form("HEALTHCHECK")]
    assert _seconds(first["stop_grace_period"]) > Settings.model_fields["shutdown_timeout"].default
    assert "ports" not in first, "replicas are reached through the load balancer only"
    # Credentials from the file the operator fills (the engine reads the same one); settings such
    # as FERRY_WRITE_TOKEN and FERRY_SIGNING_KEYS from config/ferry.env, shared by every replica.
    credentials = {"path": "config/s3.env", "required": True}
    assert first["env_file"] == [credentials, {"path": "config/ferry.env", "required": False}]
    example = (REPO / "config" / "s3.env.example").read_text()
    assert re.findall(r"^(\w+)=", example, re.MULTILINE) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]

    # The engine: the bucket and S3 port the replicas use, telemetry off, nothing published.
    storage = parse_storage(env["FERRY_STORAGE"])
    endpoint = httpx.URL(env["FERRY_S3_ENDPOINT"])
    engine = services[endpoint.host]
    flags = _engine_flags(engine)
    assert engine["command"][0] == "mini"
    assert storage.bucket in flags["bucket"].split(",")
    assert int(flags["s3.port"]) == endpoint.port
    assert endpoint.scheme == "http" and env["FERRY_S3_ALLOW_HTTP"] == "true"
    assert flags["master.telemetry"] == "false"
    assert (flags["webdav"], flags["admin.ui"], flags["s3.port.iceberg"], flags["s3.port.lance"]) == (
        "false",
        "false",
        "0",
        "0",
    )
    assert "ports" not in engine, "the engine's S3 port stays inside the compose network"
    assert engine["env_file"] == [credentials]
    assert first["depends_on"] == {endpoint.host: {"condition": "service_healthy"}}
    assert f":{endpoint.port}/healthz" in " ".join(engine["healthcheck"]["test"])

    # The load balancer: config/Caddyfile mounted; its upstreams are the replicas, checked on /healthz.
    (balancer,) = (s for s in services.values() if s.get("image", "").startswith("caddy:"))
    assert "./config/Caddyfile:/etc/caddy/Caddyfile:ro" in balancer["volumes"]
    site, upstreams, directives = _caddy_site(CADDYFILE.read_text())
    assert upstreams == [f"{name}:{env['FERRY_PORT']}" for name in replicas]
    assert balancer["depends_on"] == {name: {"condition": "service_healthy"} for name in replicas}
    (published,) = balancer["ports"]
    assert published.partition(":")[2] == site.lstrip(":")
    assert directives["health_uri"] == "/healthz"
    assert directives["flush_interval"] == "-1", "downloads stream through, unbuffered"
    assert [name for name, service in services.items() if "ports" in service] == [
        name for name, service in services.items() if service is balancer
    ]


def test_s3_compose_engine_refuses_to_start_without_credentials(tmp_path: Path) -> None:
    """The engine's entrypoint (run by /bin/sh as in the image, `weed` a stand-in that records its
    arguments): blank credentials stop it with one line; given ones start `weed` with the command."""
    engine = _s3_compose()["services"]["seaweedfs"]
    # Compose turns $$ into $ before the container sees it.
    entrypoint = [arg.replace("$$", "$") for arg in engine["entrypoint"]]
    (tmp_path / "weed").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "args"}\n')
    (tmp_path / "weed").chmod(0o755)
    base = {"PATH": f"{tmp_path}:/usr/bin:/bin"}

    blank = subprocess.run(
        [*entrypoint, *engine["command"]],
        env={**base, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "secret"},
        capture_output=True,
        timeout=30,
    )
    assert blank.returncode == 2
    assert blank.stderr.decode().splitlines() == [
        "seaweedfs: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in config/s3.env"
    ]
    assert not (tmp_path / "args").exists()

    given = subprocess.run(
        [*entrypoint, *engine["command"]],
        env={**base, "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"},
        capture_output=True,
        timeout=30,
    )
    assert (given.returncode, given.stderr) == (0, b"")
    assert (tmp_path / "args").read_text().splitlines() == engine["command"]


@dataclass
class Balancer:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start_caddy(base: Path, upstreams: list[str]) -> Balancer:
    """config/Caddyfile as shipped, but for its addresses: the replicas' are `upstreams`, it listens
    on a loopback port, and its admin endpoint takes another (CADDY_ADMIN)."""
    port, admin = free_port(), free_port()
    site, shipped, _ = _caddy_site(CADDYFILE.read_text())
    text = CADDYFILE.read_text().replace(" ".join(shipped), " ".join(upstreams), 1)
    text = text.replace(f"\n{site} {{\n", f"\nhttp://127.0.0.1:{port} {{\n\tbind 127.0.0.1\n", 1)
    config = base / "Caddyfile"
    config.write_text(text)
    log = base / "caddy.log"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(base),
        "XDG_DATA_HOME": str(base / "data"),
        "XDG_CONFIG_HOME": str(base / "config"),
        "CADDY_ADMIN": f"127.0.0.1:{admin}",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(CADDY), "run", "--config", str(config), "--adapter", "caddyfile"],
            env=env,
            cwd=base,
            stdout=out,
            stderr=out,
        )
    return Balancer(process, f"http://127.0.0.1:{port}", log)


class _StreamingUpstream(BaseHTTPRequestHandler):
    """An upstream for the balancer that proves bytes are not held back: a PUT's first MiB must
    arrive before the client sends the rest, a GET's first MiB must reach the client before this
    sends the rest (each side waits for the other's event; 30 s at most)."""

    protocol_version = "HTTP/1.1"
    received_first = threading.Event()
    client_got_first = threading.Event()
    sent_after_client_got_first: list[bool] = []

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(b'{"status": "ok"}')
            return
        self.send_response(200)
        self.send_header("content-length", str(2 * MiB))
        self.end_headers()
        self.wfile.write(b"a" * MiB)
        self.wfile.flush()
        self.sent_after_client_got_first.append(self.client_got_first.wait(30))
        self.wfile.write(b"b" * MiB)

    def do_PUT(self) -> None:
        assert self.headers["transfer-encoding"] == "chunked"
        body = bytearray()
        while size := int(self.rfile.readline().strip(), 16):
            body += self.rfile.read(size)
            self.rfile.readline()
            if len(body) >= MiB:
                self.received_first.set()
        self.rfile.readline()
        self._answer(str(len(body)).encode())

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_s3_compose_balancer_streams_both_ways(tmp_path: Path) -> None:
    """config/Caddyfile (addresses substituted) passes request and response bodies on as they come:
    nothing is buffered whole, so a 50 GB upload or download starts at once and costs no memory."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _StreamingUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    balancer = _start_caddy(tmp_path, [f"127.0.0.1:{upstream.server_address[1]}"])
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{balancer.url}/healthz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(ready, timeout=60), balancer.log.read_text()[-3000:]

        forwarded_before_the_rest: list[bool] = []

        def body() -> Iterator[bytes]:
            yield b"x" * MiB
            forwarded_before_the_rest.append(_StreamingUpstream.received_first.wait(30))
            yield b"y" * MiB

        put = httpx.put(f"{balancer.url}/upload", content=body(), timeout=60)
        assert forwarded_before_the_rest == [True], "the request body was held back"
        assert (put.status_code, put.text) == (200, str(2 * MiB))

        with httpx.stream("GET", f"{balancer.url}/download", timeout=60) as download:
            got = 0
            for chunk in download.iter_raw():
                got += len(chunk)
                if got >= MiB:
                    _StreamingUpstream.client_got_first.set()
            assert got == 2 * MiB
        assert _StreamingUpstream.sent_after_client_got_first == [True], "the response was held back"
    finally:
        balancer.stop()
        upstream.shutdown()
        upstream.server_close()


def _replica_env(seaweed: Seaweed, prefix: str, index: Path, endpoint: str | None = None) -> dict[str, str]:
    """A replica's environment from docker-compose.s3.yml: the engine's address and credentials,
    the bucket under this test's key prefix, the index in `index`."""
    (replica, *_) = _replicas(_s3_compose()).values()
    env = {name: str(value) for name, value in replica["environment"].items()}
    env.update(seaweed.env())
    env["FERRY_S3_ENDPOINT"] = endpoint or seaweed.endpoint
    env["FERRY_STORAGE"] = env["FERRY_STORAGE"].rstrip("/") + "/" + prefix
    env["FERRY_INDEX_PATH"] = str(index)
    return env


def _launch_replica(root: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    port = env["FERRY_PORT"]
    with (cwd / f"ferry-{port}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--root", str(root), "--host", "127.0.0.1"],
            env={k: v for k, v in os.environ.items() if not k.startswith("FERRY_")} | env,
            cwd=cwd,
            stdout=log,
            stderr=log,
        )


@pytest.mark.engine
def test_s3_compose_replicas_serve_one_bucket_through_caddy(seaweed: Seaweed, tmp_path: Path) -> None:
    """Two replicas as the compose file configures them, plus one whose bucket is unreachable,
    behind config/Caddyfile: every request through the balancer is answered by a healthy replica
    (the unreachable one fails /healthz and gets none), ranges and validators are the same on every
    replica, a 24 MiB object streams through whole, and a replica that stops is routed around."""
    import obstore

    prefix = f"compose-{os.urandom(4).hex()}"
    store = seaweed.store()
    big = os.urandom(24 * 1024**2 + 5)
    obstore.put(store, f"{prefix}/hello.txt", b"hello, bucket\n")
    obstore.put(store, f"{prefix}/sub/big.bin", big)

    processes: list[subprocess.Popen[bytes]] = []
    balancer: Balancer | None = None
    try:
        urls = []
        for i, endpoint in enumerate([None, None, f"http://127.0.0.1:{free_port()}"]):
            cwd = tmp_path / f"replica-{i}"
            (cwd / "root").mkdir(parents=True)
            env = _replica_env(seaweed, prefix, cwd / "index.sqlite3", endpoint)
            env["FERRY_PORT"] = str(free_port())
            processes.append(_launch_replica(cwd / "root", cwd, env))
            urls.append(f"http://127.0.0.1:{env['FERRY_PORT']}")
        healthy, unreachable = urls[:2], urls[2]

        def health(url: str) -> int | None:
            try:
                return httpx.get(f"{url}/healthz", timeout=5).status_code
            except httpx.TransportError:
                return None

        def logs() -> str:
            return "\n".join(
                log.read_text()[-2000:] for log in sorted(tmp_path.glob("replica-*/ferry-*.log"))
            )

        assert wait_for(lambda: all(health(url) == 200 for url in healthy), timeout=120), logs()
        assert wait_for(lambda: health(unreachable) == 503, timeout=120), logs()
        assert httpx.get(f"{unreachable}/files/hello.txt", timeout=30).status_code == 503

        balancer = _start_caddy(tmp_path, [url.removeprefix("http://") for url in [*healthy, unreachable]])
        lb = balancer.url

        def served() -> bool:
            try:
                response = httpx.get(f"{lb}/files/hello.txt", timeout=30)
            except httpx.TransportError:
                return False
            return response.status_code == 200

        # Until the balancer has checked every replica once (and routes around the unreachable
        # one), then every request: a replica failing /healthz would otherwise take a share.
        assert wait_for(lambda: all(served() for _ in range(10)), timeout=120), balancer.log.read_text()[
            -3000:
        ]
        answers = [httpx.get(f"{lb}/files/hello.txt", timeout=30) for _ in range(40)]
        assert [(a.status_code, a.content) for a in answers] == [(200, b"hello, bucket\n")] * 40

        # One validator for one object on every replica: a resume may land on any of them.
        etags = {httpx.head(f"{url}/files/sub/big.bin", timeout=30).headers["etag"] for url in healthy}
        (etag,) = etags
        ranged = httpx.get(
            f"{lb}/files/sub/big.bin", headers={"Range": "bytes=1000-70999", "If-Range": etag}, timeout=30
        )
        assert (ranged.status_code, ranged.headers["etag"]) == (206, etag)
        assert ranged.content == big[1000:71000]
        with httpx.stream("GET", f"{lb}/files/sub/big.bin", timeout=60) as whole:
            assert whole.status_code == 200
            assert int(whole.headers["content-length"]) == len(big)
            digest = hashlib.sha256()
            for chunk in whole.iter_bytes():
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(big).hexdigest()

        def listed() -> bool:
            page = httpx.get(f"{lb}/files/", params={"format": "json"}, timeout=30)
            return page.status_code == 200 and {"hello.txt", "sub"} <= {
                e["name"] for e in page.json()["entries"]
            }

        assert wait_for(listed, timeout=60)

        # A replica stops: the balancer tries the other one (passive check, then the active one).
        processes[0].terminate()
        processes[0].wait(timeout=30)
        answers = [httpx.get(f"{lb}/files/hello.txt", timeout=30) for _ in range(20)]
        assert [a.status_code for a in answers] == [200] * 20
    finally:
        if balancer is not None:
            balancer.stop()
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
