"""Errors a write can end with; the API maps each to an HTTP status."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class ValidationError(Exception):
    """Bad input: one or more fields with the reason each is wrong."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


class WriteRejected(Exception):
    """A well-formed write that the current state refuses (decided when it is applied)."""

    status = 409
    slug = "conflict"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class Conflict(WriteRejected):
    pass


class NotFound(WriteRejected):
    status = 404
    slug = "not-found"


class PreconditionFailed(WriteRejected):
    status = 412
    slug = "precondition-failed"


REJECTIONS: dict[str, type[WriteRejected]] = {c.slug: c for c in (Conflict, NotFound, PreconditionFailed)}
