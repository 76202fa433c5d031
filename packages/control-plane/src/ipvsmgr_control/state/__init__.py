"""Desired state: validation, the SQLite state machine, revisions and the change feed."""

from . import _schema as schema
from ._changes import AGENT_BLIND_KINDS, Change, ChangeBatch, Subscription, WatchHub
from ._declarative import diff as apply_diff
from ._errors import REJECTIONS, Conflict, FieldError, NotFound, PreconditionFailed, ValidationError, WriteRejected
from ._health import health_entry, rfc3339, same_health
from ._objects import backend_ids, content, health_key
from ._placement import (
    HISTORY_LIMIT,
    accepts_holding,
    holding_entry,
    holding_key,
    older_holding,
    owner,
    planned_fields,
    same_holding,
)
from ._store import StateStore

__all__ = [
    "AGENT_BLIND_KINDS",
    "HISTORY_LIMIT",
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
    "accepts_holding",
    "apply_diff",
    "backend_ids",
    "content",
    "health_entry",
    "health_key",
    "holding_entry",
    "holding_key",
    "older_holding",
    "owner",
    "planned_fields",
    "rfc3339",
    "same_health",
    "same_holding",
    "schema",
]
