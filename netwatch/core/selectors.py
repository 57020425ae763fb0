"""Label selectors (`matchLabels` + `matchExpressions`) and label syntax validation.

Semantics follow apimachinery's `LabelSelectorAsSelector`: all terms are AND-ed, an empty
selector matches everything, and `NotIn`/`DoesNotExist` match objects lacking the key
(DESIGN §3.4). Validation mirrors `ValidateLabelSelector` so bad objects are rejected at
load time with the offending field named, never half-evaluated.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass


class Operator(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        match self.operator:
            case Operator.IN:
                return value is not None and value in self.values
            case Operator.NOT_IN:
                # §3.4: NotIn matches objects that lack the key.
                return value is None or value not in self.values
            case Operator.EXISTS:
                return value is not None
            case Operator.DOES_NOT_EXIST:
                return value is None


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed selector; `match_labels` is folded into requirements for evaluation."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        """`{}` selects everything (§3.4)."""
        return not self.match_labels and not self.match_expressions

    def requirements(self) -> tuple[Requirement, ...]:
        eq = tuple(Requirement(k, Operator.IN, frozenset({v})) for k, v in self.match_labels)
        return eq + self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def describe(self) -> str:
        """A kubectl-style rendering (`app=web,tier in (a,b)`), `<all>` for `{}`."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            vals = ",".join(sorted(r.values))
            match r.operator:
                case Operator.IN:
                    parts.append(f"{r.key} in ({vals})")
                case Operator.NOT_IN:
                    parts.append(f"{r.key} notin ({vals})")
                case Operator.EXISTS:
                    parts.append(r.key)
                case Operator.DOES_NOT_EXIST:
                    parts.append(f"!{r.key}")
        return ",".join(parts) if parts else "<all>"


MATCH_ALL = LabelSelector()

# Qualified names and label values, as in apimachinery's validation package.
_NAME_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS1123_SUBDOMAIN_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_MAX_NAME = 63
_MAX_PREFIX = 253


def label_key_error(key: str) -> str | None:
    """Why `key` is not a valid label key, or None when it is."""
    if not isinstance(key, str) or not key:
        return "label key must be a non-empty string"
    prefix, slash, name = key.rpartition("/")
    bad_prefix = not prefix or len(prefix) > _MAX_PREFIX or not _DNS1123_SUBDOMAIN_RE.match(prefix)
    if slash and bad_prefix:
        return f"label key {key!r}: prefix must be a DNS subdomain of at most 253 characters"
    if len(name) > _MAX_NAME or not _NAME_RE.match(name):
        return (
            f"label key {key!r}: name must be at most 63 characters of [A-Za-z0-9-_.], "
            "starting and ending with an alphanumeric"
        )
    return None


def label_value_error(value: str) -> str | None:
    """Why `value` is not a valid label value, or None when it is."""
    if not isinstance(value, str):
        return f"label value {value!r} must be a string"
    if value == "":
        return None
    if len(value) > _MAX_NAME or not _NAME_RE.match(value):
        return (
            f"label value {value!r} must be at most 63 characters of [A-Za-z0-9-_.], "
            "starting and ending with an alphanumeric"
        )
    return None
