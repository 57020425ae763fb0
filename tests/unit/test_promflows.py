"""`core.promflows`: workload edges from metrics become flow rows between representatives."""

from __future__ import annotations

from pathlib import Path

from netwatch.core.model import Protocol
from netwatch.core.promflows import FLOW_LABELS, edge_rows
from netwatch.k8s.snapshot import load_cluster

CLUSTER = (
    Path(__file__).resolve().parents[2] / "fixtures" / "scenarios" / "suggest-shop" / "cluster"
)
AT = 1764000500.0


def series(
    src: tuple[str, str], dst: tuple[str, str], port: str = "8080", proto: str = "TCP"
) -> dict[str, str]:
    values = (*src, *dst, port, proto, "allowed")
    return dict(zip(FLOW_LABELS, values, strict=True))


def test_workloads_become_their_first_pod_and_nodes_their_address() -> None:
    cluster = load_cluster([CLUSTER]).cluster
    rows = edge_rows(
        [
            (series(("shop", "frontend"), ("shop", "cart")), 3.0),
            (series(("monitoring", "prometheus"), ("", "node:node-2"), "9100"), 1.4),
        ],
        cluster,
        at=AT,
    )
    assert rows.skipped == {}
    [web, scrape] = rows.rows
    assert web.count == 3
    # frontend-7c9d8-aaaaa sorts first; cart has one pod
    assert web.row == (
        "10.244.1.10",
        "10.244.1.20",
        8080,
        Protocol.TCP,
        AT,
        AT,
        0,
        0,
        None,
        0,
        False,
    )
    assert scrape.count == 1
    assert scrape.row[:3] == ("10.244.2.40", "192.168.56.12", 9100)


def test_what_metrics_cannot_recreate_is_counted_by_reason() -> None:
    cluster = load_cluster([CLUSTER]).cluster
    rows = edge_rows(
        [
            (series(("shop", "cart"), ("", "world"), "443"), 2.0),
            (series(("", "unknown"), ("shop", "cart")), 1.0),
            (series(("shop", "gone"), ("shop", "cart")), 1.0),
            (series(("shop", "cart"), ("shop", "service:orphan")), 1.0),
            (series(("shop", "frontend"), ("shop", "cart"), "other"), 5.0),
            (series(("shop", "frontend"), ("shop", "cart"), "80", "GRE"), 1.0),
            (series(("shop", "frontend"), ("shop", "cart")), 0.2),  # rounds to nothing
        ],
        cluster,
        at=AT,
    )
    assert rows.rows == []
    assert rows.skipped == {
        "external peer (metrics carry no addresses)": 2,
        "unknown endpoint": 1,
        "workload not in the cluster snapshot": 1,
        "Service without backends": 1,
        "port not a label (the 'other' bucket)": 5,
        "unrecognised protocol": 1,
    }
