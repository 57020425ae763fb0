"""Upstream NetworkPolicy e2e scenarios and recipes, run through `netwatch policy ...`.

Each case folder in `fixtures/conformance/cases/` is exercised exactly as the external
conformance suite drives the CLI: `netwatch policy matrix --cluster <base> --cluster
<case>/policies.yaml --port N --protocol P -o json`, compared pair by pair with the
expected truth table, then `netwatch policy check` on a few pairs (exit status, verdict
and, where the case says so, which policy rule allowed each side). See README.md here
for the fixture format and where each case comes from.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from click.testing import CliRunner, Result

from .casefiles import (
    Case,
    Check,
    Grid,
    Probe,
    SideExpectation,
    iter_cases,
    pod_names,
    render_grid,
    sample_pairs,
)

CASES = list(iter_cases())
CLI_MODULE = "netwatch.cli.main"

Invoke = Callable[[Sequence[str]], Result]


@pytest.fixture(scope="module")
def invoke() -> Invoke:
    """Run the real click group in-process, the way a user's shell would."""
    try:
        # Imported here so that a missing CLI fails the tests instead of collection.
        from netwatch.cli.main import cli
    except ImportError as exc:  # pragma: no cover - only while the CLI is being written
        pytest.fail(f"{CLI_MODULE}:cli is the conformance entry point and is missing: {exc}")
    runner = CliRunner()

    def run(args: Sequence[str]) -> Result:
        return runner.invoke(cli, list(args), catch_exceptions=True)

    return run


def _crash(result: Result) -> str | None:
    """A traceback when the command raised instead of exiting; exit codes are not crashes."""
    if result.exception is None or isinstance(result.exception, SystemExit):
        return None
    return "".join(traceback.format_exception(result.exception))


def _json_output(result: Result, command: str) -> Any:
    crash = _crash(result)
    if crash:
        pytest.fail(f"{command} crashed:\n{crash}\noutput:\n{result.output}")
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"{command} did not print JSON (exit {result.exit_code}):\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )


def _matrix_args(case: Case, probe: Probe) -> list[str]:
    args = ["policy", "matrix", *case.cluster_args]
    args += ["--port", str(probe.port), "--protocol", probe.protocol, "-o", "json"]
    if probe.ipblock_pod_ips:
        args += ["--ipblock-pod-ips", probe.ipblock_pod_ips]
    return args


def _actual_grid(payload: Any, pods: list[str], probe: Probe) -> tuple[Grid, list[str]]:
    """The matrix as a grid, plus every way the output breaks the JSON contract."""
    problems: list[str] = []
    if payload.get("port") != probe.port or payload.get("protocol") != probe.protocol:
        problems.append(
            f"header says port={payload.get('port')!r} protocol={payload.get('protocol')!r}"
        )
    grid: Grid = {}
    for entry in payload.get("pairs", []):
        pair = (entry.get("src"), entry.get("dst"))
        allowed = entry.get("allowed")
        if pair[0] not in pods or pair[1] not in pods:
            problems.append(f"unexpected pair {entry!r}")
            continue
        if pair in grid:
            problems.append(f"pair {pair[0]} -> {pair[1]} listed twice")
        if not isinstance(allowed, bool):
            problems.append(f"pair {pair[0]} -> {pair[1]}: allowed={allowed!r}")
        grid[pair] = allowed is True
    missing = [(s, d) for s in pods for d in pods if s != d and (s, d) not in grid]
    problems += [f"pair {s} -> {d} missing" for s, d in missing]
    for pod in pods:
        # A pod may always reach itself; the CLI may list or omit the self pair.
        grid.setdefault((pod, pod), True)
    return grid, problems


