"""DNS check over UDP: one query, judged on the reply's rcode; the packet format is written out by hand.

A resolver library would be a new dependency for a dozen lines of RFC 1035 header and question.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from ._probe import Done, ProbeContext, Starter, target
from ._spec import DNS_RCODES, DNS_TYPES, CheckSpec
from ._udp import DatagramProbe

_HEADER = struct.Struct("!HHHHHH")
_QUESTION_TAIL = struct.Struct("!HH")
_RECURSION_DESIRED = 0x0100
_RESPONSE = 0x8000
_CLASS_IN = 1
_RCODE_NAMES = {code: name for name, code in DNS_RCODES.items()}


@dataclass(frozen=True, slots=True)
class Reply:
    ident: int
    rcode: int
    name: str
    qtype: int
    answers: int


def encode_name(name: str) -> bytes:
    labels = [label.encode("ascii") for label in name.rstrip(".").split(".") if label]
    return b"".join(len(label).to_bytes(1, "big") + label for label in labels) + b"\0"


def encode_query(ident: int, name: str, qtype: int) -> bytes:
    header = _HEADER.pack(ident, _RECURSION_DESIRED, 1, 0, 0, 0)
    return header + encode_name(name) + _QUESTION_TAIL.pack(qtype, _CLASS_IN)


def read_name(data: bytes, pos: int) -> tuple[str, int]:
    """A possibly compressed name at `pos`; returns it and the offset just after it."""
    labels: list[str] = []
    end = -1
    for _ in range(128):  # bounds a pointer loop in a hostile reply
        if pos >= len(data):
            raise ValueError("name runs past the end of the reply")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise ValueError("truncated name pointer")
            end = pos + 2 if end < 0 else end
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            continue
        if length & 0xC0:
            raise ValueError("bad label length")
        if length == 0:
            return ".".join(labels).lower(), pos + 1 if end < 0 else end
        labels.append(data[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    raise ValueError("name pointer loop")


def decode_reply(data: bytes) -> Reply:
    if len(data) < _HEADER.size:
        raise ValueError("shorter than a DNS header")
    ident, flags, questions, answers, _, _ = _HEADER.unpack_from(data)
    if not flags & _RESPONSE or questions < 1:
        raise ValueError("not a DNS response to a question")
    name, pos = read_name(data, _HEADER.size)
    if pos + _QUESTION_TAIL.size > len(data):
        raise ValueError("truncated question")
    qtype, _ = _QUESTION_TAIL.unpack_from(data, pos)
    return Reply(ident=ident, rcode=flags & 0x000F, name=name, qtype=qtype, answers=answers)


def rcode_name(rcode: int) -> str:
    return _RCODE_NAMES.get(rcode, f"RCODE{rcode}")


class DnsProbe(DatagramProbe):
    __slots__ = ("_ident", "_name", "_qtype", "_rcode")

    def __init__(
        self,
        context: ProbeContext,
        family: int,
        address: tuple[str, int],
        question: tuple[str, int],
        want: int,
        done: Done,
    ) -> None:
        self._ident = random.getrandbits(16)  # replies with another id are strays or spoofs
        self._name, self._qtype = question
        self._rcode = want
        super().__init__(context, family, address, encode_query(self._ident, self._name, self._qtype), done)

    def _on_datagram(self, data: bytes) -> None:
        try:
            reply = decode_reply(data)
        except ValueError as err:
            self._finish(False, f"malformed DNS reply: {err}")
            return
        if reply.ident != self._ident or reply.name != self._name or reply.qtype != self._qtype:
            return  # not the answer to this query: keep waiting until the timeout
        words = f"rcode {rcode_name(reply.rcode)}"
        if reply.rcode != self._rcode:
            self._finish(False, f"{words} (expected {rcode_name(self._rcode)})")
        else:
            self._finish(True, f"{words}, {reply.answers} answer{'' if reply.answers == 1 else 's'}")


def prepare_dns(spec: CheckSpec, context: ProbeContext) -> Starter:
    family, address = target(spec.address, spec.port)
    question = (spec.param("query"), DNS_TYPES[spec.param("query_type", "A")])
    want = DNS_RCODES[spec.param("expect_rcode", "NOERROR")]

    def start(done: Done) -> DnsProbe:
        return DnsProbe(context, family, address, question, want, done)

    return start
