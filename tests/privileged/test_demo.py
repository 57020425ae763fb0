"""`netwatch demo` end to end: the live demo runs, reports, writes loadable suggestions
and leaves no lab behind (`sudo make demo` runs exactly this command after setup)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from netwatch.k8s.snapshot import load_cluster
from tests.privileged.conftest import run_netns
from tests.privileged.ebpf_fixtures import REPO, require_privileges


def test_demo_reports_and_tears_down(state_dir: Path, tmp_path: Path) -> None:
    require_privileges()
    out = tmp_path / "suggestions"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "netwatch.cli.main", "demo", "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "160"},
    )
    elapsed = time.monotonic() - start
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    assert elapsed < 60, f"demo took {elapsed:.0f} s"

    assert "Findings (unexpected flows" in text
    # the scenario's one unexpected flow: the internet reaching the frontend
    assert re.search(r"world\s+│\s+shop/frontend\s+│\s+8080/TCP", text), text
    assert "Connections by verdict" in text
    assert f"written to: {out}" in text
    assert "/metrics" in text

    files = sorted(out.glob("*.yaml"))
    assert files, text
    for path in files:
        loaded = load_cluster([path])
        assert loaded.problems == (), (path, loaded.problems)
        assert loaded.objects > 0, path

    match = re.search(r"lab run ([0-9a-f]{4})", text)
    assert match, text
    run_id = match.group(1)
    assert run_netns(run_id) == []
    assert not (state_dir / f"{run_id}.json").exists()
    assert not (state_dir / run_id).exists()
    assert "torn down" in text


def test_demo_needs_root() -> None:
    if os.geteuid() != 0:
        argv = [sys.executable, "-m", "netwatch.cli.main", "demo"]
    else:  # drop to nobody for this one run
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                sys.executable, "-m", "netwatch.cli.main", "demo"]  # fmt: skip
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs root" in result.stderr