def _verdict(allowed: bool | None) -> str:
    return {True: "allowed", False: "denied", None: "missing"}[allowed]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_matrix_matches_upstream_truth_table(case: Case, invoke: Invoke) -> None:
    pods = pod_names(case.cluster)
    failures: list[str] = []
    for probe in case.probes:
        command = "netwatch " + " ".join(_matrix_args(case, probe))
        result = invoke(_matrix_args(case, probe))
        payload = _json_output(result, command)
        if result.exit_code != 0:
            failures.append(f"{probe.label}: exit status {result.exit_code}, expected 0")
        actual, problems = _actual_grid(payload, pods, probe)
        wrong = [
            f"  {s} -> {d}: expected {_verdict(probe.expected[(s, d)])}, "
            f"got {_verdict(actual.get((s, d)))}"
            for s in pods
            for d in pods
            if actual.get((s, d)) != probe.expected[(s, d)]
        ]
        if wrong or problems:
            failures.append(
                f"{probe.label}: {len(wrong)} pair(s) differ\n"
                + "\n".join(wrong + [f"  contract: {p}" for p in problems])
                + "\nexpected ('.' allowed, 'X' denied; rows are sources, columns destinations):\n"
                + render_grid(probe.expected, pods)
                + "\nactual (differences in *stars*):\n"
                + render_grid(actual, pods, against=probe.expected)
                + f"\ncommand: {command}"
            )
    if failures:
        pytest.fail(f"{case.name} ({case.upstream}):\n" + "\n\n".join(failures), pytrace=False)


def _check_args(case: Case, check: Check) -> list[str]:
    return [
        "policy",
        "check",
        *case.cluster_args,
        "--src",
        check.src,
        "--dst",
        check.dst,
        "--port",
        str(check.port),
        "--protocol",
        check.protocol,
        "-o",
        "json",
    ]


def _checks_for(case: Case) -> list[Check]:
    """The case's explicit checks plus a few pairs sampled from its first plain probe."""
    checks = list(case.checks)
    probe = next((p for p in case.probes if p.ipblock_pod_ips in (None, "match")), None)
    if probe is not None:
        pods = pod_names(case.cluster)
        for (src, dst), allowed in sample_pairs(probe.expected, pods):
            checks.append(Check(src, dst, probe.port, probe.protocol, allowed))
    return checks


def _side_problems(name: str, side: Any, expected: SideExpectation | None) -> list[str]:
    if not isinstance(side, dict) or not isinstance(side.get("isolated"), bool):
        return [f"{name}: expected an object with a boolean 'isolated', got {side!r}"]
    allowed_by = side.get("allowed_by")
    if not isinstance(allowed_by, list):
        return [f"{name}.allowed_by: expected a list, got {allowed_by!r}"]
    if expected is None:
        return []
    problems = []
    if side["isolated"] != expected.isolated:
        problems.append(f"{name}.isolated: expected {expected.isolated}, got {side['isolated']}")
    actual_by = {(entry.get("policy"), entry.get("rule")) for entry in allowed_by}
    if actual_by != expected.allowed_by:
        problems.append(
            f"{name}.allowed_by: expected {sorted(expected.allowed_by)}, got {sorted(actual_by)}"
        )
    return problems


def _side_allows(side: dict[str, Any]) -> bool:
    # Besides rules, a side may be exempt (a pod's own node reaching it, §3 rule 7); the
    # contract's JSON does not name the field, netwatch reports it as "exempt".
    return not side["isolated"] or bool(side["allowed_by"]) or bool(side.get("exempt"))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_check_agrees_on_sampled_pairs(case: Case, invoke: Invoke) -> None:
    failures: list[str] = []
    for check in _checks_for(case):
        command = "netwatch " + " ".join(_check_args(case, check))
        result = invoke(_check_args(case, check))
        payload = _json_output(result, command)
        problems = []
        want_exit = 0 if check.allowed else 1
        if result.exit_code != want_exit:
            problems.append(f"exit status {result.exit_code}, expected {want_exit}")
        if payload.get("allowed") is not check.allowed:
            problems.append(f"allowed: expected {check.allowed}, got {payload.get('allowed')!r}")
        egress, ingress = payload.get("egress"), payload.get("ingress")
        side_problems = _side_problems("egress", egress, check.egress)
        side_problems += _side_problems("ingress", ingress, check.ingress)
        problems += side_problems
        if not side_problems and isinstance(payload.get("allowed"), bool):
            # Rule 2 of the semantics: allowed iff both sides allow; reasons must agree.
            assert isinstance(egress, dict) and isinstance(ingress, dict)
            if payload["allowed"] != (_side_allows(egress) and _side_allows(ingress)):
                problems.append("'allowed' disagrees with the egress/ingress reasons")
        if problems:
            failures.append(
                f"{check.label}:\n  "
                + "\n  ".join(problems)
                + f"\n  output: {json.dumps(payload)}\n  command: {command}"
            )
    if failures:
        pytest.fail(f"{case.name} ({case.upstream}):\n" + "\n".join(failures), pytrace=False)
