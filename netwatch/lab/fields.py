"""Reading an untrusted YAML document while collecting every problem with its field path.

`scenario` validates lab scenarios with it: each accessor returns a usable default and
records `field: message` instead of raising, so one pass reports every mistake in a file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from netwatch.core.model import Protocol
from netwatch.core.selectors import label_key_error, label_value_error

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def describe(value: object) -> str:
    """How a bad value is quoted in messages, in YAML's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


class FieldReader:
    """Typed accessors that record `field: message` problems instead of raising."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._path: list[str] = []

    @contextmanager
    def at(self, part: str) -> Iterator[None]:
        self._path.append(part)
        try:
            yield
        finally:
            self._path.pop()

    def where(self, key: str | None = None) -> str:
        text = ""
        for part in [*self._path, *([key] if key is not None else [])]:
            text += part if part.startswith("[") or not text else f".{part}"
        return text or "(top level)"

    def problem(self, key: str | None, message: str) -> None:
        self.problems.append(f"{self.where(key)}: {message}")

    def mapping(self, obj: Mapping[str, Any], key: str, *, required: bool = False) -> Any:
        value = obj.get(key)
        if value is None:
            if required:
                self.problem(key, "required")
            return {}
        if not isinstance(value, Mapping):
            self.problem(key, f"expected a mapping, got {describe(value)}")
            return {}
        return value

    def items(self, obj: Mapping[str, Any], key: str, *, required: bool = False) -> list[Any]:
        value = obj.get(key)
        if value is None:
            if required:
                self.problem(key, "required")
            return []
        if not isinstance(value, list):
            self.problem(key, f"expected a list, got {describe(value)}")
            return []
        return value

    def string(
        self,
        obj: Mapping[str, Any],
        key: str,
        *,
        required: bool = False,
        default: str | None = None,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
    ) -> str | None:
        value = obj.get(key)
        if value is None:
            if required:
                self.problem(key, "required")
            return default
        if not isinstance(value, str) or not value:
            self.problem(key, f"expected a non-empty string, got {describe(value)}")
            return default
        if pattern is not None and not pattern.match(value):
            self.problem(key, f"{value!r} is not a valid {what or 'name'}")
            return default
        return value

    def integer(
        self,
        obj: Mapping[str, Any],
        key: str,
        *,
        default: int,
        low: int,
        high: int,
    ) -> int:
        value = obj.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"expected an integer, got {describe(value)}")
            return default
        if not low <= value <= high:
            self.problem(key, f"{value} is out of range {low}..{high}")
            return default
        return value

    def number(self, obj: Mapping[str, Any], key: str, *, default: float, high: float) -> float:
        value = obj.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(key, f"expected a number, got {describe(value)}")
            return default
        if not 0 <= value <= high:
            self.problem(key, f"{value} is out of range 0..{high}")
            return default
        return float(value)

    def boolean(self, obj: Mapping[str, Any], key: str, *, default: bool) -> bool:
        value = obj.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"expected true or false, got {describe(value)}")
            return default
        return value

    def address(self, obj: Mapping[str, Any], key: str, *, default: str) -> str:
        text = self.string(obj, key, default=default) or default
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            self.problem(key, f"{text!r} is not an IPv4 address")
            return default
        return text

    def network(self, obj: Mapping[str, Any], key: str, *, default: str) -> str:
        text = self.string(obj, key, default=default) or default
        try:
            ipaddress.IPv4Network(text)
        except ValueError:
            self.problem(key, f"{text!r} is not an IPv4 CIDR (host bits must be zero)")
            return default
        return text

    def labels(self, obj: Mapping[str, Any], key: str) -> dict[str, str]:
        raw = self.mapping(obj, key)
        labels: dict[str, str] = {}
        with self.at(key):
            for k, v in raw.items():
                error = (
                    label_key_error(k)
                    if isinstance(k, str)
                    else f"label key {describe(k)} must be a string"
                )
                error = error or (
                    label_value_error(v)
                    if isinstance(v, str)
                    else f"label value {describe(v)} must be a string"
                )
                if error:
                    self.problem(str(k), error)
                else:
                    labels[k] = v
        return labels

    def protocol(self, obj: Mapping[str, Any], key: str) -> Protocol:
        value = obj.get(key, "TCP")
        if value not in ("TCP", "UDP", "SCTP"):
            self.problem(key, f"expected TCP, UDP or SCTP, got {describe(value)}")
            return Protocol.TCP
        return Protocol(value)

    def port_number_or_name(
        self, obj: Mapping[str, Any], key: str, *, required: bool = False
    ) -> int | str | None:
        value = obj.get(key)
        if value is None:
            if required:
                self.problem(key, "required")
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= 65535:
                self.problem(key, f"port {value} is out of range 1..65535")
                return None
            return value
        if isinstance(value, str) and DNS_LABEL.match(value) and len(value) <= 15:
            return value
        self.problem(key, f"expected a port number or name, got {describe(value)}")
        return None

    def unknown_keys(self, obj: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in obj:
            if key not in allowed:
                self.problem(str(key), f"unknown field (expected one of: {', '.join(allowed)})")

    def unique(self, key: str | None, values: Sequence[object], what: str) -> None:
        seen: set[object] = set()
        for value in values:
            if value in seen:
                self.problem(key, f"duplicate {what} {value!r}")
            seen.add(value)
