"""ipvsmgr node agent: makes this node's IPVS table and VIP addresses match the control plane."""
