"""Privileged tests: real network namespaces, veths, iptables and conntrack (needs root).

Every test here is marked `privileged`. It runs whenever the machine can do it; when it
cannot, the test is skipped — except in CI (`CI=true`), where a missing capability is a
failure, so a CI image that lost root or iptables cannot turn the suite green by
skipping it (STYLE §11).

Labs come from fixtures that remove them in their finalizers, even when the test fails,
and then check that none of the run's namespaces survived. Runs are recorded in a
temporary state directory, so they never mix with labs a developer has up.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netwatch.lab.lab import LabHandle, down, up
from netwatch.lab.plan import NETNS_PREFIX
from netwatch.lab.topology import list_netns

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "fixtures" / "lab"
_REQUIRED_TOOLS = ("ip", "iptables", "iptables-restore", "conntrack", "sysctl")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.privileged)


@functools.cache
def missing_capability() -> str | None:
    """Why this machine cannot run the lab, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for tool in _REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make setup installs it)"
    probe = f"{NETNS_PREFIX}probe{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True)
        subprocess.run(
            ["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-L", "-n"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        return f"cannot use a network namespace: {exc.stderr.decode(errors='replace').strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


@pytest.fixture(autouse=True)
def _require_capability() -> None:
    require_capability()


def require_capability() -> None:
    """Skip, or in CI fail, when the lab cannot run here."""
    reason = missing_capability()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"privileged test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("lab-state")
    previous = os.environ.get("NETWATCH_LAB_STATE_DIR")
    os.environ["NETWATCH_LAB_STATE_DIR"] = str(path)  # for CLI subprocesses
    yield path
    if previous is None:
        del os.environ["NETWATCH_LAB_STATE_DIR"]
    else:
        os.environ["NETWATCH_LAB_STATE_DIR"] = previous
    # Whatever a test left behind is removed here, and reported as a failure.
    leftovers = {p.stem: run_netns(p.stem) for p in path.glob("*.json")}
    for run_id in leftovers:
        down(run_id, state_dir=path)
    assert not leftovers, f"lab runs left behind by the tests: {leftovers}"


def run_netns(run_id: str) -> list[str]:
    """Namespaces of one run that exist right now."""
    return [n for n in list_netns() if n.startswith(f"{NETNS_PREFIX}{run_id}-")]


def assert_gone(handle: LabHandle) -> None:
    assert run_netns(handle.run_id) == []
    assert not handle.state_path.exists()
    assert not handle.run_dir.exists()


def lab_fixture(scenario: str, state_dir: Path) -> Iterator[LabHandle]:
    handle = up(SCENARIOS / scenario, state_dir=state_dir)
    try:
        yield handle
    finally:
        handle.down()
        assert_gone(handle)


@pytest.fixture(scope="module")
def one_node(state_dir: Path) -> Iterator[LabHandle]:
    require_capability()  # module fixtures are set up before the autouse check
    yield from lab_fixture("one-node.yaml", state_dir)


@pytest.fixture(scope="module")
def two_node(state_dir: Path) -> Iterator[LabHandle]:
    require_capability()
    yield from lab_fixture("two-node.yaml", state_dir)
