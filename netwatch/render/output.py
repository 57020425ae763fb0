"""Machine output: stable JSON and YAML, and the output-format switch every command shares.

JSON is the documented contract (DESIGN §4); keys keep the order the builders give them
and lists arrive sorted, so output is byte-for-byte reproducible and golden-testable.
"""

from __future__ import annotations

import enum
import json
from typing import IO, Any

import yaml


class OutputFormat(enum.Enum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def dump_json(data: Any, out: IO[str]) -> None:
    json.dump(data, out, indent=2, ensure_ascii=False)
    out.write("\n")


def dump_yaml(data: Any, out: IO[str]) -> None:
    yaml.dump(data, out, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


class _Dumper(yaml.SafeDumper):
    """Plain SafeDumper, but indents lists inside mappings the way kubectl does."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def emit(data: Any, fmt: OutputFormat, out: IO[str]) -> None:
    """Write a machine format; tables are command-specific and live in `render.tables`."""
    if fmt is OutputFormat.YAML:
        dump_yaml(data, out)
    else:
        dump_json(data, out)
