"""Listening sockets for VIPs that may not be on this node yet.

A floating VIP is programmed on every node of its group but present on only one; binding with
IP_FREEBIND lets the userspace dataplane listen on it everywhere, so only the address moves.
"""

from __future__ import annotations

import socket

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def vip_socket(address: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A bound, non-blocking socket on address:port, whether or not the address is local now."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:  # restart while old connections linger in TIME_WAIT; UDP must not share
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
