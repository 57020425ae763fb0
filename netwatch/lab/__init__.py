"""The netns lab: a real miniature Kubernetes network on one Linux machine (DESIGN §1).

From a scenario file (`fixtures/lab/README.md`) it builds nodes and pods as network
namespaces, routes between them, kube-proxy-style Service DNAT and an "internet" host;
writes the cluster snapshot the inventory loads; and drives scripted traffic whose
manifest says exactly what was sent. `netwatch demo` and the end-to-end tests run on it.

Modules: `scenario` (parse, validate) → `plan` (names, addresses; pure) → `topology`
(namespaces, links, routes) + `services` (iptables) + `snapshot` (cluster YAML) →
`lab` (up/attach/down, the `LabHandle`) → `traffic` + `manifest` (scripted traffic and
its record); `agentlet` (+ `wire`) is the process that runs inside each pod.

The public names below are imported lazily: `python -m netwatch.lab.agentlet` runs in
every pod and must not pay for the rest of the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from netwatch.lab.lab import STATE_DIR, LabHandle, attach, down, read_state, runs, up
    from netwatch.lab.manifest import ExpectedConnection, TrafficManifest, reporting_node
    from netwatch.lab.plan import LabHost, LabNode, LabPlan, LabPod, LabService, Peer
    from netwatch.lab.scenario import Scenario, ScenarioError, TrafficStep, load_scenario
    from netwatch.lab.topology import LabError
    from netwatch.lab.traffic import TrafficError, TrafficRun

__all__ = [
    "STATE_DIR",
    "ExpectedConnection",
    "LabError",
    "LabHandle",
    "LabHost",
    "LabNode",
    "LabPlan",
    "LabPod",
    "LabService",
    "Peer",
    "Scenario",
    "ScenarioError",
    "TrafficError",
    "TrafficManifest",
    "TrafficRun",
    "TrafficStep",
    "attach",
    "down",
    "load_scenario",
    "read_state",
    "reporting_node",
    "runs",
    "up",
]
_HOMES = {
    "lab": ("STATE_DIR", "LabHandle", "attach", "down", "read_state", "runs", "up"),
    "manifest": ("ExpectedConnection", "TrafficManifest", "reporting_node"),
    "plan": ("LabHost", "LabNode", "LabPlan", "LabPod", "LabService", "Peer"),
    "scenario": ("Scenario", "ScenarioError", "TrafficStep", "load_scenario"),
    "topology": ("LabError",),
    "traffic": ("TrafficError", "TrafficRun"),
}
_EXPORTS = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'netwatch.lab' has no attribute {name!r}")
    return getattr(importlib.import_module(f"netwatch.lab.{module}"), name)
