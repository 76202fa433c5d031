"""`ipvsmgr`, the admin CLI: REST calls to the control plane with endpoint failover, tables for people."""

from ._main import main

__all__ = ["main"]
