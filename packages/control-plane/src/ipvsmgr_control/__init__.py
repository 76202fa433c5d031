"""ipvsmgr control plane: Raft-replicated desired state, REST API and agent streams."""
