"""The `ferry` command. `ferry serve` has one flag per Settings field, generated from the fields.

Flags override the environment and config/ferry.env; a bad value stops start-up with one line
naming the setting and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from app import __version__
from app.settings import Settings, env_name

EXIT_BAD_SETTINGS = 2


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
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
    return parser


def load_settings(given: dict[str, Any]) -> Settings:
    """Settings from env and config/ferry.env, with the given flags on top; exits 2 if invalid."""
    try:
        return Settings(**given)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command == "serve":
        from app.transfer.server import serve

        return serve(load_settings(args))
    raise AssertionError(command)  # pragma: no cover
