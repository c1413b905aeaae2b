"""PUT, POST (multipart) and DELETE under /files/ when files live in a bucket."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive

from app.errors import MethodNotAllowed
from app.request import FileRequest
from app.services import Services
from app.storage.s3 import S3Storage


class BucketWrites:
    def __init__(self, services: Services, bucket: S3Storage) -> None:
        self.services = services
        self.bucket = bucket

    async def __call__(self, request: FileRequest, receive: Receive) -> ASGIApp | None:
        raise MethodNotAllowed()
