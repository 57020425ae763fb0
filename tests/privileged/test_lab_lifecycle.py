"""A lab leaves nothing behind: after down, after a failed build, after SIGTERM or SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netwatch.lab import lab as lab_module
from netwatch.lab.lab import LabHandle, down, read_state, up
from netwatch.lab.topology import LabError
from tests.privileged.conftest import SCENARIOS, assert_gone, run_netns

NETWATCH = [sys.executable, "-m", "netwatch.cli.main"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _root_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def test_up_builds_every_namespace_and_down_removes_all_of_it(state_dir: Path) -> None:
    handle = up(SCENARIOS / "one-node.yaml", state_dir=state_dir)
    try:
        assert sorted(run_netns(handle.run_id)) == sorted(handle.namespaces)
        state = read_state(handle.run_id, state_dir=state_dir)
        assert state is not None and state["status"] == "up"
        pids = [p["pid"] for p in state["processes"]]
        assert pids and all(_alive(p) for p in pids)
        node = handle.nodes["node-1"]
        rules = handle.exec(node, ["iptables-save", "-t", "nat"]).stdout
        assert "KUBE-SERVICES" in rules and "KUBE-SVC-" in rules
        root = _root_links()
        for pod in handle.pods.values():  # host veths live in the node, never in the root
            assert pod.interface is None or pod.interface not in root
        assert f"nw{handle.run_id}" not in root
    finally:
        handle.down()
    assert_gone(handle)
    assert not any(_alive(p) for p in pids)


def test_a_build_that_fails_removes_what_it_created(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reserved: list[str] = []
    reserve = lab_module._reserve_run_id
    monkeypatch.setattr(
        lab_module, "_reserve_run_id", lambda d: reserved.append(reserve(d)) or reserved[-1]
    )
    # The topology is built, then the pod servers cannot start: everything must go.
    with pytest.raises(LabError, match="serve"):
        up(SCENARIOS / "one-node.yaml", state_dir=state_dir, python="/nonexistent/python")
    assert len(reserved) == 1
    assert run_netns(reserved[0]) == []
    assert not (state_dir / f"{reserved[0]}.json").exists()
    assert not (state_dir / reserved[0]).exists()


def _start_foreground(state_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """`netwatch lab up --foreground` in its own process; returns it and the run id."""
    before = {p.stem for p in state_dir.glob("*.json")}
    proc = subprocess.Popen(
        [*NETWATCH, "lab", "up", "--scenario", str(SCENARIOS / "one-node.yaml"), "--foreground"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NETWATCH_LAB_STATE_DIR": str(state_dir)},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = {p.stem for p in state_dir.glob("*.json")} - before
        for run_id in new:
            state = read_state(run_id, state_dir=state_dir)
            if state and state.get("status") == "up":
                return proc, run_id
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("lab did not come up")


def test_sigterm_to_a_foreground_lab_takes_it_down(state_dir: Path) -> None:
    proc, run_id = _start_foreground(state_dir)
    try:
        assert run_netns(run_id)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        # 0 once the CLI waits; 143 if the signal landed while it was still printing
        assert proc.returncode in (0, 128 + signal.SIGTERM), err
        assert run_netns(run_id) == []
        assert read_state(run_id, state_dir=state_dir) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        down(run_id, state_dir=state_dir)


def test_down_by_run_id_cleans_up_after_a_killed_lab(state_dir: Path) -> None:
    proc, run_id = _start_foreground(state_dir)
    try:
        state = read_state(run_id, state_dir=state_dir)
        assert state is not None
        servers = [p["pid"] for p in state["processes"]]
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
        proc.wait(timeout=10)
        assert run_netns(run_id), "a SIGKILLed lab stays up until someone removes it"
        result = subprocess.run(
            [*NETWATCH, "lab", "down", "--run-id", run_id],
            capture_output=True,
            text=True,
            env={**os.environ, "NETWATCH_LAB_STATE_DIR": str(state_dir)},
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert run_netns(run_id) == []
        assert not any(_alive(p) for p in servers)
        assert not (state_dir / run_id).exists()
    finally:
        proc.communicate()
        down(run_id, state_dir=state_dir)


def test_down_sweeps_namespaces_a_crash_left_unrecorded(state_dir: Path) -> None:
    handle = up(SCENARIOS / "one-node.yaml", state_dir=state_dir)
    try:
        handle.detach()
        handle.state_path.unlink()  # as if the crash happened before the state was written
        assert down(handle.run_id, state_dir=state_dir)
    finally:
        down(handle.run_id, state_dir=state_dir)
    assert_gone(handle)


def test_cli_up_traffic_down(state_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "NETWATCH_LAB_STATE_DIR": str(state_dir)}
    scenario = str(SCENARIOS / "one-node.yaml")
    started = subprocess.run(
        [*NETWATCH, "lab", "up", "--scenario", scenario, "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    state = json.loads(started.stdout)
    run_id = state["run_id"]
    try:
        assert "warning" not in started.stderr  # the snapshot loaded without problems
        manifest = tmp_path / "manifest.json"
        traffic = subprocess.run(
            [*NETWATCH, "lab", "traffic", "--scenario", scenario, "--manifest", str(manifest)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert traffic.returncode == 0, traffic.stdout + traffic.stderr
        data = json.loads(manifest.read_text())
        assert data["run_id"] == run_id
        assert {c["step"] for c in data["connections"]} == {
            "dns-web", "web-direct", "web-service", "echo-udp", "ping-web", "to-internet"
        }  # fmt: skip
        assert all(c["verified"] for c in data["connections"])
        listed = subprocess.run(
            [*NETWATCH, "lab", "list", "-o", "json"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        assert [r["alive"] for r in json.loads(listed.stdout)["runs"] if r["run_id"] == run_id] == [
            True
        ]
    finally:
        stopped = subprocess.run(
            [*NETWATCH, "lab", "down", "--scenario", scenario],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    assert stopped.returncode == 0, stopped.stderr
    assert run_netns(run_id) == []


def test_handle_context_manager_removes_the_lab_when_the_body_raises(state_dir: Path) -> None:
    captured: list[LabHandle] = []
    with (
        pytest.raises(RuntimeError, match="boom"),
        up(SCENARIOS / "one-node.yaml", state_dir=state_dir) as handle,
    ):
        captured.append(handle)
        raise RuntimeError("boom")
    assert_gone(captured[0])
