"""Starting benchmark children so that their wall time and peak RSS are their own.

Why not plain `subprocess` from the benchmark: see `spawn_helper.py` — a child's
`ru_maxrss` includes the pre-`exec` copy of its parent, and the benchmark holds a whole
generated cluster. `Spawner` starts the helper once, while the benchmark is still small,
and sends it one command at a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HELPER = Path(__file__).resolve().parent / "spawn_helper.py"
REPO = HELPER.parent.parent


@dataclass
class ChildRun:
    """One finished child process: how long, how much memory, how it ended."""

    seconds: float
    """Wall time, spawn to exit: what the target is about."""
    cpu_seconds: float
    """User + system time: what the code costs, much less disturbed by a busy machine."""
    peak_mib: float
    returncode: int
    timed_out: bool = False


class Spawner:
    """Runs children through `spawn_helper.py`; create it before allocating much."""

    def __init__(self, *, env: dict[str, str] | None = None) -> None:
        """`env` is what the children get (the helper itself runs with `-I`)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(HELPER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )

    def run(self, cmd: list[str], *, stdout: Path, stderr: Path, timeout: float) -> ChildRun:
        """Run `cmd` with stdout/stderr to files; its wall time and its own peak RSS."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request: dict[str, Any] = {"argv": cmd, "stdout": str(stdout), "stderr": str(stderr)}
        request["timeout"] = timeout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise OSError("spawn helper exited")
        reply = json.loads(line)
        if "error" in reply:
            raise OSError(f"cannot run {cmd[0]}: {reply['error']}")
        return ChildRun(
            seconds=reply["seconds"],
            cpu_seconds=reply["cpu_seconds"],
            peak_mib=reply["maxrss_kib"] / 1024,
            returncode=reply["exit"],
            timed_out=reply["timed_out"],
        )

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
