"""The NetworkPolicy mix of the synthetic cluster.

Why a mix and not 200 copies of one policy: the engine's cost depends on which features
rules use — named ports resolve per destination pod, ipBlocks are matched against every
pod IP, namespace selectors against namespace labels, `matchExpressions` build
complements — so a benchmark that only exercised `matchLabels` would flatter it. Each
template below exists to put one of DESIGN §3's features in front of the engine at scale;
`benchmarks/README.md` lists them with their share of the default run.

Policies are returned without server metadata (`synthetic_cluster.py` adds it) and as
`kubectl get -o yaml` prints them: `policyTypes` sometimes omitted, ports sometimes
without `protocol`, since defaulting is the loader's job (§3.1, §3.3).
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from synthetic_inventory import NAMESPACE_NAME_LABEL, SYSTEM_NAMESPACES, AppInstance, Obj

_PRIVATE = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


@dataclass
class PolicyContext:
    """What the inventory produced that policy templates pick their targets from."""

    namespaces: dict[str, dict[str, str]]
    apps: list[AppInstance]
    node_cidrs: list[str]
    node_ips: list[str]
    pod_ips: list[str]

    def apps_in(self, namespace: str, *tiers: str) -> list[AppInstance]:
        return [a for a in self.apps if a.namespace == namespace and (not tiers or a.tier in tiers)]

    def teams(self) -> list[str]:
        return sorted({labels["team"] for labels in self.namespaces.values() if "team" in labels})


Spec = Obj
Template = Callable[[PolicyContext, random.Random, str], Spec | None]


def _sel(**labels: str) -> Obj:
    return {"matchLabels": dict(labels)}


def _expr(key: str, op: str, *values: str) -> Obj:
    e: Obj = {"key": key, "operator": op}
    if values:
        e["values"] = list(values)
    return e


def _app_sel(app: AppInstance) -> Obj:
    return _sel(app=app.labels["app"])


def _named(app: AppInstance, *names: str) -> list[Obj]:
    """Named ports the app really declares, in the spelling people write (no protocol)."""
    return [{"port": p.name} for p in app.ports if p.name in names]


# ---------------------------------------------------------------------- baseline


def default_deny_ingress(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """`podSelector: {}` + Ingress: every pod in the namespace is ingress-isolated."""
    return {"podSelector": {}, "policyTypes": ["Ingress"]}


def default_deny_all(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """Both directions isolated: egress now needs explicit rules (DNS first)."""
    return {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def allow_dns_egress(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """One peer with namespaceSelector AND podSelector (§3.4), UDP+TCP 53."""
    return {
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [
                    {
                        "namespaceSelector": _sel(**{NAMESPACE_NAME_LABEL: "kube-system"}),
                        "podSelector": _sel(**{"k8s-app": "kube-dns"}),
                    }
                ],
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
            }
        ],
    }


# ---------------------------------------------------------------------- fill templates


def allow_frontend_to_backend(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """Same-namespace podSelector peer and named ports (`http` is 80 or 8080 per pod)."""
    backends = ctx.apps_in(ns, "backend")
    if not backends:
        return None
    app = rng.choice(backends)
    ports = _named(app, "http", "grpc", "https")
    return {
        "podSelector": _app_sel(app),
        "ingress": [{"from": [{"podSelector": _sel(tier="frontend")}], "ports": ports}],
    }


def allow_ingress_controller(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """Namespace-only or namespace+pod peer from ingress-nginx; numeric and named ports."""
    peer: Obj = {"namespaceSelector": _sel(**{NAMESPACE_NAME_LABEL: "ingress-nginx"})}
    if rng.random() < 0.5:
        peer["podSelector"] = _sel(**{"app.kubernetes.io/name": "ingress-nginx"})
    tiers = {"matchExpressions": [_expr("tier", "In", "frontend", "edge")]}
    ports = [{"port": 80, "protocol": "TCP"}, {"port": 8080}, {"port": "http"}]
    if rng.random() < 0.5:
        ports.append({"port": 443, "protocol": "TCP"})
    return {
        "podSelector": tiers,
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [peer], "ports": ports}],
    }


def allow_prometheus_scrape(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """Combined peer (team=platform namespaces AND app=prometheus pods) on `metrics`."""
    selector = {"matchExpressions": [_expr("app", "Exists")]} if rng.random() < 0.5 else {}
    return {
        "podSelector": selector,
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": _sel(team="platform"),
                        "podSelector": _sel(app="prometheus"),
                    }
                ],
                "ports": [{"port": "metrics", "protocol": "TCP"}, {"port": 9090}],
            }
        ],
    }


def allow_cross_namespace(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """namespaceSelector with In/NotIn (NotIn matches namespaces without `env`), endPort."""
    apps = ctx.apps_in(ns, "backend", "edge")
    if not apps:
        return None
    app = rng.choice(apps)
    excluded = rng.sample(ctx.teams(), 3)
    ns_sel = {
        "matchExpressions": [
            _expr("env", rng.choice(["In", "NotIn"]), *rng.choice([["prod"], ["dev", "staging"]])),
            _expr("team", "NotIn", *excluded),
        ]
    }
    return {
        "podSelector": _app_sel(app),
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"namespaceSelector": ns_sel}],
                "ports": [{"port": 8000, "endPort": 8999, "protocol": "TCP"}, {"port": 443}],
            }
        ],
    }


def backend_version_gate(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """All four operators on pod selectors, on both the subject and the peer."""
    return {
        "podSelector": {"matchExpressions": [_expr("tier", "In", "data", "cache", "backend")]},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [
                    {
                        "podSelector": {
                            "matchExpressions": [
                                _expr("version", "NotIn", "v1"),
                                _expr("canary", "DoesNotExist"),
                                _expr("team", "Exists"),
                            ]
                        }
                    }
                ],
                "ports": [
                    {"port": 5432},
                    {"port": 6379, "protocol": "TCP"},
                    {"port": "grpc"},
                    {"port": 8080},
                ],
            }
        ],
    }


def egress_to_data(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """Egress-only policy: clients may reach data/cache pods (same namespace) and DNS."""
    return {
        "podSelector": {"matchExpressions": [_expr("tier", "In", "backend", "worker")]},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [
                    {"podSelector": {"matchExpressions": [_expr("tier", "In", "data", "cache")]}}
                ],
                "ports": [{"port": 5432}, {"port": 6379}, {"port": 9092}, {"port": "redis"}],
            },
            {
                "to": [{"namespaceSelector": {}, "podSelector": _sel(**{"k8s-app": "kube-dns"})}],
                "ports": [{"port": 53, "protocol": "UDP"}],
            },
        ],
    }


def egress_internet(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """ipBlock 0.0.0.0/0 minus private ranges: covers no pod IP, the usual shape."""
    return {
        "podSelector": _sel(tier=rng.choice(["edge", "backend"])),
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(_PRIVATE)}}],
                "ports": [{"port": 443}, {"port": 80}],
            }
        ],
    }


def allow_pod_cidr(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """ipBlocks that do cover pod IPs (§3.6 `match` mode), with excepts carving holes."""
    hole = rng.choice(ctx.node_cidrs)
    other = ipaddress.ip_network(rng.choice(ctx.node_cidrs))
    sub = rng.choice(list(other.subnets(new_prefix=min(other.prefixlen + 2, 32))))
    cidr = "10.244.0.0/16"
    if rng.random() < 0.3:  # host bits set: the API accepts it, the engine must ignore them
        cidr = f"{rng.choice(ctx.pod_ips)}/16"
    return {
        "podSelector": {"matchExpressions": [_expr("tier", "NotIn", "data")]},
        "ingress": [
            {
                "from": [{"ipBlock": {"cidr": cidr, "except": sorted({hole, str(sub)})}}],
                "ports": [
                    {"port": 8080},
                    {"port": 9090},
                    {"port": 80},
                    {"port": 9000, "endPort": 9100},
                ],
            }
        ],
    }


def allow_node_metrics(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """ipBlock of the node subnet with a *named* port: never matches IP peers (§3.5)."""
    return {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                "ports": [{"port": "metrics"}, {"port": 9090}],
            }
        ],
    }


def sctp_signaling(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """SCTP by name and by range; peers are backend pods in chosen teams' namespaces."""
    teams = rng.sample(ctx.teams(), 4)
    return {
        "podSelector": _sel(tier="backend"),
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {"matchExpressions": [_expr("team", "In", *teams)]},
                        "podSelector": _sel(tier="backend"),
                    },
                    {"podSelector": {}},
                ],
                "ports": [
                    {"port": "sig", "protocol": "SCTP"},
                    {"port": 9000, "endPort": 9010, "protocol": "SCTP"},
                ],
            }
        ],
    }


