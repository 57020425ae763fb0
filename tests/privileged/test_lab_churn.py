"""Churn pods on a running lab: wired like the lab's pods, in the snapshot, gone on delete."""

from __future__ import annotations

from pathlib import Path

from netwatch.k8s.snapshot import load_cluster
from netwatch.lab.churn import PodChurn
from netwatch.lab.lab import LabHandle, up
from netwatch.lab.topology import list_netns
from tests.privileged.conftest import SCENARIOS, assert_gone


def _snapshot_pods(handle: LabHandle) -> dict[str, str]:
    cluster = load_cluster([handle.snapshot_path]).cluster
    return {f"{p.namespace}/{p.name}": p.primary_ip or "" for p in cluster.pods}


def test_churn_pods_talk_appear_in_the_snapshot_and_leave_nothing(state_dir: Path) -> None:
    handle = up(SCENARIOS / "one-node.yaml", state_dir=state_dir)
    churn = None
    try:
        original = _snapshot_pods(handle)
        churn = PodChurn(handle, node="node-1")
        first, second = churn.add(), churn.add()
        worker = churn.add()  # the StatefulSet: ordinal 0
        assert worker.name == "worker-0"
        assert len({first.ip, second.ip, worker.ip}) == 3
        assert {first.netns, worker.netns} <= set(list_netns())
        pods = _snapshot_pods(handle)
        assert pods == {
            **original,
            first.key: first.ip,
            second.key: second.ip,
            worker.key: worker.ip,
        }

        run = churn.traffic(
            first,
            [
                {"kind": "churn", "to": "service:demo/web", "port": 80, "rate": 5, "duration": 1},
                {"kind": "udp", "to": "demo/echo", "port": 40000, "rounds": 2},
                {"kind": "dns", "query": "web.demo.svc.cluster.local"},
            ],
        )
        manifest = run.wait(timeout=60)
        assert manifest.failures() == [], manifest.failures()
        assert len(manifest.connections) >= 7

        freed = first.ip
        churn.remove(first)
        churn.remove(worker)
        assert first.netns not in list_netns()
        node = handle.nodes["node-1"]
        links = handle.exec(node, ["ip", "-o", "link"]).stdout
        assert first.interface not in links and worker.interface not in links
        again = churn.add(worker.workload)  # same name, new UID, the lowest free address
        assert (again.name, again.ip) == ("worker-0", freed)
        assert again.uid != worker.uid
        assert churn.ips_reused == 1
        assert _snapshot_pods(handle)[again.key] == freed
        churn.close()
        assert _snapshot_pods(handle) == original
        assert not [n for n in list_netns() if n.startswith(f"nw{handle.run_id}-p-churn.")]
    finally:
        if churn is not None:
            churn.close()
        handle.down()
    assert_gone(handle)
