"""Ferry's settings: ``FERRY_*`` environment variables and ``config/ferry.env`` (from the working
directory), with ``ferry serve`` flags on top. A flag wins over the environment, which wins over
the file.

The CLI flags are generated from these fields, and each field's description is its flag's
``--help`` text (app/cli.py; `ferry sign` and `ferry healthcheck` read the few they need the same
way, without needing ROOT). ``config/ferry.env.example`` is written by hand: its tests check that
it lists exactly these settings with valid values, not that its comments repeat the descriptions.

Long because: every setting is one field with its default, bounds and description, in one class.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.storage.locations import S3Location, check_s3, parse_endpoint, parse_storage

ENV_PREFIX = "FERRY_"
ENV_FILE = "config/ferry.env"

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DECIMAL = {"kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}


def parse_size(value: Any) -> Any:
    """``65536``, ``64KiB``, ``4MiB``, ``1GiB`` (binary; ``KB``/``MB``/``GB`` are decimal) → bytes.

    Not pydantic's ByteSize: it agrees on these forms, but reads ``64k`` as 64000 (here 65536) and
    accepts fractions, PiB and more that a size setting refuses."""
    if not isinstance(value, str):
        return value
    match = _SIZE_RE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size (examples: 65536, 64KiB, 4MiB)")
    number, unit = match.group(1), (match.group(2) or "").lower()
    factor = _DECIMAL.get(unit) or _UNITS[unit.removesuffix("b").removesuffix("i")]
    return int(number) * factor


def parse_mime_types(value: Any) -> Any:
    """``.log=text/plain,.m3u8=application/vnd.apple.mpegurl`` → {".log": "text/plain", ...}."""
    if not isinstance(value, str):
        return value
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        ext, eq, mime = (s.strip() for s in item.partition("="))
        if not eq or not ext or "/" not in mime or any(c in mime for c in " \t\r\n;"):
            raise ValueError(f"{item!r} is not an extension=type pair (example: .log=text/plain)")
        pairs[ext.lower() if ext.startswith(".") else "." + ext.lower()] = mime
    return pairs


def parse_origins(value: Any) -> Any:
    """``https://a.example, https://b.example`` or ``*`` → a list of origins."""
    if not isinstance(value, str):
        return value
    origins = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError(f"{origin!r} is not an origin (example: https://app.example)")
    return origins


def parse_secrets(value: Any) -> Any:
    """``a,b,c`` → ["a", "b", "c"] (blank items dropped); secrets are compared, never printed."""
    if not isinstance(value, str):
        return value
    return [item.strip() for item in value.split(",") if item.strip()]


def _long_enough(keys: list[SecretStr]) -> list[SecretStr]:
    for key in keys:
        if len(key.get_secret_value().encode()) < 16:
            raise ValueError("each signing key needs at least 16 characters (32 random bytes is best)")
    return keys


_BASE_URL = re.compile(r"https?://[^/\s?#<>\"]+(/[^\s?#<>\"]*)?")


def parse_base_urls(value: Any) -> Any:
    """``https://a.example/ferry, https://b.example`` → a list of base URLs without a final '/'."""
    if not isinstance(value, str):
        return value
    return [parse_public_url(u.strip()) for u in value.split(",") if u.strip()]


