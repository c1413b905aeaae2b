"""What the storage tests share: an S3 storage's settings for the session's engine (`weed mini`,
tests/support/seaweed.py), a request body as chunks, and a range read back whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import SecretStr

from app.storage.backend import Storage
from app.storage.locations import AwsCredentials, S3Location
from app.storage.s3 import S3Config
from tests.support.seaweed import Seaweed


def credentials(engine: Seaweed, secret: str | None = None) -> AwsCredentials:
    return AwsCredentials(
        aws_access_key_id=SecretStr(engine.access_key),
        aws_secret_access_key=SecretStr(secret or engine.secret_key),
    )


def config(engine: Seaweed, prefix: str, **options: object) -> S3Config:
    return S3Config(
        S3Location(engine.bucket, prefix),
        endpoint=engine.endpoint,
        region=engine.region,
        allow_http=True,
        **options,  # type: ignore[arg-type]
    )


async def body(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read(backend: Storage, path: str, start: int, end: int, **kw: str) -> bytes:
    stream = await backend.open_range(path, start, end, **kw)
    return b"".join([chunk async for chunk in stream])
