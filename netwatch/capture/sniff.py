"""The `sniff` backend: AF_PACKET capture with scapy, for nodes where eBPF is unavailable.

One scapy `L2ListenSocket` per interface (it sees both directions, like tcpdump), read by
a background thread into `packets.FlowAggregator`; `drain()` hands out the deltas. Only
raw bytes are taken from scapy (`recv_raw`): dissecting every packet would cap the rate
far below what a node carries. Interfaces may live in another network namespace
(`netns=`): the capture thread enters it, so the caller's thread never changes namespace.

Failure handling, as an SRE would want it from a fallback capture:
- an interface that vanishes mid-capture (pod deleted, veth gone) is logged, counted in
  `interfaces_lost` and dropped; capture continues on the others. One that merely goes
  down keeps its socket: the kernel resumes delivery when it comes back up;
- kernel drops (socket buffer overrun) are read from `PACKET_STATISTICS` into `lost`,
  the figure behind `netwatch_capture_lost_total`;
- `finished` turns true when no interface is left (or on `close()`), so a caller loop
  ends instead of waiting forever. `close()` reads what is still queued in the sockets,
  so `close()` then `drain()` returns the tail.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scapy.arch.linux import L2ListenSocket
from scapy.interfaces import InterfaceProvider, NetworkInterface
from scapy.layers import l2 as _l2  # noqa: F401 - registers Ethernet as the AF_PACKET link type

from netwatch.capture.packets import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    FlowAggregator,
    ListeningOracle,
)
from netwatch.core.flow import Connection

log = logging.getLogger(__name__)

_SOL_PACKET, _PACKET_STATISTICS = 263, 6  # linux/if_packet.h
_SO_RCVBUFFORCE = 33  # as root: a buffer above net.core.rmem_max
_CLONE_NEWNET = 0x40000000
_HATYPE_LINKTYPE = {1: LINKTYPE_ETHERNET, 772: LINKTYPE_ETHERNET, 65534: LINKTYPE_RAW}
"""ARPHRD_ETHER and ARPHRD_LOOPBACK carry Ethernet headers; ARPHRD_NONE (tun) raw IP."""
_VANISHED = frozenset({errno.ENETDOWN, errno.ENODEV, errno.ENXIO})
_BATCH = 256
"""Frames read per socket per wake-up: amortises the lock, keeps interfaces fair."""


class SniffError(Exception):
    """Capture could not start (no such interface or namespace, no permission)."""


@dataclass(slots=True)
class _Tap:
    name: str
    sock: Any  # scapy L2ListenSocket
    ifindex: int
    linktype: int


def _enter_netns(netns: str) -> None:
    """Move the calling thread (only) into a network namespace, by name or path."""
    path = netns if "/" in netns else f"/run/netns/{netns}"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({path}): {os.strerror(code)}")
    finally:
        os.close(fd)


class SniffSource:
    """Live connections on `interfaces` (names in `netns`, else in our own namespace)."""

    def __init__(
        self,
        interfaces: Sequence[str],
        *,
        node: str | None = None,
        netns: str | None = None,
        listening: ListeningOracle | None = None,
        promisc: bool = False,
        poll_interval: float = 0.2,
        buffer_bytes: int = 8 << 20,
        idle_timeout: float = 300.0,
    ) -> None:
        if not interfaces:
            raise SniffError("no interface to capture on")
        self.interfaces = tuple(interfaces)
        self.netns = netns
        self._promisc = promisc
        self._poll = poll_interval
        self._buffer = buffer_bytes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._aggregator = FlowAggregator(listening=listening, node=node, idle_timeout=idle_timeout)
        self._startup_error: BaseException | None = None
        self.lost = 0
        """Frames the kernel dropped before we read them (socket buffer full)."""
        self.interfaces_lost: list[str] = []
        """Interfaces that vanished mid-capture, in order."""
        self.error: BaseException | None = None
        """What stopped the capture thread, if it was not a normal stop."""
        self._thread = threading.Thread(target=self._run, name="netwatch-sniff", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise SniffError(str(self._startup_error)) from self._startup_error

    # --- FlowSource ------------------------------------------------------------------------

    def drain(self) -> Sequence[Connection]:
        with self._lock:
            return self._aggregator.drain()

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    # --- counters --------------------------------------------------------------------------

    @property
    def frames(self) -> int:
        """Frames read from the sockets."""
        with self._lock:
            return self._aggregator.frames

    @property
    def skipped(self) -> int:
        """Frames read but not counted (non-IP, other IP protocols, truncated)."""
        with self._lock:
            return sum(self._aggregator.skipped.values())

    # --- capture thread --------------------------------------------------------------------

    def _open(self, name: str) -> _Tap:
        try:
            ifindex = socket.if_nametoindex(name)
        except OSError:
            where = f" in network namespace {self.netns}" if self.netns else ""
            raise SniffError(f"no interface {name!r}{where}") from None
        # A ready-made NetworkInterface keeps scapy from resolving (and caching) names
        # in the process-wide interface list, which belongs to the root namespace.
        iface = NetworkInterface(
            InterfaceProvider(), data={"name": name, "network_name": name, "index": ifindex}
        )
        sock = L2ListenSocket(iface=iface, promisc=self._promisc)
        try:
            sock.ins.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, self._buffer)
        except PermissionError:
            sock.ins.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._buffer)
        sock.ins.setblocking(False)
        hatype = sock.ins.getsockname()[3]
        return _Tap(name, sock, ifindex, _HATYPE_LINKTYPE.get(hatype, -1))

    def _run(self) -> None:
        taps: list[_Tap] = []
        try:
            if self.netns is not None:
                _enter_netns(self.netns)
            for name in self.interfaces:
                taps.append(self._open(name))
        except Exception as exc:  # whatever it is, the constructor must hear of it
            self._startup_error = exc
            for tap in taps:
                tap.sock.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop(taps)
        except Exception as exc:  # the thread must not die silently
            log.exception("sniff capture failed")
            self.error = exc
        finally:
            for tap in taps:
                self._read(tap, limit=None)  # the tail, so close() then drain() has it
                self._collect_drops(tap)
                tap.sock.close()

    def _loop(self, taps: list[_Tap]) -> None:
        next_check = time.monotonic() + 1.0
        while taps and not self._stop.is_set():
            by_fd = {tap.sock.ins.fileno(): tap for tap in taps}
            ready, _, _ = select.select(list(by_fd), [], [], self._poll)
            for fd in ready:
                tap = by_fd[fd]
                if not self._read(tap, limit=_BATCH):
                    self._vanish(tap, taps)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                for tap in list(taps):
                    self._collect_drops(tap)
                    if not self._still_there(tap):
                        self._vanish(tap, taps)

    def _read(self, tap: _Tap, *, limit: int | None) -> bool:
        """Read up to `limit` queued frames; False if the interface is gone."""
        frames: list[tuple[bytes, float]] = []
        alive = True
        while limit is None or len(frames) < limit:
            try:
                _, data, ts = tap.sock.recv_raw(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                alive = exc.errno not in _VANISHED or self._still_there(tap)
                if alive:
                    log.info("interface %s went down; waiting for it to come back", tap.name)
                break
            if data:
                frames.append((data, float(ts)))
        with self._lock:
            for data, ts in frames:
                self._aggregator.add_frame(
                    data, linktype=tap.linktype, timestamp=ts, interface=tap.name
                )
        return alive

    @staticmethod
    def _still_there(tap: _Tap) -> bool:
        try:
            return socket.if_nametoindex(tap.name) == tap.ifindex
        except OSError:
            return False

    def _vanish(self, tap: _Tap, taps: list[_Tap]) -> None:
        taps.remove(tap)
        self._collect_drops(tap)
        tap.sock.close()
        self.interfaces_lost.append(tap.name)
        rest = ", ".join(t.name for t in taps) or "no interface left"
        log.warning("interface %s vanished; capture continues on: %s", tap.name, rest)

    def _collect_drops(self, tap: _Tap) -> None:
        """Add the kernel's drop count since the last read (reading resets it)."""
        try:
            raw = tap.sock.ins.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
        except OSError:
            return
        _packets, drops = struct.unpack("II", raw)
        with self._lock:
            self.lost += drops
