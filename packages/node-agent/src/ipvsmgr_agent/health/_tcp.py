"""TCP check: the backend passes when a connection completes."""

from __future__ import annotations

import socket

from ._probe import Done, ProbeContext, SocketProbe, Starter, error_reason, target
from ._spec import CheckSpec


class TcpProbe(SocketProbe):
    __slots__ = ()

    def __init__(self, context: ProbeContext, family: int, address: tuple[str, int], done: Done) -> None:
        super().__init__(context, family, socket.SOCK_STREAM, done)
        self._connect(address)

    def _on_writable(self, events: int) -> None:
        code = self._connect_error(events)
        if code:
            self._finish(False, error_reason(code))
        else:
            self._finish(True, "connected")


def prepare_tcp(spec: CheckSpec, context: ProbeContext) -> Starter:
    family, address = target(spec.address, spec.port)

    def start(done: Done) -> TcpProbe:
        return TcpProbe(context, family, address, done)

    return start
