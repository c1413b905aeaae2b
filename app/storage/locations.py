"""Where files live, as the settings name it: the local FERRY_ROOT, or an S3-compatible bucket
(FERRY_STORAGE=s3://BUCKET/PREFIX) reached with the standard AWS_* credentials.

Pure parsing and validation only; the S3 backend itself is app/storage/s3.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.storage.errors import StorageError
from app.storage.paths import split_key

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_ENDPOINT = re.compile(r"https?://[^/\s?#<>\"]+/?")


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where FERRY_STORAGE=s3://BUCKET/PREFIX points: a bucket, and a key prefix ('' or 'a/b/')."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_storage(value: Any) -> Any:
    """``s3://bucket`` or ``s3://bucket/some/prefix`` → an `S3Location`; unset or empty → None
    (the local FERRY_ROOT). The prefix is a folder: its segments obey the names' rules (no '..',
    no empty segment, no control characters); hidden segments are checked against SHOW_HIDDEN by
    `Settings`."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if not text.startswith("s3://"):
        raise ValueError(f"{value!r} is not s3://BUCKET[/PREFIX] (unset: serve FERRY_ROOT)")
    bucket, _, prefix = text.removeprefix("s3://").partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"{bucket!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
    prefix = prefix.removesuffix("/")
    if prefix:
        try:
            split_key(prefix, show_hidden=True)
        except StorageError:
            raise ValueError(
                f"{prefix!r} is not a plain key prefix (no '.', '..', '//' or control characters)"
            ) from None
    return S3Location(bucket, prefix + "/" if prefix else "")


def parse_endpoint(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if not _ENDPOINT.fullmatch(text):
        raise ValueError(f"{value!r} is not an endpoint URL (example: http://127.0.0.1:8333)")
    return text.rstrip("/")


def check_s3(
    storage: S3Location | None, endpoint: str | None, *, allow_http: bool, show_hidden: bool
) -> None:
    """What the S3 settings require of each other (ValueError naming them otherwise)."""
    if endpoint is not None and endpoint.startswith("http://") and not allow_http:
        raise ValueError(
            f"FERRY_S3_ENDPOINT {endpoint!r} is plain HTTP: set FERRY_S3_ALLOW_HTTP=true to allow it, "
            "or use https://"
        )
    if storage is not None and not show_hidden:
        if any(segment.startswith(".") for segment in storage.prefix.split("/")):
            raise ValueError(
                f"FERRY_STORAGE prefix {storage.prefix!r} is hidden: set FERRY_SHOW_HIDDEN=true to serve it"
            )


class AwsCredentials(BaseSettings):
    """The standard AWS_* variables an S3 bucket is reached with, from the environment only (not
    config/ferry.env, not flags: secrets stay out of files meant to be copied and out of `ps`).
    None given: the S3 client's own chain (instance profile, web identity) is left to find them."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True, env_ignore_empty=True)

    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    aws_region: str | None = None

    @model_validator(mode="after")
    def _paired(self) -> AwsCredentials:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together: set both or neither")
        if self.aws_session_token is not None and self.aws_access_key_id is None:
            raise ValueError("AWS_SESSION_TOKEN needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        return self
