"""The `ferry` command. `ferry serve` has one flag per Settings field, generated from the fields.

Flags override the environment and config/ferry.env; a bad value stops start-up with one line
naming the setting and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import typing
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, TypeVar, overload

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app import __version__
from app.http import signing
from app.overseer import WORKER_ENV
from app.request import server_url
from app.settings import ENV_FILE, ENV_PREFIX, PublicUrl, Settings, SigningKeys, env_name
from app.storage.locations import AwsCredentials

EXIT_BAD_SETTINGS = 2
PROBE_SECONDS = 5.0  # how long `serve` retries a bucket that does not answer before serving anyway
EXIT_UNHEALTHY = 1
_S = TypeVar("_S", bound=BaseSettings)


def _add_setting_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    for name, field in Settings.model_fields.items():
        if names is not None and name not in names:
            continue
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description} [env {env_name(name)}, default {default!s}]"
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        metavar = name.upper()
        if typing.get_origin(field.annotation) is typing.Literal:
            # Shown, not enforced by argparse: Settings validates, so a bad value gets the same
            # one-line message naming the setting as a bad FERRY_* variable.
            metavar = "{" + ",".join(typing.get_args(field.annotation)) + "}"
        parser.add_argument(flag, metavar=metavar, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description="Ferry: a large-file download server.")
    parser.add_argument("--version", action="version", version=f"ferry {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the storage directory over HTTP")
    _add_setting_flags(serve)
    check = commands.add_parser(
        "healthcheck",
        help="exit 0 if the server answers /healthz, else 1 (the container's HEALTHCHECK)",
        description='GET <url>/healthz: exit 0 on 200 {"status": "ok"} (or "degraded": the index is being '
        "rebuilt, downloads work), else exit 1 with one line on stderr.",
    )
    check.add_argument(
        "--url",
        help="the server's base URL [default: http://FERRY_HOST:FERRY_PORT, 0.0.0.0 and :: as 127.0.0.1]",
    )
    check.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer [5]")
    sign = commands.add_parser(
        "sign",
        help="print a signed link that reads PATH until it expires",
        description="Print one full URL that reads PATH (a path below ROOT, as listings show it) for "
        "TTL, signed with the first of FERRY_SIGNING_KEYS; the base is FERRY_PUBLIC_URL, else "
        "http://HOST:PORT. Reads the same settings as `serve` (environment, config/ferry.env, flags).",
    )
    sign.add_argument("path", metavar="PATH", help="e.g. isos/big.iso, or a directory with --prefix")
    sign.add_argument("--ttl", default="1h", help="lifetime: 90s, 30m, 1h, 7d (at most 366d) [1h]")
    sign.add_argument(
        "--prefix", action="store_true", help="sign the directory PATH/: every file and listing below it"
    )
    sign.add_argument("--ip", metavar="CIDR", help="only clients in this address or network may use it")
    _add_setting_flags(sign, SIGN_SETTINGS)
    return parser


@overload
def load_settings(given: dict[str, Any]) -> Settings: ...
@overload
def load_settings(given: dict[str, Any], kind: type[_S]) -> _S: ...
def load_settings(given: dict[str, Any], kind: type[BaseSettings] = Settings) -> BaseSettings:
    """Settings from env and config/ferry.env, with the given flags on top; exits 2 if invalid."""
    try:
        return kind(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            field = str(error["loc"][0])
            # An unknown key in config/ferry.env comes back as its lower-cased name (ferry_bogus).
            where = env_name(field) if field in Settings.model_fields else field.upper()
            line = f"ferry: invalid setting {where}: {message}"
        else:
            line = f"ferry: invalid settings: {message}"  # a rule across settings names them itself
        print(line, file=sys.stderr)  # noqa: T201
        raise SystemExit(EXIT_BAD_SETTINGS) from None


SIGN_SETTINGS = ("signing_keys", "public_url", "host", "port")


class _Signing(BaseSettings):
    """What `ferry sign` reads, as `serve` reads it, without needing ROOT to exist."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=ENV_FILE, extra="ignore")

    signing_keys: SigningKeys = Settings.model_fields["signing_keys"].get_default(call_default_factory=True)
    public_url: PublicUrl = None
    host: str = Settings.model_fields["host"].default
    port: int = Settings.model_fields["port"].default


