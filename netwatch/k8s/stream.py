"""Reading list and watch responses of the kubernetes client, below the reflector.

The reflector calls the client with `_preload_content=False` and gets urllib3
responses: `read_json` for a list page, `json_lines` for a watch stream (complete lines
only: a line cut short by a dropped connection is never parsed, so the re-watch replays
that event rather than losing or garbling it), `shutdown` to unblock a reader from
another thread. ObjectMeta's namespace, name and resourceVersion are read here because
they are the list+watch protocol, common to every kind; what a kind's objects look like
beyond that is `convert`'s business.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

ObjectRef = tuple[str, str]
"""(namespace, name) of an object within its collection; namespace "" if cluster-scoped."""


class StreamError(Exception):
    """The server said something unusable; treated like a dropped connection."""


def object_ref(obj: Mapping[str, Any]) -> ObjectRef:
    meta = as_mapping(obj.get("metadata"))
    return (as_string(meta.get("namespace")) or "", as_string(meta.get("name")) or "")


def as_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_string(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def read_json(response: Any) -> Mapping[str, Any]:
    """The body of a (list) response as a JSON object; the response is closed."""
    try:
        data = response.data
    finally:
        close(response)
    body = json.loads(data)
    if not isinstance(body, Mapping):
        raise StreamError("list response is not a JSON object")
    return body


def json_lines(response: Any) -> Iterator[str]:
    """Complete lines of a chunked watch response; a trailing partial line is dropped."""
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=True):
        buffer.extend(chunk)
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end]).strip()
            start = end + 1
            if line:
                yield line.decode("utf-8", errors="replace")
        del buffer[:start]


def shutdown(response: Any) -> None:
    """Unblock a thread reading `response` (urllib3 ≥ 2.3 has `shutdown`)."""
    # The reading thread may have closed or released it meanwhile: ValueError and
    # RuntimeError from urllib3 then mean there is nothing left to unblock.
    with contextlib.suppress(OSError, ValueError, RuntimeError):
        if hasattr(response, "shutdown"):
            response.shutdown()
        else:
            sock = getattr(getattr(response, "connection", None), "sock", None)
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)


def close(response: Any) -> None:
    with contextlib.suppress(OSError):
        response.close()
        response.release_conn()


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}".strip()
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
