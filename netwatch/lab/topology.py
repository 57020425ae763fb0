"""Building and removing a lab's namespaces, links, addresses and routes with `ip`.

Layout (all of it inside namespaces the run created; the root namespace's links,
routes, iptables and sysctls are never touched):

    internet netns ── eth0 203.0.113.10 ─┐
                                         │  nw<id>-inet 203.0.113.1
    fabric netns:  br0 192.168.56.1/24 + router (routes each podCIDR via its node)
                   │ nw<id>-n0      │ nw<id>-n1
    node netns:    eth0 .11         eth0 .12      (default via .1; other podCIDRs via
                   │                 │             their node; ip_forward=1)
                   vethXXXXXXXX ... (host side, /32 route + static neighbour per pod)
    pod netns:     eth0 10.244.1.2/32, default via 169.254.1.1 (the host veth)

Pods hang off routed veths rather than a node bridge (Calico's layout): every packet a
pod sends — to a pod on the same node too — crosses the node's IP stack, so Service
DNAT and its reverse work without `br_netfilter` (a host-wide module setting we must
not change) and node-to-pod traffic comes from the node's InternalIP, as policy
semantics expect. Neighbour entries are static, so captures hold no ARP.

Links are created directly inside their namespaces (`ip -n NODE link add ... peer ...
netns POD`); nothing ever appears in the root namespace, even briefly.

All commands go through a `Runner`, so tests can record them without root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Collection, Sequence
from typing import Protocol

from netwatch.lab.plan import HOST_VETH_MAC, POD_GATEWAY, LabPlan
from netwatch.lab.services import node_rules

FABRIC_BRIDGE = "br0"


class LabError(RuntimeError):
    """The system refused to build or run part of the lab."""


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], *, stdin: str | None = None) -> str:
        """Run `argv`, return its stdout; raise LabError if it fails."""
        ...


def run_command(argv: Sequence[str], *, stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"{' '.join(argv)}: exit status {proc.returncode}: {detail}")
    return proc.stdout


def build(plan: LabPlan, run: Runner = run_command, *, reserved: Collection[str] = ()) -> None:
    """Create every namespace, link, address, route, sysctl and NAT rule of `plan`.

    `reserved` namespaces exist already (the run id's reservation). On failure the
    caller removes what exists (`destroy`), by the plan's names.
    """
    for name in plan.netns_names():
        if name not in reserved:
            run(["ip", "netns", "add", name])
    _fabric(plan, run)
    if plan.internet is not None:
        inet = plan.internet
        ip_batch(
            run,
            inet.netns,
            [
                "link set lo up",
                f"addr add {inet.ip}/24 dev eth0",
                "link set eth0 up",
                f"route add default via {inet.router_ip}",
            ],
        )
    prefix = ipaddress.IPv4Network(plan.scenario.node_cidr).prefixlen
    for node in plan.nodes:
        commands = [
            "link set lo up",
            f"addr add {node.ip}/{prefix} dev {node.uplink}",
            f"link set {node.uplink} up",
            f"route add default via {plan.router_ip}",
        ]
        commands += [
            f"route add {other.pod_cidr} via {other.ip}"
            for other in plan.nodes
            if other.name != node.name
        ]
        local = [p for p in plan.pods if p.node == node.name and p.interface]
        for pod in local:
            commands += [
                f"link add {pod.interface} type veth peer name eth0 netns {pod.netns}",
                f"link set {pod.interface} address {HOST_VETH_MAC}",
                f"link set {pod.interface} up",
                f"route add {pod.ip}/32 dev {pod.interface} scope link",
                f"neigh replace {pod.ip} lladdr {pod.mac} dev {pod.interface} nud permanent",
            ]
        ip_batch(run, node.netns, commands)
        _sysctl(
            run,
            node.netns,
            [
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )
        for pod in local:
            configure_pod(run, pod.netns, ip=pod.ip, mac=pod.mac or "")
            if not plan.scenario.offloads:
                offloads_off(run, node.netns, pod.interface or "")
                offloads_off(run, pod.netns, "eth0")
        run(["ip", "netns", "exec", node.netns, "iptables-restore"], stdin=node_rules(plan, node))


def _fabric(plan: LabPlan, run: Runner) -> None:
    prefix = ipaddress.IPv4Network(plan.scenario.node_cidr).prefixlen
    commands = [
        "link set lo up",
        f"link add {FABRIC_BRIDGE} type bridge",
        f"link set {FABRIC_BRIDGE} up",
        f"addr add {plan.router_ip}/{prefix} dev {FABRIC_BRIDGE}",
    ]
    for node in plan.nodes:
        commands += [
            f"link add {node.fabric_port} type veth peer name {node.uplink} netns {node.netns}",
            f"link set {node.fabric_port} master {FABRIC_BRIDGE}",
            f"link set {node.fabric_port} up",
        ]
    if plan.internet is not None:
        port = f"nw{plan.run_id}-inet"
        commands += [
            f"link add {port} type veth peer name eth0 netns {plan.internet.netns}",
            f"addr add {plan.internet.router_ip}/24 dev {port}",
            f"link set {port} up",
        ]
    commands += [f"route add {node.pod_cidr} via {node.ip}" for node in plan.nodes]
    ip_batch(run, plan.fabric_netns, commands)
    _sysctl(run, plan.fabric_netns, ["net.ipv4.ip_forward=1"])


def configure_pod(run: Runner, netns: str, *, ip: str, mac: str) -> None:
    ip_batch(
        run,
        netns,
        [
            "link set lo up",
            f"link set eth0 address {mac}",
            f"addr add {ip}/32 dev eth0",
            "link set eth0 up",
            f"route add {POD_GATEWAY} dev eth0 scope link",
            f"route add default via {POD_GATEWAY} dev eth0",
            f"neigh replace {POD_GATEWAY} lladdr {HOST_VETH_MAC} dev eth0 nud permanent",
        ],
    )
    # Churn opens thousands of connections per second from one pod: TIME-WAIT reuse
    # and the range up to 65535 keep it from running out of source ports. The range
    # starts where Linux's default does (32768): below it, an ephemeral client port of a
    # closed UDP socket would look like a server's to the port-number heuristic, which
    # real nodes do not see (capture.packets.heuristic_server_is_low).
    _sysctl(run, netns, ["net.ipv4.ip_local_port_range=32768 65535", "net.ipv4.tcp_tw_reuse=1"])


def ip_batch(run: Runner, netns: str, commands: Sequence[str]) -> None:
    run(["ip", "-n", netns, "-batch", "-"], stdin="\n".join(commands) + "\n")


def _sysctl(run: Runner, netns: str, settings: Sequence[str]) -> None:
    # /proc/sys/net is per network namespace: these never reach the root namespace.
    run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *settings])


def offloads_off(run: Runner, netns: str, interface: str) -> None:
    run(
        [
            "ip", "netns", "exec", netns,
            "ethtool", "-K", interface, "tso", "off", "gso", "off", "gro", "off",
        ]
    )  # fmt: skip


# ---------------------------------------------------------------------- teardown


def list_netns(run: Runner = run_command) -> list[str]:
    """Names from `ip netns list` (each line is `name` or `name (id: N)`)."""
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]


def netns_pids(netns: str, run: Runner = run_command) -> list[int]:
    try:
        out = run(["ip", "netns", "pids", netns])
    except LabError:
        return []
    return [int(tok) for tok in out.split() if tok.isdigit()]


def destroy(names: Sequence[str], run: Runner = run_command) -> list[str]:
    """Delete these namespaces (and whatever still runs inside them); return leftovers.

    Deleting a node namespace deletes its veths and with them the pods' `eth0`s;
    iptables rules and conntrack entries live and die with their namespace.
    """
    existing = set(list_netns(run))
    present = [n for n in reversed(names) if n in existing]
    pids = {pid for name in present for pid in netns_pids(name, run) if pid != os.getpid()}
    terminate(sorted(pids))
    for name in present:
        try:
            run(["ip", "netns", "del", name])
        except LabError:
            if name in list_netns(run):
                raise
    remaining = set(list_netns(run))
    return [n for n in names if n in remaining]


def terminate(pids: Sequence[int], *, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds, for processes of the lab."""
    alive = [p for p in pids if _signal(p, signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _exists(p)]
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _exists(p)]


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":  # exited; collect it if it is our own child
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True
