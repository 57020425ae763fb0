"""Which addresses are cluster pods — for the capture's counted-once rule, kept current.

A connection between two pods crosses two pod veths, possibly on two nodes; the capture
reports it only from the server pod's veth (`capture.assemble`). For that it must know
whether a remote address is a pod: one not on this node is recognised only from here.
The agent feeds this object from its inventory at every rebuild — the pod IPs of the
current (non-hostNetwork) pods and every node's `spec.podCIDRs` — plus the `--pod-cidr`
flags, so pods created after the agent started (and clusters whose IPAM does not follow
node pod CIDRs) are recognised without a restart. The capture calls it from the drain,
on the agent's thread; `update` swaps one immutable tuple, so any thread may call it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from netwatch.core.cluster import Cluster

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(texts: Sequence[str], *, what: str) -> tuple[Network, ...]:
    out = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{what} {text!r}: not a CIDR") from None
    return tuple(out)


class ClusterPods:
    """`pods(ip)`: is `ip` a cluster pod's address, as far as the inventory knows now."""

    def __init__(self, pod_cidrs: Sequence[str] = ()) -> None:
        self._flags = parse_networks(pod_cidrs, what="--pod-cidr")  # refuses bad flags now
        self._flag_texts = tuple(pod_cidrs)
        self._view: tuple[frozenset[str], tuple[Network, ...]] = (frozenset(), self._flags)
        self.version = 0
        """Changes whenever the answers may (the capture re-asks what it remembered)."""

    def update(self, cluster: Cluster) -> None:
        ips = frozenset(
            str(ipaddress.ip_address(ip))
            for pod in cluster.pods
            if not pod.host_network
            for ip in pod.ips
        )
        view = (ips, tuple(cluster.pod_ranges(self._flag_texts)))
        if view != self._view:
            self._view = view
            self.version += 1

    def __call__(self, ip: str) -> bool:
        ips, networks = self._view
        if ip in ips:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in networks)
