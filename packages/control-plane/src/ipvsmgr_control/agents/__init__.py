"""The agent-facing gRPC API: desired-state streams, reports, keep-alives."""

from ._registry import NodeRegistry, NodeStatus
from ._service import AgentApi

__all__ = ["AgentApi", "NodeRegistry", "NodeStatus"]
