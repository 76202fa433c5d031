"""Floating VIPs on the node: quorum lease, kernel addresses with lifetimes, announcements, backstops."""

from ._addresses import PROTO, AddressConflict, FloatingAddress, FloatingAddresses
from ._announce import Announcer, RawSender, Sender
from ._keepalive import KeepAliver
from ._lease import QuorumLease, default_margin
from ._memory import MemoryAnnouncer, MemoryFloatingAddresses
from ._packets import gratuitous_arp, icmpv6_checksum, unsolicited_na
from ._protocol import AddressPlane, AnnouncePlane
from ._track import ScriptProbe, TcpProbe, TrackCheck, TrackChecks
from ._vips import Assignment, FloatingVips, Holding, Reason, Release
from ._watchdog import NetlinkRemover, Remover, Watchdog

__all__ = [
    "PROTO",
    "AddressConflict",
    "AddressPlane",
    "AnnouncePlane",
    "Announcer",
    "Assignment",
    "FloatingAddress",
    "FloatingAddresses",
    "FloatingVips",
    "Holding",
    "KeepAliver",
    "MemoryAnnouncer",
    "MemoryFloatingAddresses",
    "NetlinkRemover",
    "QuorumLease",
    "RawSender",
    "Reason",
    "Release",
    "Remover",
    "ScriptProbe",
    "Sender",
    "TcpProbe",
    "TrackCheck",
    "TrackChecks",
    "Watchdog",
    "default_margin",
    "gratuitous_arp",
    "icmpv6_checksum",
    "unsolicited_na",
]