def sign(args: dict[str, Any]) -> int:
    """Print the URL of a new signed link; exit 2 with one line if it cannot be made."""
    path, ttl, prefix, ip = (args.pop(name) for name in ("path", "ttl", "prefix", "ip"))
    settings = load_settings(args, _Signing)
    try:
        if not settings.signing_keys:
            raise ValueError("FERRY_SIGNING_KEYS is not set")
        seconds = signing.parse_duration(ttl)
        link = signing.new_link(path, ttl=seconds, now=int(time.time()), prefix=prefix, ip=ip)
    except ValueError as exc:
        print(f"ferry sign: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_BAD_SETTINGS
    base = settings.public_url or server_url(settings.host, settings.port)
    print(base + signing.link_target(settings.signing_keys[0].get_secret_value().encode(), link))  # noqa: T201
    return 0


class _Address(BaseSettings):
    """FERRY_HOST and FERRY_PORT read as `serve` reads them (env, then config/ferry.env), without
    the rest of Settings: the healthcheck must not depend on ROOT existing."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=ENV_FILE, extra="ignore")

    host: str = Settings.model_fields["host"].default
    port: int = Settings.model_fields["port"].default


def default_url() -> str:
    address = _Address()
    return server_url(address.host, address.port)


def healthcheck(url: str | None, timeout: float) -> int:
    """GET <url>/healthz with the standard library only (the image has no curl)."""
    target = url or ""
    try:
        target = (url or default_url()).rstrip("/") + "/healthz"
        if not target.startswith(("http://", "https://")):
            raise ValueError("the URL must start with http:// or https://")
        with urllib.request.urlopen(target, timeout=timeout) as response:
            status, body = response.status, response.read(4096)
        answer = json.loads(body)
        # "degraded": the index is being rebuilt; downloads work, so the container is healthy.
        if status == 200 and isinstance(answer, dict) and answer.get("status") in ("ok", "degraded"):
            return 0
        problem = f"HTTP {status}: {body[:200]!r}"
    except ValidationError as exc:  # a bad FERRY_HOST/FERRY_PORT
        error = exc.errors()[0]
        problem = f"invalid setting {env_name(str(error['loc'][0]))}: {error['msg']}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code} {exc.reason}"
    except (OSError, ValueError) as exc:  # refused, timed out, not JSON
        problem = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
    line = " ".join(f"ferry healthcheck: {target + ': ' if target else ''}{problem}".split())
    print(line, file=sys.stderr)  # noqa: T201
    return EXIT_UNHEALTHY


def check_index(settings: Settings) -> int:
    """0 if the index database can be written where the settings put it, else exit status 2 with
    one line (as for any bad setting), before a server starts and fails in each worker."""
    from app.storage.schema import IndexLocationError, check_location

    try:
        check_location(settings.index_file)
    except IndexLocationError as exc:
        print(f"ferry: invalid setting {env_name('index_path')}: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_BAD_SETTINGS
    return 0


def check_storage(settings: Settings) -> int:
    """0 when the storage chosen can be served; else one line on stderr and exit status 2.

    A bucket is asked once before serving: credentials or a bucket the store refuses are a bad
    setting (exit 2, one line); a store that does not answer yet is not: Ferry serves, /healthz
    answers 503 until it does (a compose file may start Ferry before its storage)."""
    if settings.storage is None:
        return 0
    load_settings({}, AwsCredentials)  # half-given credentials: one line naming them, exit 2
    from app.storage.errors import Refused, Unreachable

    try:
        asyncio.run(_probe(settings))
    except Refused as exc:
        print(f"ferry: FERRY_STORAGE={settings.storage}: {exc.detail}", file=sys.stderr)  # noqa: T201
        return EXIT_BAD_SETTINGS
    except Unreachable as exc:
        print(  # noqa: T201
            f"ferry: FERRY_STORAGE={settings.storage}: {exc.detail}; serving anyway "
            "(/healthz answers 503 until the storage answers)",
            file=sys.stderr,
        )
    return 0


async def _probe(settings: Settings) -> None:
    from app.services import object_storage

    bucket = object_storage(settings, retry_seconds=PROBE_SECONDS)
    assert bucket is not None
    try:
        await bucket.check()
    finally:
        await bucket.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command == "serve":
        from app.server import serve

        settings: Settings = load_settings(args)
        if WORKER_ENV in os.environ:  # a worker its supervisor started: the server was checked
            return serve(settings)
        return check_storage(settings) or check_index(settings) or serve(settings)
    if command == "healthcheck":
        return healthcheck(args["url"], args["timeout"])
    if command == "sign":
        return sign(args)
    raise AssertionError(command)  # pragma: no cover
