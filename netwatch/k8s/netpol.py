"""NetworkPolicy (networking.k8s.io/v1) objects to `netwatch.core.policy` values, validated.

Validation mirrors what the API server would have refused, so a policy netwatch
evaluates is one a cluster could actually hold: upstream's `ValidateNetworkPolicySpec`,
`ValidateNetworkPolicyPeer`, `ValidateNetworkPolicyPort` and `ValidateIPBlock`
(kubernetes pkg/apis/networking/validation) and apimachinery's `ValidateLabelSelector`.
Every problem in the object is reported with its field path (DESIGN §3.9), and the
policy is then rejected as a whole: half a policy would silently change verdicts.

Shapes follow Go's decoding of the JSON: a null list element is a zero-valued struct
(`ingress: [null]` is `[{}]`), a null selector is an absent one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from netwatch.core.policy import (
    IPBlock,
    IPNetwork,
    NetworkPolicy,
    Peer,
    PortSpec,
    Rule,
    effective_policy_types,
)
from netwatch.core.selectors import MATCH_ALL, LabelSelector, Operator, Requirement
from netwatch.k8s.fields import (
    ObjectReader,
    describe_value,
    label_key_problem,
    label_value_problem,
    read_metadata,
)

_OPERATORS = {op.value: op for op in Operator}
_POLICY_TYPES = ("Ingress", "Egress")
_MAX_PORT = 65535
# IANA_SVC_NAME (RFC 6335) as upstream's IsValidPortName checks it.
_PORT_NAME_CHARS = re.compile(r"^[-a-z0-9]+$")
_PORT_NAME_LETTER = re.compile(r"[a-z]")


def policy_from_dict(obj: Mapping[str, Any], *, source: str) -> NetworkPolicy:
    """Convert and validate one NetworkPolicy; raises `InvalidObject` listing every problem."""
    meta, obj = read_metadata(obj, kind="NetworkPolicy", namespaced=True, source=source)
    r = meta.reader
    spec = r.mapping(obj.get("spec"), "spec")
    raw_selector = spec.get("podSelector")
    if raw_selector is None:
        # Required by the API schema; defaulting it to {} would isolate the whole namespace.
        r.error("spec.podSelector", "required (use {} to select every pod in the namespace)")
        pod_selector = MATCH_ALL
    else:
        pod_selector = _selector(r, raw_selector, "spec.podSelector")
    ingress = _rules(r, spec.get("ingress"), field="spec.ingress", peers_key="from")
    egress = _rules(r, spec.get("egress"), field="spec.egress", peers_key="to")
    declared = _policy_types(r, spec.get("policyTypes"))
    r.check()
    return NetworkPolicy(
        namespace=meta.namespace,
        name=meta.name,
        pod_selector=pod_selector,
        # §3.1: Ingress always; Egress iff there is at least one egress rule.
        policy_types=effective_policy_types(declared, has_egress_rules=bool(egress)),
        ingress=ingress,
        egress=egress,
    )


def _policy_types(r: ObjectReader, value: object) -> list[str] | None:
    raw = r.items(value, "spec.policyTypes")
    if not raw:
        return None
    if len(raw) > len(_POLICY_TYPES):
        r.error("spec.policyTypes", f"may not specify more than two policyTypes, got {len(raw)}")
        return None
    types: list[str] = []
    for i, item in enumerate(raw):
        if item not in _POLICY_TYPES:
            r.error(
                f"spec.policyTypes[{i}]",
                f"unsupported policy type {describe_value(item)} (expected Ingress or Egress)",
            )
        elif item not in types:
            # Upstream validation only bounds the length: [Ingress, Ingress] is accepted.
            types.append(item)
    return types


def _rules(r: ObjectReader, value: object, *, field: str, peers_key: str) -> tuple[Rule, ...]:
    """Rules in YAML order: their positions are the rule indexes everything reports (§3)."""
    rules: list[Rule] = []
    for i, raw in enumerate(r.items(value, field)):
        path = f"{field}[{i}]"
        rule = r.mapping(raw, path)
        peers = [
            _peer(r, p, f"{path}.{peers_key}[{j}]")
            for j, p in enumerate(r.items(rule.get(peers_key), f"{path}.{peers_key}"))
        ]
        ports = [
            _port(r, p, f"{path}.ports[{j}]")
            for j, p in enumerate(r.items(rule.get("ports"), f"{path}.ports"))
        ]
        # §3.3: absent or empty `from`/`to` means every peer, IPs included.
        rules.append(Rule(peers=tuple(peers) if peers else None, ports=tuple(ports)))
    return tuple(rules)


def _peer(r: ObjectReader, value: object, path: str) -> Peer:
    raw = r.mapping(value, path)
    pods = raw.get("podSelector")
    namespaces = raw.get("namespaceSelector")
    block = raw.get("ipBlock")
    peer = Peer(
        pod_selector=None if pods is None else _selector(r, pods, f"{path}.podSelector"),
        namespace_selector=(
            None if namespaces is None else _selector(r, namespaces, f"{path}.namespaceSelector")
        ),
        ip_block=None if block is None else _ip_block(r, block, f"{path}.ipBlock"),
    )
    given = sum(v is not None for v in (pods, namespaces, block))
    if given == 0:
        r.error(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
    elif given > 1 and block is not None:
        r.error(path, "may not specify both ipBlock and another peer")
    return peer


def _selector(r: ObjectReader, value: object, path: str) -> LabelSelector:
    """A LabelSelector checked like apimachinery's `ValidateLabelSelector`."""
    raw = r.mapping(value, path)
    labels = r.labels(raw.get("matchLabels"), f"{path}.matchLabels")
    requirements: list[Requirement] = []
    for i, item in enumerate(r.items(raw.get("matchExpressions"), f"{path}.matchExpressions")):
        req = _requirement(r, item, f"{path}.matchExpressions[{i}]")
        if req is not None:
            requirements.append(req)
    return LabelSelector(tuple(labels.items()), tuple(requirements))


