"""ipvsmgr wire protocol shared by the control plane and the node agent."""

from . import v1
from ._ids import backend_id, parse_backend_id

__all__ = ["backend_id", "parse_backend_id", "v1"]
