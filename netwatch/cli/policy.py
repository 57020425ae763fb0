"""`netwatch policy check|matrix|lint`: the offline NetworkPolicy engine (DESIGN §4)."""

from __future__ import annotations

import ipaddress
import sys

import click

from netwatch.cli.common import (
    BadInput,
    cluster_options,
    ipblock_option,
    load,
    output_format,
    output_option,
    stderr_console,
    stdout_console,
)
from netwatch.core.cluster import Cluster
from netwatch.core.engine import IPBlockPodIPs, PolicyEngine, Target
from netwatch.core.lint import lint
from netwatch.core.model import POLICY_PROTOCOLS, Protocol
from netwatch.render.lint import lint_to_dict, render_lint_table
from netwatch.render.output import OutputFormat, emit
from netwatch.render.policy import (
    check_to_dict,
    matrix_to_dict,
    render_check_table,
    render_matrix_table,
    write_matrix_json,
)


@click.group()
def policy() -> None:
    """Answer questions about NetworkPolicy from cluster snapshot files."""


def _protocol_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--protocol",
        type=click.Choice([p.value for p in POLICY_PROTOCOLS], case_sensitive=False),
        default="TCP",
        show_default=True,
    )(func)


def _engine(cluster: Cluster, mode: str) -> PolicyEngine:
    return PolicyEngine(cluster, ipblock_pod_ips=IPBlockPodIPs(mode))


def _target(engine: PolicyEngine, ref: str, flag: str) -> Target:
    """`NS/POD` or an IP address; unknown pods are bad input (exit 2)."""
    try:
        ip = ipaddress.ip_address(ref)
    except ValueError:
        ip = None
    if ip is not None:
        service = next((s for s in engine.cluster.services if ref in s.cluster_ips), None)
        if service is not None:
            stderr_console().print(
                f"[yellow]note:[/] {ref} is the ClusterIP of Service {service.key}; policy "
                "applies to its backend pods and target port, so name a backend pod instead "
                "for an exact answer.",
                highlight=False,
            )
        return engine.target_for_ip(ip)
    namespace, slash, name = ref.partition("/")
    if not slash or not namespace or not name:
        raise BadInput(f"{flag} {ref!r}: expected NAMESPACE/POD or an IP address")
    pod = engine.cluster.pod(ref)
    if pod is None:
        known = sorted(p.name for p in engine.cluster.pods if p.namespace == namespace)
        hint = f" (pods in {namespace}: {', '.join(known[:10])})" if known else ""
        raise BadInput(f"{flag} {ref!r}: no such pod in the cluster snapshot{hint}")
    if pod.phase.terminal:
        raise BadInput(f"{flag} {ref!r}: pod is {pod.phase.value} and no longer owns an IP")
    return engine.target_for_pod(pod)


def _port(text: str, *, dst: Target, protocol: Protocol) -> int:
    if text.isdigit():
        port = int(text)
        if not 1 <= port <= 65535:
            raise BadInput(f"--port {text}: must be between 1 and 65535")
        return port
    if dst.pod is None:
        raise BadInput(f"--port {text!r}: a named port needs a pod as --dst")
    number = dst.pod.named_port(text, protocol)
    if number is None:
        raise BadInput(
            f"--port {text!r}: pod {dst.pod.key} has no {protocol.value} container port "
            "of that name"
        )
    return number


@policy.command()
@cluster_options
@click.option("--src", required=True, help="Client: NAMESPACE/POD or IP.")
@click.option("--dst", required=True, help="Server: NAMESPACE/POD or IP.")
@click.option("--port", "port_text", required=True, help="Port number or named port of --dst.")
@_protocol_option
@ipblock_option
@output_option
def check(
    cluster_paths: tuple[str, ...],
    strict: bool,
    src: str,
    dst: str,
    port_text: str,
    protocol: str,
    ipblock_pod_ips: str,
    output: str,
) -> None:
    """Is one connection allowed? Exit 0 if allowed, 1 if denied, 2 on bad input."""
    result = load(cluster_paths, strict=strict)
    engine = _engine(result.cluster, ipblock_pod_ips)
    proto = Protocol(protocol.upper())
    client = _target(engine, src, "--src")
    server = _target(engine, dst, "--dst")
    port = _port(port_text, dst=server, protocol=proto)
    verdict = engine.evaluate(client, server, port, proto)
    data = check_to_dict(verdict, src=src, dst=dst, port=port, protocol=proto)
    fmt = output_format(output)
    if fmt is OutputFormat.TABLE:
        render_check_table(data, verdict, stdout_console())
    else:
        emit(data, fmt, sys.stdout)
    sys.exit(0 if verdict.allowed else 1)


@policy.command()
@cluster_options
@click.option("--port", required=True, type=click.IntRange(1, 65535))
@_protocol_option
@ipblock_option
@output_option
def matrix(
    cluster_paths: tuple[str, ...],
    strict: bool,
    port: int,
    protocol: str,
    ipblock_pod_ips: str,
    output: str,
) -> None:
    """Allowed/denied for every ordered pair of pods (with an IP, not hostNetwork)."""
    result = load(cluster_paths, strict=strict)
    m = _engine(result.cluster, ipblock_pod_ips).matrix(port, Protocol(protocol.upper()))
    fmt = output_format(output)
    if fmt is OutputFormat.JSON:
        write_matrix_json(m, sys.stdout)
    elif fmt is OutputFormat.YAML:
        emit(matrix_to_dict(m), fmt, sys.stdout)
    else:
        render_matrix_table(m, stdout_console())


@policy.command(name="lint")
@cluster_options
@ipblock_option
@output_option
def lint_command(
    cluster_paths: tuple[str, ...], strict: bool, ipblock_pod_ips: str, output: str
) -> None:
    """Static findings: empty/redundant rules and policies, unprotected pods, DNS, …"""
    result = load(cluster_paths, strict=strict)
    findings = lint(_engine(result.cluster, ipblock_pod_ips), problems=result.problems)
    fmt = output_format(output)
    if fmt is OutputFormat.TABLE:
        render_lint_table(findings, stdout_console())
    else:
        emit(lint_to_dict(findings), fmt, sys.stdout)