def _requirement(r: ObjectReader, value: object, path: str) -> Requirement | None:
    raw = r.mapping(value, path)
    key = raw.get("key")
    values = r.items(raw.get("values"), f"{path}.values")
    ok = True
    if key is None:
        r.error(f"{path}.key", "required")
        ok = False
    elif (key_problem := label_key_problem(key)) is not None:
        r.error(f"{path}.key", key_problem)
        ok = False
    for j, v in enumerate(values):
        if (problem := label_value_problem(v)) is not None:
            r.error(f"{path}.values[{j}]", problem)
            ok = False
    operator = raw.get("operator")
    op = _OPERATORS.get(operator) if isinstance(operator, str) else None
    if op is None:
        what = "required" if operator is None else f"unknown operator {describe_value(operator)}"
        r.error(f"{path}.operator", f"{what} (expected In, NotIn, Exists or DoesNotExist)")
        return None
    if op in (Operator.IN, Operator.NOT_IN) and not values:
        r.error(f"{path}.values", f"must be non-empty when operator is {op.value}")
        ok = False
    elif op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
        r.error(f"{path}.values", f"must be empty when operator is {op.value}, got {len(values)}")
        ok = False
    return Requirement(str(key), op, frozenset(values)) if ok else None


def _ip_block(r: ObjectReader, value: object, path: str) -> IPBlock | None:
    raw = r.mapping(value, path)
    text = raw.get("cidr")
    if text is None or text == "":
        r.error(f"{path}.cidr", "required")
        return None
    cidr = _parse_cidr(r, text, f"{path}.cidr")
    excepts: list[IPNetwork] = []
    for i, item in enumerate(r.items(raw.get("except"), f"{path}.except")):
        field = f"{path}.except[{i}]"
        ex = _parse_cidr(r, item, field)
        if ex is None or cidr is None:
            continue
        if ex.version != cidr.version:
            r.error(field, f"{item!r} is not the same IP family as cidr {cidr}")
        # §3.6 / upstream ValidateIPBlock: the except must be strictly inside the cidr.
        elif ex.network_address not in cidr or ex.prefixlen <= cidr.prefixlen:
            r.error(field, f"{item!r} must be a strict subset of `cidr` {cidr}")
        else:
            excepts.append(ex)
    return IPBlock(cidr, tuple(excepts)) if cidr is not None else None


