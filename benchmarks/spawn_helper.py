"""A minimal process that starts benchmark children, so their peak RSS is their own.

Why this exists: Linux reports a child's `ru_maxrss` as the high-water mark of *every*
address space the process had, and a freshly forked (or vforked) child's first address
space is a copy of its parent's: `exec` saves that copy's peak into the child's rusage
(`setmax_mm_hiwater_rss` in fs/exec.c). Spawned from the benchmark — which holds the
generated cluster — a 40 MiB `netwatch` run was reported at 160 MiB, and at 650 MiB for
5,000 pods. Spawned from this interpreter (`python -I -S`, stdlib only, about 9 MiB),
the floor is this process's size, far below anything netwatch reaches; the runner
measures the floor with `/bin/true` and reports it.

Protocol (JSON Lines on stdin/stdout), one request at a time:
    {"argv": [...], "stdout": PATH, "stderr": PATH, "timeout": SECONDS}
    → {"seconds": float, "cpu_seconds": float, "maxrss_kib": int, "exit": int,
       "timed_out": bool}
"""

import json
import os
import signal
import sys
import time
from typing import Any


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Spawn one command with stdout/stderr to files, wait, report time and rusage."""
    argv = [str(a) for a in request["argv"]]
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(request["stdout"]), flags, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, str(request["stderr"]), flags, 0o644),
    ]
    timed_out = False
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)

    def on_alarm(signum: int, frame: object) -> None:
        nonlocal timed_out
        timed_out = True
        os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, float(request.get("timeout") or 0))
    try:
        _, status, usage = os.wait4(pid, 0)  # retried after the handler (PEP 475)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "maxrss_kib": usage.ru_maxrss,
        "exit": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
    }


def serve() -> None:
    for line in sys.stdin:
        try:
            reply = run(json.loads(line))
        except (OSError, ValueError, KeyError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