def parse_public_url(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if value.strip() == "":
        return None
    if not _BASE_URL.fullmatch(value.strip()):
        raise ValueError(f"{value!r} is not a base URL (example: https://files.example/ferry)")
    return value.strip().rstrip("/")


def _blank_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _absolute(path: Path) -> Path:
    return path.expanduser().resolve()


def _absolute_or_none(path: Path | None) -> Path | None:
    return None if path is None else _absolute(path)


def _existing_directory(path: Path) -> Path:
    resolved = path.expanduser().resolve()
    if not resolved.is_dir():
        raise ValueError(f"{str(path)!r} is not an existing directory")
    return resolved


Size = Annotated[int, BeforeValidator(parse_size)]
Secrets = Annotated[list[SecretStr], NoDecode, BeforeValidator(parse_secrets)]
SigningKeys = Annotated[Secrets, AfterValidator(_long_enough)]
PublicUrl = Annotated[str | None, BeforeValidator(parse_public_url)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=ENV_FILE, extra="forbid", frozen=True, validate_default=True
    )

    root: Annotated[Path, AfterValidator(_existing_directory)] = Field(
        Path("./storage"), description="the directory served"
    )
    storage: Annotated[S3Location | None, BeforeValidator(parse_storage)] = Field(
        None,
        description="where files live: unset serves ROOT; s3://BUCKET[/PREFIX] an S3-compatible bucket",
    )
    s3_endpoint: Annotated[str | None, BeforeValidator(parse_endpoint)] = Field(
        None, description="the S3 endpoint URL for a bucket not on AWS, e.g. http://127.0.0.1:8333"
    )
    s3_region: Annotated[str | None, BeforeValidator(_blank_none)] = Field(
        None, min_length=1, description="the bucket's region (unset: AWS_REGION, else us-east-1)"
    )
    s3_allow_http: bool = Field(
        False, description="allow a plain-HTTP S3_ENDPOINT (credentials and bytes unencrypted)"
    )
    s3_downloads: Literal["proxy", "redirect"] = Field(
        "proxy",
        description="proxy: bytes stream through Ferry; redirect: 302 to a short-lived presigned URL",
    )
    s3_part_size: Size = Field(
        8 * 1024**2, ge=5 * 1024**2, le=5 * 1024**3, description="part size of S3 multipart uploads"
    )
    host: str = Field("0.0.0.0", min_length=1, description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="bind port (0 picks a free one)")
    workers: int = Field(1, ge=1, le=256, description="server processes sharing the port")
    chunk_size: Size = Field(
        1024**2, ge=4096, le=256 * 1024**2, description="read/send block: 65536, 64KiB, 4MiB"
    )
    zero_copy: Literal["auto", "on", "off"] = Field(
        "auto", description="auto/on/off: send file bytes with sendfile where the connection allows"
    )
    fast_path: Literal["on", "off"] = Field(
        "on",
        description="on: small file downloads (and 304/412/416) are answered below ASGI, the same bytes",
    )
    follow_symlinks: bool = Field(
        False, description="false: a path whose real location is outside ROOT is 404"
    )
    show_hidden: bool = Field(
        False, description="false: names starting with '.' are neither listed, searched nor served"
    )
    max_ranges: int = Field(
        16, ge=1, le=1000, description="a Range with more ranges than this gets the whole file (200)"
    )
    disposition: Literal["attachment", "inline"] = Field(
        "attachment", description="default Content-Disposition type; ?inline=1 / ?download=1 override it"
    )
    mime_types: Annotated[dict[str, str], NoDecode, BeforeValidator(parse_mime_types)] = Field(
        default_factory=dict,
        description="extra extension=type pairs, e.g. .log=text/plain,.m3u8=application/vnd.apple.mpegurl",
    )
    write_buffer: Size = Field(
        256 * 1024,
        ge=16 * 1024,
        le=64 * 1024**2,
        description="the most bytes queued for one connection before Ferry waits for the client",
    )
    index_path: Annotated[Path | None, AfterValidator(_absolute_or_none)] = Field(
        None,
        description="the index database, outside the served tree "
        "(default ./var/index.sqlite3, or a per-user cache file when that would be inside ROOT)",
    )
    watch: bool = Field(True, description="follow changes made by other programs with inotify")
    rescan_interval: float = Field(
        300,
        ge=0,
        description="seconds between incremental rescans of ROOT (the safety net); 0 turns them off",
    )

    write_token: SecretStr | None = Field(
        None, description="uploads and deletes are enabled only when set (Authorization: Bearer <token>)"
    )
    download_auth: Literal["public", "token", "signed"] = Field(
        "public",
        description="who may read: public; token (Authorization: Bearer, a READ_TOKENS or the write "
        "token); signed (a signed link, or a token)",
    )
    read_tokens: Secrets = Field(
        default_factory=list, description="bearer tokens that may read (comma-separated)"
    )
    signing_keys: SigningKeys = Field(
        default_factory=list,
        description="keys for signed links, comma-separated, newest first (links are signed with the "
        "first; any listed key verifies)",
    )
    max_upload_size: Size = Field(100 * 1024**3, ge=1, description="larger bodies get 413, nothing kept")
    fsync: bool = Field(True, description="fsync uploads before they are renamed into place")
    upload_expiry: float = Field(
        86400, gt=0, description="seconds a resumable upload stays open after its last append (then swept)"
    )

    header_timeout: float = Field(
        10, gt=0, description="seconds a client has to send a request's headers, from their first byte"
    )
    body_timeout: float = Field(
        60, gt=0, description="seconds an upload body may stall before the connection closes"
    )
    keepalive_timeout: float = Field(
        20, gt=0, description="seconds an idle keep-alive connection stays open after a response"
    )
    max_url_length: Size = Field(8192, ge=256, le=1024**2, description="longest request target (else 414)")
    max_headers: int = Field(100, ge=8, le=10_000, description="most request header fields (else 431)")
    max_header_size: Size = Field(
        64 * 1024, ge=1024, le=16 * 1024**2, description="most bytes of request header fields (else 431)"
    )
    max_connections_per_ip: int = Field(
        0, ge=0, description="most concurrent downloads per client address and worker (else 429); 0: no limit"
    )
    rate_limit: Size = Field(
        0, ge=0, description="bytes per second per download after RATE_LIMIT_AFTER; 0: no limit"
    )
    rate_limit_after: Size = Field(
        0, ge=0, description="bytes each download gets at full speed before RATE_LIMIT"
    )
    cors_origins: Annotated[list[str], NoDecode, BeforeValidator(parse_origins)] = Field(
        default_factory=list,
        description="origins allowed to fetch cross-site (comma-separated, or *); empty: CORS off",
    )
    shutdown_timeout: float = Field(
        30, ge=0, description="seconds in-flight transfers get to finish after SIGTERM before they are closed"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="access log lines: text or json (the server's own messages stay plain text)"
    )

    checksums: bool = Field(
        True, description="hash files in the background (SHA-256) for Repr-Digest, SHA256SUMS and .meta4"
    )
    hash_rate: Size = Field(
        256 * 1024**2, ge=0, description="bytes per second the background hasher reads; 0: no limit"
    )
    hash_on_demand_max: Size = Field(
        256 * 1024**2,
        ge=0,
        description="largest file (or SHA256SUMS total) hashed during a request that asks for a digest",
    )
    archives: bool = Field(True, description="folders download as zip or tar archives (?archive=zip|tar)")
    archive_max_files: int = Field(
        100_000, ge=1, le=10_000_000, description="most files in one folder archive (else 403)"
    )
    archive_max_size: Size = Field(
        0, ge=0, description="most bytes in one folder archive (else 403); 0: no limit"
    )
    mirrors: Annotated[list[str], NoDecode, BeforeValidator(parse_base_urls)] = Field(
        default_factory=list,
        description="base URLs of mirrors of ROOT (comma-separated): Link rel=duplicate and .meta4 sources",
    )
    public_url: Annotated[str | None, BeforeValidator(parse_public_url)] = Field(
        None, description="this server's external base URL for absolute links (default: from the request)"
    )

    @model_validator(mode="after")
    def _index_outside_root(self) -> Settings:
        if self.index_path is not None and self.index_path.is_relative_to(self.root):
            raise ValueError(f"FERRY_INDEX_PATH {str(self.index_path)!r} must be outside FERRY_ROOT")
        return self

    @model_validator(mode="after")
    def _s3_consistent(self) -> Settings:
        check_s3(self.storage, self.s3_endpoint, allow_http=self.s3_allow_http, show_hidden=self.show_hidden)
        return self

    @model_validator(mode="after")
    def _auth_has_secrets(self) -> Settings:
        if self.download_auth == "signed" and not self.signing_keys:
            raise ValueError("FERRY_DOWNLOAD_AUTH=signed needs FERRY_SIGNING_KEYS")
        if self.download_auth == "token" and not self.read_tokens and self.write_token is None:
            raise ValueError("FERRY_DOWNLOAD_AUTH=token needs FERRY_READ_TOKENS or FERRY_WRITE_TOKEN")
        return self

    @property
    def index_file(self) -> Path:
        """Where the index lives: FERRY_INDEX_PATH, else ./var/index.sqlite3 unless that is inside
        ROOT (as with ``--root .``), else a per-user cache file named after ROOT."""
        if self.index_path is not None:
            return self.index_path
        name = "index.sqlite3"
        if self.storage is not None:  # a bucket's index is its own, never a local root's
            bucket = hashlib.sha256(f"{self.s3_endpoint} {self.storage}".encode()).hexdigest()[:16]
            name = f"index-s3-{bucket}.sqlite3"
        local = _absolute(Path("./var") / name)
        if not local.is_relative_to(self.root):
            return local
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return _absolute(cache / "ferry" / name.replace("index", f"index-{digest}", 1))


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()