def _parse_cidr(r: ObjectReader, value: object, field: str) -> IPNetwork | None:
    """Parse `address/prefix`; host bits are dropped (§3.6), a bare address is refused."""
    if not isinstance(value, str):
        r.error(field, f"expected a CIDR string, got {describe_value(value)}")
        return None
    address, slash, prefix = value.partition("/")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        r.error(field, f"invalid CIDR {value!r}: {address!r} is not an IP address")
        return None
    if not slash or not prefix.isdigit():
        r.error(field, f"invalid CIDR {value!r}: expected address/prefix-length, e.g. 10.0.0.0/8")
        return None
    if int(prefix) > ip.max_prefixlen:
        r.error(field, f"invalid CIDR {value!r}: prefix length {prefix} exceeds {ip.max_prefixlen}")
        return None
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as exc:  # e.g. an IPv6 zone index
        r.error(field, f"invalid CIDR {value!r}: {exc}")
        return None


def _port(r: ObjectReader, value: object, path: str) -> PortSpec:
    raw = r.mapping(value, path)
    protocol = r.protocol(raw.get("protocol"), f"{path}.protocol")
    port = raw.get("port")
    end_port = raw.get("endPort")
    if end_port is not None and (isinstance(end_port, bool) or not isinstance(end_port, int)):
        r.error(f"{path}.endPort", f"expected an integer, got {describe_value(end_port)}")
        end_port = None
    if port is None:
        if end_port is not None:
            r.error(f"{path}.endPort", f"endPort {end_port} may not be specified without a port")
        return PortSpec(protocol, None)
    if isinstance(port, str):
        # Only a YAML integer is a number: a quoted "80" is a (bad) name, as upstream.
        problem = port_name_problem(port)
        if problem is not None:
            r.error(f"{path}.port", problem)
        if end_port is not None:
            r.error(
                f"{path}.endPort",
                f"endPort {end_port} may not be specified when port is a name ({port!r}): "
                "a port range needs a numeric port",
            )
        return PortSpec(protocol, port)
    if isinstance(port, bool) or not isinstance(port, int):
        r.error(f"{path}.port", f"expected a port number or name, got {describe_value(port)}")
        return PortSpec(protocol, None)
    if not 1 <= port <= _MAX_PORT:
        r.error(f"{path}.port", f"port {port} must be between 1 and 65535")
    if end_port is not None:
        if end_port < port:
            r.error(
                f"{path}.endPort",
                f"endPort {end_port} must be greater than or equal to port {port}",
            )
        if not 1 <= end_port <= _MAX_PORT:
            r.error(f"{path}.endPort", f"endPort {end_port} must be between 1 and 65535")
    return PortSpec(protocol, port, end_port)


def port_name_problem(name: str) -> str | None:
    """Why `name` is not an IANA_SVC_NAME (upstream `IsValidPortName`), or None."""
    reasons: list[str] = []
    if len(name) > 15:
        reasons.append("must be at most 15 characters")
    if not _PORT_NAME_CHARS.match(name):
        reasons.append("must contain only lowercase letters, digits and '-'")
    if not _PORT_NAME_LETTER.search(name):
        reasons.append("must contain at least one letter (a quoted number is not a port)")
    if "--" in name:
        reasons.append("must not contain consecutive '-'")
    if name.startswith("-") or name.endswith("-"):
        reasons.append("must not begin or end with '-'")
    if not reasons:
        return None
    return f"invalid port name {name!r}: " + "; ".join(reasons)
