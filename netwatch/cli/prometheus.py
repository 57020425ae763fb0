"""A minimal Prometheus HTTP API client (standard library only) for `suggest --prometheus`.

Only instant queries (`/api/v1/query`) returning a vector are needed. Anything else —
the server unreachable, an HTTP error, a body that is not the documented JSON, a
`status` other than `success`, a result type other than `vector` — is `BadInput`
(exit 2) with a message naming the URL and what went wrong.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from netwatch.cli.common import BadInput

DEFAULT_TIMEOUT = 30.0
Sample = tuple[dict[str, str], float]


def query_url(base: str, promql: str, at: float | None) -> str:
    params = {"query": promql}
    if at is not None:
        params["time"] = f"{at:.3f}"
    return base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode(params)


def check_base(base: str) -> str:
    parsed = urllib.parse.urlsplit(base)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        raise BadInput(f"--prometheus {base!r}: expected an http:// or https:// URL")
    return base


def instant_query(
    base: str, promql: str, *, at: float | None = None, timeout: float = DEFAULT_TIMEOUT
) -> tuple[float | None, list[Sample]]:
    """(evaluation time of the first sample, [(labels, value)]) of an instant vector query."""
    url = query_url(check_base(base), promql, at)
    where = f"Prometheus at {base}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc.read())
        raise BadInput(f"{where}: HTTP {exc.code} {exc.reason}{detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BadInput(f"{where} is unreachable: {reason}") from None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadInput(f"{where}: the response is not JSON (is this the Prometheus URL?)") from None
    return _parse(doc, where)


def _error_detail(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return f": {doc['error']}"
    return ""


def _parse(doc: Any, where: str) -> tuple[float | None, list[Sample]]:
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: unexpected response (not a JSON object)")
    if doc.get("status") != "success":
        raise BadInput(f"{where}: query failed: {doc.get('error') or doc.get('status')!r}")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        kind = data.get("resultType") if isinstance(data, dict) else None
        raise BadInput(f"{where}: expected a vector result, got {kind!r}")
    result = data.get("result")
    if not isinstance(result, list):
        raise BadInput(f"{where}: malformed vector result")
    samples: list[Sample] = []
    at: float | None = None
    for item in result:
        try:
            metric = item["metric"]
            ts, raw = item["value"]
            value = float(raw)
            when = float(ts)
            if not isinstance(metric, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metric.items()
            ):
                raise TypeError(metric)
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"{where}: malformed sample {item!r}") from None
        if math.isnan(value):
            continue
        at = when if at is None else at
        samples.append((dict(metric), value))
    return at, samples