def multi_rule_api(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """Three ingress rules (pods, namespace, ipBlock on one node's podCIDR) and an egress."""
    apps = ctx.apps_in(ns, "backend")
    if not apps:
        return None
    app = rng.choice(apps)
    node_cidr = rng.choice(ctx.node_cidrs)
    return {
        "podSelector": _app_sel(app),
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {"from": [{"podSelector": _sel(tier="frontend")}], "ports": [{"port": "http"}]},
            {
                "from": [{"namespaceSelector": _sel(**{NAMESPACE_NAME_LABEL: "monitoring"})}],
                "ports": [{"port": "metrics"}],
            },
            {"from": [{"ipBlock": {"cidr": node_cidr}}], "ports": [{"port": 8443}, {"port": 8080}]},
        ],
        "egress": [
            {"to": [{"podSelector": {}}]},
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        ],
    }


def allow_all_ingress(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """`ingress: [{}]`: every source, external IPs included (§3.3)."""
    return {"podSelector": _sel(tier=rng.choice(["frontend", "edge"])), "ingress": [{}]}


def deny_data_ingress(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """`ingress: []` with Ingress declared: selected pods admit nothing from this policy."""
    return {"podSelector": _sel(tier="data"), "policyTypes": ["Ingress"], "ingress": []}


def same_namespace_both(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """policyTypes omitted with an egress section: effective Ingress+Egress (§3.1)."""
    return {
        "podSelector": {"matchExpressions": [_expr("canary", "DoesNotExist")]},
        "ingress": [{"from": [{"podSelector": {}}]}],
        "egress": [{"to": [{"podSelector": {}}]}, {"to": [{"namespaceSelector": {}}]}],
    }


def all_tcp_from_namespace(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """`ports: [{}]`: every TCP port, no UDP/SCTP (§3.3)."""
    team = _sel(team=ctx.namespaces[ns]["team"])
    return {
        "podSelector": _sel(tier="worker"),
        "ingress": [{"from": [{"namespaceSelector": team}], "ports": [{}]}],
    }


def stale_selector(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """Selects nothing (a leftover of a deleted app): costs a selector, changes nothing."""
    return {
        "podSelector": _sel(app="legacy-billing"),
        "ingress": [{"from": [{"podSelector": _sel(app="legacy-frontend")}]}],
    }


def egress_apiserver(ctx: PolicyContext, rng: random.Random, ns: str) -> Spec | None:
    """/32 ipBlocks outside the pod network (API server, node IPs) on numeric ports."""
    return {
        "podSelector": _sel(tier="worker"),
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [
                    {"ipBlock": {"cidr": "10.96.0.1/32"}},
                    {"ipBlock": {"cidr": f"{rng.choice(ctx.node_ips)}/32"}},
                ],
                "ports": [{"port": 443}, {"port": 6443}],
            }
        ],
    }


FILL: tuple[tuple[Template, int], ...] = (
    (allow_frontend_to_backend, 14),
    (allow_ingress_controller, 10),
    (allow_prometheus_scrape, 10),
    (allow_cross_namespace, 8),
    (backend_version_gate, 8),
    (egress_to_data, 8),
    (egress_internet, 6),
    (allow_pod_cidr, 6),
    (multi_rule_api, 6),
    (sctp_signaling, 5),
    (same_namespace_both, 4),
    (allow_node_metrics, 3),
    (allow_all_ingress, 3),
    (egress_apiserver, 3),
    (deny_data_ingress, 2),
    (all_tcp_from_namespace, 2),
    (stale_selector, 2),
)


def _platform() -> list[tuple[str, str, Spec]]:
    """Policies platform teams really ship: DNS open to all, ingress open to the world."""
    return [
        (
            "kube-system",
            "allow-dns",
            {
                "podSelector": _sel(**{"k8s-app": "kube-dns"}),
                "ingress": [
                    {
                        "from": [{"namespaceSelector": {}}],
                        "ports": [
                            {"port": "dns", "protocol": "UDP"},
                            {"port": "dns-tcp", "protocol": "TCP"},
                        ],
                    }
                ],
            },
        ),
        (
            "monitoring",
            "prometheus-egress",
            {"podSelector": _sel(app="prometheus"), "policyTypes": ["Egress"], "egress": [{}]},
        ),
        (
            "ingress-nginx",
            "allow-web",
            {
                "podSelector": _sel(**{"app.kubernetes.io/name": "ingress-nginx"}),
                "ingress": [
                    {
                        "from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                        "ports": [{"port": "http"}, {"port": "https"}],
                    }
                ],
            },
        ),
    ]


def generate_policies(
    ctx: PolicyContext, *, count: int, rng: random.Random
) -> tuple[list[Obj], Counter[str]]:
    """`count` policies: platform ones, per-namespace baselines, then weighted templates.

    Returns the objects and how many came from each template (the README's mix table).
    """
    planned: list[tuple[str, str, Spec]] = [(ns, name, spec) for ns, name, spec in _platform()]
    app_ns = [n for n in ctx.namespaces if n not in SYSTEM_NAMESPACES]
    for ns in app_ns:
        roll = rng.random()
        if roll < 0.45:
            planned.append((ns, "default-deny-ingress", default_deny_ingress(ctx, rng, ns) or {}))
        elif roll < 0.75:
            planned.append((ns, "default-deny-all", default_deny_all(ctx, rng, ns) or {}))
            planned.append((ns, "allow-dns-egress", allow_dns_egress(ctx, rng, ns) or {}))
    templates = [t for t, _ in FILL]
    weights = [w for _, w in FILL]
    while len(planned) < count:
        ns = rng.choice(app_ns)
        template = rng.choices(templates, weights)[0]
        spec = template(ctx, rng, ns)
        if spec is not None:
            planned.append((ns, template.__name__.replace("_", "-"), spec))
    planned = planned[:count]
    out: list[Obj] = []
    mix: Counter[str] = Counter()
    used: Counter[tuple[str, str]] = Counter()
    for ns, base, spec in planned:
        used[(ns, base)] += 1
        name = base if used[(ns, base)] == 1 else f"{base}-{used[(ns, base)]}"
        mix[base] += 1
        out.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": ns},
                "spec": spec,
            }
        )
    return out, mix
