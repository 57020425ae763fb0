"""`netwatch suggest` and `netwatch whatif` on the `suggest-shop` scenario.

Byte-for-byte goldens live in `fixtures/scenarios/suggest-shop` (run by
`test_golden_scenarios.py`); these tests pin behaviour by name: the YAML loads back
with zero problems, `--out` files, exit statuses 0/1/2/3, what goes to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from netwatch.cli.common import BadInput
from netwatch.cli.main import cli
from netwatch.cli.suggest import parse_duration
from netwatch.core import suggest as core_suggest
from netwatch.core.model import Direction
from netwatch.k8s.snapshot import load_cluster

SCENARIO = Path(__file__).resolve().parents[2] / "fixtures" / "scenarios" / "suggest-shop"
CLUSTER = str(SCENARIO / "cluster")
FLOWS = str(SCENARIO / "flows" / "flows.jsonl")


def suggest(*args: str) -> Result:
    return CliRunner().invoke(cli, ["suggest", "--cluster", CLUSTER, "--flows", FLOWS, *args])


def whatif(*args: str) -> Result:
    return CliRunner().invoke(cli, ["whatif", "--cluster", CLUSTER, "--flows", FLOWS, *args])


def report(*args: str) -> dict[str, Any]:
    result = suggest("-o", "json", *args)
    assert result.exit_code == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_yaml_output_loads_back_with_zero_problems(tmp_path: Path) -> None:
    result = suggest()
    assert result.exit_code == 0, result.stderr
    path = tmp_path / "suggested.yaml"
    path.write_text(result.stdout)
    loaded = load_cluster([path])
    assert loaded.problems == ()
    assert len(loaded.cluster.policies) == report()["summary"]["policies"] == 9
    for policy in loaded.cluster.policies:
        assert policy.policy_types == frozenset(Direction)


def test_out_writes_one_file_per_policy(tmp_path: Path) -> None:
    out = tmp_path / "policies"
    result = suggest("--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    names = sorted(p.name for p in out.iterdir())
    assert "shop.frontend-netwatch.yaml" in names and len(names) == 9
    for file in out.iterdir():
        loaded = load_cluster([file])
        assert loaded.problems == () and len(loaded.cluster.policies) == 1
        (policy,) = loaded.cluster.policies
        assert file.name == f"{policy.namespace}.{policy.name}.yaml"
    assert "wrote 9 policy file(s)" in result.stderr


def test_denied_connections_are_reported_on_stderr_not_legalized() -> None:
    result = suggest()
    assert "2 denied connection(s) were observed" in result.stderr
    assert "shop/debug" in result.stderr and "run: debug" in result.stdout
    data = report()
    assert [(g["client"], g["server"], g["port"]) for g in data["unexpected"]] == [
        ("shop/debug", "shop/db", 5432),
        ("shop/frontend", "world", 22),
    ]
    assert report("--include-denied")["unexpected"] == []


def test_report_carries_verification_and_admitted_pairs() -> None:
    data = report()
    assert list(data) == [
        "mode",
        "window",
        "summary",
        "verification",
        "policies",
        "unexpected",
        "warnings",
    ]
    assert data["verification"]["ok"] is True
    assert data["verification"]["checked"] == data["summary"]["used"] == 162
    assert set(data["verification"]["admitted_unobserved"]) == {
        "pod_pairs",
        "workload_pairs",
        "ports",
        "covered_pods",
    }


def test_add_mode_without_include_denied_prints_nothing_to_add() -> None:
    result = suggest("--mode", "add")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""


def test_table_output() -> None:
    result = suggest("-o", "table")
    assert result.exit_code == 0, result.stderr
    assert "shop/frontend-netwatch" in result.stdout
    assert "Verification: verified" in result.stdout


def test_a_set_that_denies_observed_traffic_is_never_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = core_suggest.suggest

    def broken(*args: Any, **kwargs: Any) -> core_suggest.Suggestion:
        good = real(*args, **kwargs)
        # Drop every rule: the set now denies what it was built to allow.
        emptied = tuple(
            core_suggest.SuggestedPolicy(
                policy=type(p.policy)(
                    namespace=p.policy.namespace,
                    name=p.policy.name,
                    pod_selector=p.policy.pod_selector,
                    policy_types=p.policy.policy_types,
                ),
                workload=p.workload,
                evidence=p.evidence,
                stability=p.stability,
                rules=(),
            )
            for p in good.policies
        )
        return core_suggest.Suggestion(
            mode=good.mode,
            policies=emptied,
            used=good.used,
            unexpected=good.unexpected,
            skipped=good.skipped,
            warnings=good.warnings,
            window=good.window,
        )

    monkeypatch.setattr("netwatch.cli.suggest.suggest", broken)
    result = suggest()
    assert result.exit_code == 3
    assert result.stdout == ""
    assert "netwatch bug" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quiet-period", "soon"], "--quiet-period 'soon'"),
        (["--mode", "merge"], "Invalid value for '--mode'"),
        (["--max-cidrs", "0"], "Invalid value for '--max-cidrs'"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    result = suggest(*args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_missing_flow_log_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["suggest", "--cluster", CLUSTER, "--flows", str(tmp_path / "nope.jsonl")]
    )
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("24h", 86400),
        ("7d", 604800),
        ("1h30m", 5400),
        ("1w", 604800),
        ("0.5h", 1800),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "--quiet-period") == seconds


@pytest.mark.parametrize("text", ["", "h", "10x", "-5m", "5 m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(BadInput):
        parse_duration(text, "--quiet-period")


# ----------------------------------------------------------------- whatif


def test_whatif_with_suggests_own_output_reports_nothing(tmp_path: Path) -> None:
    out = tmp_path / "suggested"
    assert suggest("--out", str(out)).exit_code == 0
    result = whatif("--policies", str(out), "--replace", "-o", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["denied"] == []
    assert data["already_denied"] == 2 and data["still_denied"] == 2


def test_whatif_exits_1_and_groups_what_would_be_denied() -> None:
    result = whatif("--policies", str(SCENARIO / "proposals" / "lockdown-db.yaml"), "-o", "json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [(g["client"], g["server"], g["port"], g["count"]) for g in data["denied"]] == [
        ("batch/report", "shop/db", 5432, 2)
    ]


def test_whatif_table() -> None:
    result = whatif("--policies", str(SCENARIO / "proposals" / "lockdown-db.yaml"))
    assert result.exit_code == 1
    assert "would be denied" in result.stdout and "batch/report" in result.stdout


def test_whatif_rejects_an_invalid_proposal_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        "metadata: {name: x, namespace: shop}\n"
        "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}\n"
    )
    result = whatif("--policies", str(bad))
    assert result.exit_code == 2
    assert "spec.ingress[0].from[0].ipBlock.cidr" in result.stderr


def test_whatif_without_any_network_policy_is_bad_input(tmp_path: Path) -> None:
    empty = tmp_path / "ns.yaml"
    empty.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    result = whatif("--policies", str(empty))
    assert result.exit_code == 2
    assert "no NetworkPolicy" in result.stderr
