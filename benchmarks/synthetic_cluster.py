"""Deterministic synthetic cluster dumps for benchmarking `netwatch policy matrix`.

Why this exists: the matrix target (1,000 pods, 200 policies, six ports) has to be
measured on input that looks like what users feed the CLI — `kubectl get -A -o yaml`
output — and that is byte-identical from run to run, so figures from different commits
are comparable. Everything derives from one `random.Random(seed)`.

This module assembles `synthetic_inventory` (nodes, namespaces), `synthetic_workloads`
(controllers, pods) and `synthetic_policies` (the NetworkPolicy mix) and writes the
file. It never imports netwatch: the generator must not share assumptions (or bugs)
with the loader it feeds.

    python benchmarks/synthetic_cluster.py --pods 1000 --namespaces 40 --policies 200 \\
        --seed 1 -o /tmp/cluster.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from policy_features import policy_features
from synthetic_inventory import Builder, ClusterSpec, Obj
from synthetic_policies import PolicyContext, generate_policies
from synthetic_workloads import WorkloadWriter

LAYOUTS = ("list", "multidoc")


@dataclass
class SyntheticCluster:
    """The objects (in write order) plus the facts a benchmark validates output against."""

    spec: ClusterSpec
    objects: list[Obj]
    matrix_pods: list[str]
    """`namespace/name` of pods a matrix must contain: Running with an IP, not
    hostNetwork (Pending pods have no IP, Succeeded ones own none; DESIGN §2, §4)."""
    policy_mix: Counter[str] = field(default_factory=Counter)
    """Policies per template (`synthetic_policies`)."""
    policy_features: Counter[str] = field(default_factory=Counter)
    """Policies per DESIGN §3 feature they use."""
    kinds: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        """The generator's own account of the file, stored beside it as `.meta.json`."""
        return {
            "spec": asdict(self.spec),
            "kinds": dict(sorted(self.kinds.items())),
            "pods_in_matrix": len(self.matrix_pods),
            "policy_mix": dict(self.policy_mix.most_common()),
            "policy_features": dict(sorted(self.policy_features.items())),
        }


def generate(spec: ClusterSpec) -> SyntheticCluster:
    """Build the whole cluster: nodes, namespaces, workloads and pods, then policies."""
    if min(spec.pods, spec.namespaces, spec.nodes) < 1 or spec.policies < 0:
        raise ValueError("pods, namespaces and nodes must be positive, policies >= 0")
    b = Builder(spec)
    objects: list[Obj] = b.nodes()
    namespaces = b.namespaces()
    objects += [b.namespace_object(n, labels) for n, labels in namespaces]
    writer = WorkloadWriter(b, namespaces)
    objects += writer.write()
    ctx = PolicyContext(
        namespaces=dict(namespaces),
        apps=writer.apps,
        node_cidrs=[str(c) for c in b.node_cidrs],
        node_ips=b.node_ips,
        pod_ips=writer.pod_ips,
    )
    policies, mix = generate_policies(ctx, count=spec.policies, rng=b.rng)
    for pol in policies:
        name, ns = pol["metadata"]["name"], pol["metadata"]["namespace"]
        pol["metadata"] = b.meta(ns, name, generation=1)
    objects += policies
    return SyntheticCluster(
        spec=spec,
        objects=objects,
        matrix_pods=sorted(writer.matrix_pods),
        policy_mix=mix,
        policy_features=policy_features(policies),
        kinds=Counter(o["kind"] for o in objects),
    )


class _KubectlDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Never emit `&id001` anchors: kubectl output has none, and builders share dicts."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(cluster: SyntheticCluster, *, layout: str = "list") -> bytes:
    """The dump as bytes.

    `list` is what `kubectl get -A -o yaml nodes,namespaces,pods,...` prints (one
    `kind: List`); `multidoc` is what people concatenate by hand. Keys are sorted
    because kubectl sorts them.
    """
    opts: dict[str, Any] = {"Dumper": _KubectlDumper, "sort_keys": True, "width": 1 << 16}
    if layout == "list":
        doc: dict[str, Any] = {"apiVersion": "v1", "items": cluster.objects, "kind": "List"}
        doc["metadata"] = {"resourceVersion": ""}
        text = yaml.dump(doc, **opts)
    elif layout == "multidoc":
        text = yaml.dump_all(cluster.objects, explicit_start=True, **opts)
    else:
        raise ValueError(f"unknown layout {layout!r} (expected one of {LAYOUTS})")
    return str(text).encode()


def write(cluster: SyntheticCluster, path: Path, *, layout: str = "list") -> dict[str, Any]:
    """Write the dump and `<path>.meta.json`; returns the meta (with the file's sha256)."""
    data = render(cluster, layout=layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    meta = {
        **cluster.summary(),
        "layout": layout,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    path.with_name(path.name + ".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    """Command line: generate one dump and print its summary as JSON."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--pods", type=int, default=1000, help="pod objects in total")
    ap.add_argument("--namespaces", type=int, default=40)
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--layout", choices=LAYOUTS, default="list")
    ap.add_argument("-o", "--out", type=Path, required=True, help="YAML file to write")
    args = ap.parse_args(argv)
    spec = ClusterSpec(
        pods=args.pods,
        namespaces=args.namespaces,
        policies=args.policies,
        nodes=args.nodes,
        seed=args.seed,
    )
    try:
        cluster = generate(spec)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(write(cluster, args.out, layout=args.layout), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
