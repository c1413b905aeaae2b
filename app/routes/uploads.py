"""What the resumable-upload protocols (tus: app/routes/tus.py; the IETF draft:
app/routes/resumable_draft.py) share: where upload resources live, the one core per app, and the
creation's preconditions, checked at creation and again when the last byte is in.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from app.errors import PreconditionFailed
from app.http.conditional import RequestConditions, make_validators, write_allowed
from app.services import Services
from app.storage.resumable import ResumableUploads
from app.storage.upload_store import Resumable

PREFIX = "/api/uploads"


def make_core(services: Services) -> ResumableUploads:
    """An app's resumable-upload core (one per app: app/routes/resumable_draft.py `draft_uploads`
    makes it, and both protocols use that one, with its running hashes)."""
    return ResumableUploads(
        services.index,
        services.async_index,
        services.policy,
        fsync=services.settings.fsync,
        expiry=services.settings.upload_expiry,
    )


def checker(conditions: RequestConditions) -> Callable[[os.stat_result | None], None]:
    """The creation's If-Match / If-None-Match, checked at creation and again at publishing."""

    def check(st: os.stat_result | None) -> None:
        validators = None
        if st is not None:
            validators = make_validators(
                dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns
            )
        if not write_allowed(conditions, validators):
            raise PreconditionFailed()

    return check


def conditions_of(upload: Resumable) -> RequestConditions:
    """The preconditions an upload's creation carried (kept in its metadata)."""
    meta = upload.metadata
    return RequestConditions(if_match=meta.get("if-match"), if_none_match=meta.get("if-none-match"))
