"""Desired state: validation, the SQLite state machine, revisions and the change feed."""

from . import _schema as schema
from ._changes import Change, ChangeBatch, Subscription, WatchHub
from ._declarative import diff as apply_diff
from ._errors import REJECTIONS, Conflict, FieldError, NotFound, PreconditionFailed, ValidationError, WriteRejected
from ._objects import content
from ._store import StateStore

__all__ = [
    "REJECTIONS",
    "Change",
    "ChangeBatch",
    "Conflict",
    "FieldError",
    "NotFound",
    "PreconditionFailed",
    "StateStore",
    "Subscription",
    "ValidationError",
    "WatchHub",
    "WriteRejected",
    "apply_diff",
    "content",
    "schema",
]
