"""Storage raises storage errors; app/errors.py is the one place they become HTTP answers."""

from __future__ import annotations

import errno
import json

import pytest

from app.errors import error_response, http_error
from app.storage import errors as storage
from tests.architecture import graph, load


def _all(cls: type[storage.StorageError] = storage.StorageError) -> list[type[storage.StorageError]]:
    return [sub for child in cls.__subclasses__() for sub in (child, *_all(child))]


# Each error with the answer Ferry gave before storage had errors of its own.
ANSWERS = [
    (storage.InvalidInput("invalid cursor"), 400, "invalid cursor", {}),
    (storage.NotServable(), 404, "Not Found", {}),
    (storage.InTheWay("the directory is not empty"), 409, "the directory is not empty", {}),
    (storage.WriteRefused(), 403, "the storage does not allow writing here", {}),
    (storage.NameTooLong(), 414, "the path is too long for the file system", {}),
    (storage.NoSpace(), 507, "not enough space to store the upload", {}),
    (storage.OutOfDescriptors(), 503, "out of file descriptors", {"retry-after": "1"}),
    (
        storage.IndexRebuilding(),
        503,
        "the index is being rebuilt from the disk; try again shortly",
        {"retry-after": "5"},
    ),
    (storage.Changed(), 412, "the file changed meanwhile", {}),
    (storage.Unreachable(), 503, "the storage is not reachable; try again shortly", {"retry-after": "5"}),
    (storage.Refused("the bucket does not exist"), 503, "the bucket does not exist", {"retry-after": "5"}),
]


@pytest.mark.parametrize(("error", "status", "detail", "headers"), ANSWERS, ids=lambda v: type(v).__name__)
def test_each_storage_error_is_answered_as_before(
    error: storage.StorageError, status: int, detail: str, headers: dict[str, str]
) -> None:
    response = error_response(error)
    assert response.status_code == status
    assert json.loads(bytes(response.body)) == {"detail": detail}
    assert {k: v for k, v in response.headers.items() if k == "retry-after"} == headers


def test_every_storage_error_has_an_answer_of_its_own() -> None:
    assert {type(e) for e, *_ in ANSWERS} == set(_all())
    assert all(http_error(cls()).status != 500 for cls in _all())


@pytest.mark.parametrize(
    ("code", "answer"),
    [
        (errno.ENOSPC, storage.NoSpace),
        (errno.EDQUOT, storage.NoSpace),
        (errno.EFBIG, storage.NoSpace),
        (errno.EACCES, storage.WriteRefused),
        (errno.EPERM, storage.WriteRefused),
        (errno.EROFS, storage.WriteRefused),
        (errno.ENAMETOOLONG, storage.NameTooLong),
        (errno.EMFILE, storage.OutOfDescriptors),
        (errno.ENFILE, storage.OutOfDescriptors),
    ],
)
def test_a_refused_write_is_told_by_its_errno_class(code: int, answer: type[storage.StorageError]) -> None:
    assert type(storage.write_refusal(OSError(code, "refused"))) is answer
    assert storage.write_refusal(OSError(errno.EIO, "unexpected")) is None


def test_no_storage_module_imports_the_http_errors() -> None:
    edges = graph(load())
    http = [
        name for name, targets in edges.items() if name.startswith("app.storage") and "app.errors" in targets
    ]
    assert http == []
