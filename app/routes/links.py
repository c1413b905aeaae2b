"""POST /api/sign: mint a signed expiring link (the write token's holder shares a file or folder)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, field_validator

from app.errors import BadRequest, Conflict
from app.http import signing
from app.request import scope_base_url
from app.services import services_of

router = APIRouter(prefix="/api", tags=["links"])

_TTL = r"^[1-9][0-9]{0,4}[smhdSMHD]?$"
_NETWORK = r"^([0-9]{1,3}\.){3}[0-9]{1,3}(/[0-9]{1,2})?$|^[0-9A-Fa-f:]{2,39}(/[0-9]{1,3})?$"


class SignRequest(BaseModel):
    """What to share, for how long, and optionally only with one network."""

    path: str = Field(
        min_length=1,
        max_length=4096,
        pattern=r"^[^\x00-\x1f\x7f\\]+$",
        description="path below the storage root, e.g. docs/report.pdf",
    )
    ttl: Annotated[
        Annotated[int, Field(ge=1, le=signing.MAX_TTL)] | Annotated[str, Field(pattern=_TTL)],
        Field(description="lifetime: seconds, or 90s, 30m, 1h, 7d (at most 366d)"),
    ]
    prefix: bool = Field(False, description="sign the directory PATH/: every file and listing under it")
    ip: str | None = Field(
        None, pattern=_NETWORK, description="only clients in this address or CIDR network may use it"
    )

    @field_validator("ttl")
    @classmethod
    def _seconds(cls, value: int | str) -> int:
        return signing.parse_duration(str(value))

    @field_validator("ip")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        return signing.normalise_network(value) if value else None


class SignedLink(BaseModel):
    url: str = Field(description="the full link, from FERRY_PUBLIC_URL (else this request's host)")
    href: str = Field(description="the same link relative to the site root: /files/…?expires=…&sig=…")
    expires: int = Field(description="when the link stops working, unix seconds")


async def write_token_holder(request: Request) -> None:
    """Minting links needs the write token."""
    gate = services_of(request).gate
    gate.mint(gate.token(request.headers.get("authorization")))


@router.post(
    "/sign",
    response_model=SignedLink,
    dependencies=[Depends(write_token_holder)],
    responses={
        400: {"description": "a path that cannot be signed ('..', empty segments, control characters)"},
        401: {"description": "the write token is missing or wrong"},
        409: {"description": "signing is off: FERRY_SIGNING_KEYS is not set"},
        422: {"description": "a lifetime or network that cannot be used"},
    },
)
def sign_link(request: Request, body: SignRequest) -> SignedLink:
    """A link that reads PATH (or everything under PATH/ with `prefix`) until it expires."""
    settings = services_of(request).settings
    if not settings.signing_keys:
        raise Conflict("signing is off: FERRY_SIGNING_KEYS is not set")
    assert isinstance(body.ttl, int)
    try:
        link = signing.new_link(body.path, ttl=body.ttl, now=int(time.time()), prefix=body.prefix, ip=body.ip)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    href = signing.link_target(settings.signing_keys[0].get_secret_value().encode(), link)
    return SignedLink(
        url=scope_base_url(request.scope, settings.public_url) + href, href=href, expires=link.expires
    )
