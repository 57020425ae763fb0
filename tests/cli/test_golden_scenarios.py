"""Golden scenarios: CLI output over `fixtures/scenarios/*` compared byte for byte.

Each scenario folder holds `cluster/` (snapshot files), `commands.yaml` (CLI runs) and
`expected/` (their output). Goldens change only deliberately:
`NETWATCH_REGEN_GOLDENS=1 pytest tests/cli/test_golden_scenarios.py` rewrites them, and
the diff is reviewed like code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from netwatch.cli.main import cli

SCENARIOS = Path(__file__).resolve().parents[2] / "fixtures" / "scenarios"
REGEN = os.environ.get("NETWATCH_REGEN_GOLDENS") == "1"


def _cases() -> list[Any]:
    cases = []
    for scenario in sorted(p for p in SCENARIOS.iterdir() if (p / "commands.yaml").exists()):
        for cmd in yaml.safe_load((scenario / "commands.yaml").read_text()):
            cases.append(pytest.param(scenario, cmd, id=f"{scenario.name}-{cmd['name']}"))
    return cases


@pytest.mark.parametrize(("scenario", "command"), _cases())
def test_cli_output_matches_golden(
    scenario: Path, command: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(scenario)  # relative paths keep goldens independent of the checkout
    args = [*command["args"], "--cluster", "cluster"]
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == command["exit"], result.stderr
    ext = "yaml" if "yaml" in command["args"] else "json"
    golden = scenario / "expected" / f"{command['name']}.{ext}"
    if REGEN:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(result.stdout)
    assert golden.exists(), f"missing golden {golden}; run with NETWATCH_REGEN_GOLDENS=1"
    assert result.stdout == golden.read_text()
