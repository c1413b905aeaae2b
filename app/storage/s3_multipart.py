"""The S3 multipart-upload calls obstore does not expose (create, upload a part, list the parts,
complete, abort), for uploads that outlive one request and one process (bucket_resumable.py).

obstore streams a multipart upload within one call and keeps its upload id to itself; a resumable
upload needs the id, and each part's ETag, kept between requests and shared by every replica. Each
call here is one HTTP/1.1 request on a connection of its own (plain or TLS), signed with AWS
Signature Version 4 in its header fields, the payload left unsigned (`UNSIGNED-PAYLOAD`, as S3 allows
over both): a call per part of FERRY_S3_PART_SIZE bytes, so a connection's set-up is noise.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape

import httptools

from app.storage.errors import Changed, NotServable, Refused, Unreachable
from app.storage.locations import AwsCredentials, S3Location

TIMEOUT = 120.0  # seconds one call may take (a part of up to 5 GiB is one call)
_UNSIGNED = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    etag: str
    size: int


@dataclass(slots=True)
class _Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    done: bool = False


class _Reader:
    """httptools' callbacks, filling one `_Answer`."""

    def __init__(self) -> None:
        self.answer = _Answer()
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answer.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.answer.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.answer.body += body

    def on_message_complete(self) -> None:
        self.answer.done = True


def _xml(body: bytes | bytearray, tag: str) -> str | None:
    found = re.search(rf"<{tag}>([^<]*)</{tag}>".encode(), body)
    return None if found is None else found[1].decode().replace("&quot;", '"').replace("&amp;", "&")


class Multipart:
    """Multipart-upload calls on one bucket (keys are given below the location's prefix)."""

    def __init__(
        self, location: S3Location, credentials: AwsCredentials, *, endpoint: str | None, region: str
    ) -> None:
        self.location = location
        self.region = region
        self._credentials = credentials
        if endpoint is not None:  # path style: a local engine has no bucket DNS names
            self.base = f"{endpoint.rstrip('/')}/{quote(location.bucket)}"
        else:
            self.base = f"https://{location.bucket}.s3.{region}.amazonaws.com"

    def _path(self, key: str) -> str:
        return quote(self.location.prefix + key, safe="/-_.~")

    async def create(self, key: str, attributes: dict[str, str]) -> str:
        """A new multipart upload of `key` (Content-Type, and the rest as x-amz-meta-); its id."""
        headers = {
            ("content-type" if name.lower() == "content-type" else f"x-amz-meta-{name.lower()}"): value
            for name, value in attributes.items()
        }
        answer = await self._call("POST", key, {"uploads": ""}, headers)
        upload_id = _xml(answer.body, "UploadId")
        if not upload_id:
            raise Unreachable("the storage answered a multipart creation without an upload id")
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> Part:
        query = {"partNumber": str(number), "uploadId": upload_id}
        answer = await self._call("PUT", key, query, {}, data)
        etag = answer.headers.get("etag")
        if not etag:
            raise Unreachable("the storage answered a part's upload without an ETag")
        return Part(number, etag, len(data))

    async def list_parts(self, key: str, upload_id: str) -> list[int]:
        """The numbers of the parts the store holds (NotServable once completed or aborted)."""
        answer = await self._call("GET", key, {"uploadId": upload_id}, {})
        return [int(n) for n in re.findall(rb"<PartNumber>(\d+)</PartNumber>", answer.body)]

    async def complete(self, key: str, upload_id: str, parts: list[Part]) -> None:
        items = "".join(
            f"<Part><PartNumber>{p.number}</PartNumber><ETag>{escape(p.etag)}</ETag></Part>" for p in parts
        )
        body = f"<CompleteMultipartUpload>{items}</CompleteMultipartUpload>".encode()
        xml = {"content-type": "application/xml"}
        answer = await self._call("POST", key, {"uploadId": upload_id}, xml, body)
        if b"<Error>" in answer.body:  # S3 may answer 200 and fail in the body
            raise Unreachable(f"the storage did not complete the upload ({_xml(answer.body, 'Code')})")

    async def abort(self, key: str, upload_id: str) -> None:
        """Abort the upload and drop its parts (done already, or never begun: nothing to do)."""
        try:
            await self._call("DELETE", key, {"uploadId": upload_id}, {})
        except NotServable:
            pass

    # --- one signed request ----------------------------------------------------------------------

    async def _call(
        self, method: str, key: str, query: dict[str, str], headers: dict[str, str], body: bytes = b""
    ) -> _Answer:
        url = urlsplit(f"{self.base}/{self._path(key)}")
        signed = self._sign(method, url.netloc, url.path, query, headers)
        line_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query.items())
        lines = [f"{method} {url.path}?{line_query} HTTP/1.1", f"host: {url.netloc}"]
        lines += [f"{name}: {value}" for name, value in signed.items()]
        lines += [f"content-length: {len(body)}", "connection: close"]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            async with asyncio.timeout(TIMEOUT):
                answer = await _exchange(url.hostname or "", url.port, url.scheme == "https", request, body)
        except (OSError, TimeoutError, httptools.HttpParserError) as exc:
            raise Unreachable(f"the storage did not answer: {type(exc).__name__}") from None
        _raise_for(answer)
        return answer

    def _sign(
        self, method: str, host: str, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> dict[str, str]:
        """`headers` plus the date, payload and Authorization fields of SigV4."""
        creds = self._credentials
        now = datetime.now(UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        fields = {name.lower(): value.strip() for name, value in headers.items()}
        fields |= {"x-amz-date": stamp, "x-amz-content-sha256": _UNSIGNED}
        if creds.aws_session_token is not None:
            fields["x-amz-security-token"] = creds.aws_session_token.get_secret_value()
        if creds.aws_access_key_id is None or creds.aws_secret_access_key is None:
            return fields  # anonymous
        signed = {"host": host, **fields}
        names = ";".join(sorted(signed))
        canonical_query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
        )
        canonical = "\n".join(
            [
                method,
                path,
                canonical_query,
                "".join(f"{name}:{signed[name]}\n" for name in sorted(signed)),
                names,
                _UNSIGNED,
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        secret = creds.aws_secret_access_key.get_secret_value()
        key = f"AWS4{secret}".encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        access = creds.aws_access_key_id.get_secret_value()
        fields["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={names}, Signature={signature}"
        )
        return fields


async def _exchange(host: str, port: int | None, tls: bool, request: bytes, body: bytes) -> _Answer:
    context = ssl.create_default_context() if tls else None
    reader, writer = await asyncio.open_connection(host, port or (443 if tls else 80), ssl=context)
    try:
        writer.write(request)
        if body:
            writer.write(body)
        await writer.drain()
        reading = _Reader()
        while not reading.answer.done:
            data = await reader.read(256 * 1024)
            if not data:
                raise ConnectionResetError("the storage closed the connection mid-answer")
            reading.parser.feed_data(data)
        return reading.answer
    finally:
        writer.close()


def _raise_for(answer: _Answer) -> None:
    status = answer.status
    if 200 <= status < 300:
        return
    code = _xml(answer.body, "Code") or str(status)
    if status == 404:
        raise NotServable()
    if status in (409, 412):
        raise Changed()
    if status in (401, 403):
        raise Refused(f"the storage refused Ferry's credentials ({code})")
    raise Unreachable(f"the storage answered {status} ({code})")
