"""kube-proxy's iptables mode, reduced to what the lab needs, inside each node namespace.

The rules mirror what kube-proxy writes, chain names included, so conntrack and capture
see exactly the NAT a real node does:

- `nat PREROUTING` and `nat OUTPUT` jump to `KUBE-SERVICES` (pod traffic is routed by
  the node and hits PREROUTING; hostNetwork clients hit OUTPUT);
- one `KUBE-SVC-<hash>` chain per Service port, choosing an endpoint with
  `-m statistic --mode random --probability 1/(n-i)`, and one `KUBE-SEP-<hash>` per
  endpoint doing the DNAT;
- hairpin (a pod reaching itself through its Service) and clients outside the cluster
  CIDR are marked 0x4000 and masqueraded in `KUBE-POSTROUTING`, as kube-proxy does;
- Service ports without endpoints are REJECTed in the filter table;
- `IP-MASQ` (ip-masq-agent's job) SNATs pod egress leaving for the internet host to the
  node's address, unless the scenario says `internet: {masquerade: false}`.

Everything is applied in one `iptables-restore` per node namespace; the root namespace
is never touched. The rules die with the namespace.
"""

from __future__ import annotations

import base64
import hashlib

from netwatch.lab.plan import LabNode, LabPlan, LabService, LabServicePort

MASQ_MARK = "0x4000/0x4000"


def chain_hash(*parts: str) -> str:
    """kube-proxy's chain suffix: base32 of a SHA-256, 16 characters."""
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def svc_chain(service: LabService, port: LabServicePort) -> str:
    name = f"{service.key}:{port.spec.name or ''}"
    return "KUBE-SVC-" + chain_hash(name, port.spec.protocol.value.lower())


def sep_chain(service: LabService, port: LabServicePort, endpoint: str) -> str:
    name = f"{service.key}:{port.spec.name or ''}"
    return "KUBE-SEP-" + chain_hash(name, port.spec.protocol.value.lower(), endpoint)


def node_rules(plan: LabPlan, node: LabNode) -> str:
    """The `iptables-restore` input for one node namespace (nat and filter tables)."""
    cluster_cidr = plan.scenario.cluster_cidr
    chains = ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        "-A KUBE-POSTROUTING -j MASQUERADE",
    ]
    rejects: list[str] = []
    for service in plan.services:
        if service.cluster_ip is None:
            continue  # headless: DNS only, no proxying
        for port in service.ports:
            proto = port.spec.protocol.value.lower()
            match = f"-d {service.cluster_ip}/32 -p {proto} -m {proto} --dport {port.spec.port}"
            label = f"{service.key}:{port.spec.name or port.spec.port}"
            if not port.backends:
                rejects.append(
                    f'-A KUBE-SERVICES {match} -m comment --comment "{label} has no endpoints" '
                    "-j REJECT --reject-with icmp-port-unreachable"
                )
                continue
            svc = svc_chain(service, port)
            chains.append(svc)
            rules.append(
                f'-A KUBE-SERVICES {match} -m comment --comment "{label} cluster IP" -j {svc}'
            )
            rules.append(
                f"-A {svc} ! -s {cluster_cidr} {match} "
                f'-m comment --comment "{label} cluster IP" -j KUBE-MARK-MASQ'
            )
            count = len(port.backends)
            for i, backend in enumerate(port.backends):
                endpoint = f"{backend.pod.ip}:{backend.port}"
                sep = sep_chain(service, port, endpoint)
                chains.append(sep)
                comment = f'-m comment --comment "{label} -> {endpoint}"'
                if i < count - 1:
                    probability = f"{1.0 / (count - i):0.10f}"
                    rules.append(
                        f"-A {svc} {comment} -m statistic --mode random "
                        f"--probability {probability} -j {sep}"
                    )
                else:
                    rules.append(f"-A {svc} {comment} -j {sep}")
                rules.append(f"-A {sep} -s {backend.pod.ip}/32 {comment} -j KUBE-MARK-MASQ")
                rules.append(
                    f"-A {sep} -p {proto} {comment} -m {proto} -j DNAT --to-destination {endpoint}"
                )
    if plan.internet is not None and plan.internet.masquerade:
        chains.append("IP-MASQ")
        rules += [
            f"-A POSTROUTING -s {node.pod_cidr} -o {node.uplink} "
            '-m comment --comment "ip-masq-agent" -j IP-MASQ',
            f"-A IP-MASQ -d {cluster_cidr} -j RETURN",
            f"-A IP-MASQ -d {plan.scenario.node_cidr} -j RETURN",
            "-A IP-MASQ -j MASQUERADE",
        ]
    lines = ["*nat", *(f":{c} - [0:0]" for c in chains), *rules, "COMMIT"]
    lines += ["*filter", ":KUBE-SERVICES - [0:0]"]
    lines += [
        f"-A {hook} -m conntrack --ctstate NEW -j KUBE-SERVICES"
        for hook in ("INPUT", "FORWARD", "OUTPUT")
    ]
    lines += [*rejects, "COMMIT", ""]
    return "\n".join(lines)
