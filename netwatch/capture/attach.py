"""TC clsact attach/detach of the capture programs, and which links to attach to.

The programs go on the HOST side of pod veths, in the node's network namespace: TC
ingress there sees what the pod sends, TC egress what it receives (`bpf/flows.c`). Each
program is one `cls_bpf` filter in direct-action mode at a fixed priority and handle, so
it can be found, replaced atomically by a restarted capture (`replace`: no gap in
counting) and removed without touching anybody else's filters. It returns TC_ACT_UNSPEC,
so filters after it (a CNI's) still decide the packet's fate.

`enter_netns` moves the calling thread — call it first, before threads exist — into
another network namespace while keeping the mount namespace (and so the host's bpffs).
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

TC_PRIORITY = 1
"""First in the chain, so no other classifier can hide a packet from the counters."""
TC_HANDLE = 0x6E77  # "nw"
PARENT_INGRESS = 0xFFFFFFF2  # clsact ingress (ffff:fff2)
PARENT_EGRESS = 0xFFFFFFF3  # clsact egress (ffff:fff3)
PROGRAM_PREFIX = "nw_"
_CLONE_NEWNET = 0x40000000
_ENOENT, _EEXIST, _ENODEV, _EINVAL = 2, 17, 19, 22


class AttachError(RuntimeError):
    pass


def enter_netns(spec: str, *, run_dir: Path = Path("/run/netns")) -> None:
    """setns(CLONE_NEWNET) into `spec`: a name under /run/netns or a path."""
    path = Path(spec) if "/" in spec else run_dir / spec
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise AttachError(f"network namespace {spec!r}: {exc.strerror}") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise AttachError(f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class LinkInfo:
    index: int
    name: str
    kind: str | None
    peer_netnsid: int | None
    """IFLA_LINK_NETNSID: the namespace (as an id of ours) holding the veth peer."""
    has_global_address: bool = False
    """An address of global scope on this side: a node uplink, not a pod's host veth."""


def list_links(ipr: IPRoute) -> list[LinkInfo]:
    addressed = {msg["index"] for msg in ipr.get_addr() if msg["scope"] == 0}
    links: list[LinkInfo] = []
    for msg in ipr.get_links():
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        nsid = msg.get_attr("IFLA_LINK_NETNSID")
        links.append(
            LinkInfo(
                index=msg["index"],
                name=msg.get_attr("IFLA_IFNAME"),
                kind=kind,
                peer_netnsid=nsid if isinstance(nsid, int) and nsid >= 0 else None,
                has_global_address=msg["index"] in addressed,
            )
        )
    return links


@dataclass(frozen=True, slots=True)
class LinkSelector:
    """Which links get programs: name patterns (fnmatch) or, without any, pod veths.

    A pod's host-side veth carries no address of its own (routed CNIs answer the pod's
    gateway by proxy/static neighbour, bridged ones enslave it); a veth that does — a
    container node's `eth0`, the lab's node uplink — is the node's own link, and
    counting there too would see pod traffic twice.
    """

    patterns: tuple[str, ...] = ()

    def matches(self, link: LinkInfo) -> bool:
        if self.patterns:
            return any(fnmatch.fnmatchcase(link.name, p) for p in self.patterns)
        return link.kind == "veth" and not link.has_global_address

    def select(self, links: Iterable[LinkInfo]) -> list[LinkInfo]:
        return [link for link in links if self.matches(link)]


def _errno(exc: NetlinkError) -> int:
    return int(exc.code)


def _is_ours(msg: Any) -> bool:
    if msg.get_attr("TCA_KIND") != "bpf" or msg["handle"] != TC_HANDLE:
        return False
    if (msg["info"] >> 16) != TC_PRIORITY:
        return False
    options = msg.get_attr("TCA_OPTIONS")
    name = options.get_attr("TCA_BPF_NAME") if options is not None else None
    return isinstance(name, str) and name.startswith(PROGRAM_PREFIX)


class TcAttacher:
    """Puts the two programs on links; one instance per thread (owns a netlink socket)."""

    def __init__(self, *, ingress_fd: int, egress_fd: int, names: tuple[str, str]) -> None:
        self._fds = {PARENT_INGRESS: (ingress_fd, names[0]), PARENT_EGRESS: (egress_fd, names[1])}
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def attach(self, index: int) -> None:
        """clsact (if missing) + our filter on both hooks, replacing a previous instance."""
        try:
            self._ipr.tc("add", "clsact", index)
        except NetlinkError as exc:
            if _errno(exc) != _EEXIST:
                raise AttachError(f"clsact on ifindex {index}: {exc}") from exc
        for parent, (fd, name) in self._fds.items():
            try:
                self._ipr.tc(
                    "replace-filter",
                    "bpf",
                    index,
                    TC_HANDLE,
                    fd=fd,
                    name=name,
                    parent=parent,
                    prio=TC_PRIORITY,
                    classid=1,
                    direct_action=True,
                )
            except NetlinkError as exc:
                raise AttachError(f"bpf filter on ifindex {index}: {exc}") from exc

    def ours(self, index: int) -> list[int]:
        """Parents (hooks) on which our filter is present."""
        found: list[int] = []
        for parent in (PARENT_INGRESS, PARENT_EGRESS):
            try:
                msgs = self._ipr.get_filters(index=index, parent=parent)
            except NetlinkError:
                continue
            if any(_is_ours(m) for m in msgs):
                found.append(parent)
        return found

    def detach(self, index: int) -> bool:
        """Remove our filters; drop clsact when nothing else uses it. False: link gone."""
        for parent in (PARENT_INGRESS, PARENT_EGRESS):
            try:
                self._ipr.tc("del-filter", "bpf", index, TC_HANDLE, parent=parent, prio=TC_PRIORITY)
            except NetlinkError as exc:
                if _errno(exc) == _ENODEV:
                    return False
                if _errno(exc) not in (_ENOENT, _EINVAL):
                    raise AttachError(f"detach from ifindex {index}: {exc}") from exc
        others = 0
        for parent in (PARENT_INGRESS, PARENT_EGRESS):
            with contextlib.suppress(NetlinkError):
                others += len(self._ipr.get_filters(index=index, parent=parent))
        if others == 0:
            with contextlib.suppress(NetlinkError):
                self._ipr.tc("del", "clsact", index)
        return True

    def detach_everywhere(self, links: Sequence[LinkInfo]) -> list[str]:
        """Remove our filters from every link carrying them (also a previous run's)."""
        removed: list[str] = []
        for link in links:
            if self.ours(link.index):
                self.detach(link.index)
                removed.append(link.name)
        return removed
