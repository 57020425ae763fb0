"""Reading the conformance fixtures (`fixtures/conformance/`) and drawing truth tables.

The fixtures are data only; this module knows their layout and the reachability-grid
notation documented in `tests/conformance/README.md`. `test_upstream_e2e.py` uses it to
build the CLI invocations and to explain a failure as two grids, the way upstream's
e2e framework prints its truth tables. Nothing here imports netwatch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "conformance"
BASE_CLUSTER = FIXTURES / "base" / "cluster.yaml"
CASES_DIR = FIXTURES / "cases"

# The C loader when PyYAML has it: the base cluster is read once per case folder.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

ALLOWED = "."
DENIED = "X"

Pair = tuple[str, str]
Grid = dict[Pair, bool]


@dataclass(frozen=True)
class Probe:
    """One `netwatch policy matrix` run and the truth table it must produce."""

    port: int
    protocol: str
    ipblock_pod_ips: str | None
    upstream: bool
    expected: Grid

    @property
    def label(self) -> str:
        mode = f" --ipblock-pod-ips {self.ipblock_pod_ips}" if self.ipblock_pod_ips else ""
        return f"{self.port}/{self.protocol}{mode}"


@dataclass(frozen=True)
class SideExpectation:
    isolated: bool
    allowed_by: frozenset[tuple[str, int]]


@dataclass(frozen=True)
class Check:
    """One `netwatch policy check` run; sides are compared only when given."""

    src: str
    dst: str
    port: int | str
    protocol: str
    allowed: bool
    egress: SideExpectation | None = None
    ingress: SideExpectation | None = None

    @property
    def label(self) -> str:
        return f"{self.src} -> {self.dst} {self.port}/{self.protocol}"


@dataclass(frozen=True)
class Case:
    name: str
    directory: Path
    origin: str
    upstream: str
    cluster: Path
    probes: tuple[Probe, ...]
    checks: tuple[Check, ...]

    @property
    def policies(self) -> Path:
        return self.directory / "policies.yaml"

    @property
    def cluster_args(self) -> list[str]:
        """`--cluster` options exactly as the external suite passes them."""
        return ["--cluster", str(self.cluster), "--cluster", str(self.policies)]


def pod_names(cluster: Path = BASE_CLUSTER) -> list[str]:
    """`ns/name` of the pods a matrix covers (with an IP, not hostNetwork), in file order."""
    return list(_pod_names(cluster.resolve()))


@cache
def _pod_names(cluster: Path) -> tuple[str, ...]:
    with cluster.open() as handle:
        docs = [doc for doc in yaml.load_all(handle, Loader=_LOADER) if doc]
    return tuple(
        f"{doc['metadata']['namespace']}/{doc['metadata']['name']}"
        for doc in docs
        if doc.get("kind") == "Pod"
        and doc.get("status", {}).get("podIP")
        and not doc.get("spec", {}).get("hostNetwork", False)
    )


def _short(pod: str) -> str:
    return pod.replace("/", "")


def parse_grid(text: str, pods: list[str]) -> Grid:
    """Parse a reachability grid: header `-  xa xb ...`, then one row per source pod."""
    by_short = {_short(pod): pod for pod in pods}
    lines = [line.split() for line in text.strip().splitlines() if line.strip()]
    header, rows = lines[0], lines[1:]
    if header[0] != "-":
        raise ValueError(f"grid header must start with '-': {' '.join(header)}")
    columns = [by_short[token] for token in header[1:]]
    if sorted(columns) != sorted(pods) or len(rows) != len(pods):
        raise ValueError("grid must have one row and one column per pod of the cluster")
    grid: Grid = {}
    for row in rows:
        src = by_short[row[0]]
        cells = row[1:]
        if len(cells) != len(columns) or any(cell not in (ALLOWED, DENIED) for cell in cells):
            raise ValueError(f"bad grid row: {' '.join(row)}")
        for dst, cell in zip(columns, cells, strict=True):
            if (src, dst) in grid:
                raise ValueError(f"duplicate grid row for {src}")
            grid[(src, dst)] = cell == ALLOWED
    return grid


def render_grid(grid: Mapping[Pair, bool], pods: list[str], *, against: Grid | None = None) -> str:
    """Draw a grid; cells that differ from `against` are wrapped in stars, like upstream."""
    width = 4
    lines = ["-".ljust(width) + "".join(_short(pod).ljust(width) for pod in pods).rstrip()]
    for src in pods:
        cells = []
        for dst in pods:
            value = grid.get((src, dst))
            cell = "?" if value is None else (ALLOWED if value else DENIED)
            if against is not None and value != against.get((src, dst)):
                cell = f"*{cell}*"
            cells.append(cell.center(3).ljust(width))
        lines.append(_short(src).ljust(width) + "".join(cells).rstrip())
    return "\n".join(lines)


def _side(raw: Mapping[str, Any] | None) -> SideExpectation | None:
    if raw is None:
        return None
    return SideExpectation(
        isolated=bool(raw["isolated"]),
        allowed_by=frozenset((entry["policy"], int(entry["rule"])) for entry in raw["allowed_by"]),
    )


def load_case(directory: Path) -> Case:
    with (directory / "expected.yaml").open() as handle:
        raw = yaml.safe_load(handle)
    if raw["name"] != directory.name:
        raise ValueError(f"{directory}: name {raw['name']!r} does not match the folder")
    cluster = directory / raw["cluster"] if raw.get("cluster") else BASE_CLUSTER
    pods = pod_names(cluster)
    probes = tuple(
        Probe(
            port=int(probe["port"]),
            protocol=probe["protocol"],
            ipblock_pod_ips=probe.get("ipblock_pod_ips"),
            upstream=bool(probe.get("upstream", True)),
            expected=parse_grid(probe["reachability"], pods),
        )
        for probe in raw["probes"]
    )
    checks = tuple(
        Check(
            src=check["src"],
            dst=check["dst"],
            port=check["port"],
            protocol=check["protocol"],
            allowed=bool(check["allowed"]),
            egress=_side(check.get("egress")),
            ingress=_side(check.get("ingress")),
        )
        for check in raw.get("checks", [])
    )
    return Case(
        name=raw["name"],
        directory=directory,
        origin=raw["origin"],
        upstream=raw["upstream"],
        cluster=cluster,
        probes=probes,
        checks=checks,
    )


def iter_cases() -> Iterator[Case]:
    for directory in sorted(path for path in CASES_DIR.iterdir() if path.is_dir()):
        yield load_case(directory)


def sample_pairs(grid: Grid, pods: list[str], *, per_verdict: int = 2) -> list[tuple[Pair, bool]]:
    """A few deterministic pairs of each verdict (first and middle, in row-major order)."""
    chosen: list[tuple[Pair, bool]] = []
    for verdict in (False, True):
        pairs = [(s, d) for s in pods for d in pods if s != d and grid[(s, d)] is verdict]
        picks = {pairs[i] for i in (0, len(pairs) // 2) if pairs}
        chosen.extend((pair, verdict) for pair in sorted(picks)[:per_verdict])
    return chosen
