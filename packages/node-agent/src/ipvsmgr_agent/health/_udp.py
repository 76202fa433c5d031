"""UDP check: send the payload, pass on a reply (containing `expect` when set); ICMP unreachable fails."""

from __future__ import annotations

import socket

from ._probe import READ, Done, ProbeContext, SocketProbe, Starter, error_reason, target
from ._spec import CheckSpec


class DatagramProbe(SocketProbe):
    """A connected UDP socket: connecting is what makes the kernel report ICMP port unreachable to us."""

    __slots__ = ()

    def __init__(
        self, context: ProbeContext, family: int, address: tuple[str, int], payload: bytes, done: Done
    ) -> None:
        super().__init__(context, family, socket.SOCK_DGRAM, done)
        try:
            self._sock.connect(address)
            self._sock.send(payload)
        except OSError as err:
            self._fail_soon(error_reason(err.errno or 0))
            return
        self._want = READ
        self._arm()

    def _on_readable(self, events: int) -> None:
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionRefusedError:
            self._finish(False, "connection refused (ICMP port unreachable)")
            return
        except OSError as err:
            self._finish(False, error_reason(err.errno or 0))
            return
        self._on_datagram(data)

    def _on_datagram(self, data: bytes) -> None:
        raise NotImplementedError


class UdpProbe(DatagramProbe):
    __slots__ = ("_expect",)

    def __init__(
        self,
        context: ProbeContext,
        family: int,
        address: tuple[str, int],
        payload: bytes,
        expect: bytes | None,
        done: Done,
    ) -> None:
        self._expect = expect
        super().__init__(context, family, address, payload, done)

    def _on_datagram(self, data: bytes) -> None:
        if self._expect is None:
            self._finish(True, "reply received")
        elif self._expect in data:
            self._finish(True, f"reply contains {self._expect.decode()!r}")
        else:
            self._finish(False, f"reply does not contain {self._expect.decode()!r}")


def prepare_udp(spec: CheckSpec, context: ProbeContext) -> Starter:
    family, address = target(spec.address, spec.port)
    payload = spec.param("payload", "").encode()
    expect_text = spec.param("expect")
    expect = expect_text.encode() if expect_text is not None else None

    def start(done: Done) -> UdpProbe:
        return UdpProbe(context, family, address, payload, expect, done)

    return start
