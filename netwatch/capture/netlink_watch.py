"""Watch for links appearing and vanishing (RTM_NEWLINK / RTM_DELLINK) in this netns.

Pods come and go while the capture runs; the kernel announces their veths on the
RTNLGRP_LINK multicast group. Events are used only as a wake-up: on any of them (and
every `rescan_s` anyway, in case the socket overflowed with ENOBUFS) the callback
re-lists links and diffs, which is simpler and more robust than decoding each message.
The thread is created after `attach.enter_netns`, so it inherits the node namespace.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable

_NETLINK_ROUTE = 0
_RTMGRP_LINK = 0x1
_log = logging.getLogger(__name__)


class LinkWatcher:
    """Calls `on_change()` from its own thread after link events (debounced)."""

    def __init__(
        self,
        on_change: Callable[[], None],
        *,
        rescan_s: float = 2.0,
        debounce_s: float = 0.02,
    ) -> None:
        self._on_change = on_change
        self._rescan_s = rescan_s
        self._debounce_s = debounce_s
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, _RTMGRP_LINK))
        self._sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="netwatch-links", daemon=True)
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sock.close()

    def _drain_socket(self) -> bool:
        got = False
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return got
            except OSError:  # ENOBUFS: events were lost; a rescan catches up
                return True
            got = got or bool(data)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], self._rescan_s)
            if ready and self._drain_socket():
                # a burst (veth pair creation = several messages): wait for it to settle
                self._stop.wait(self._debounce_s)
                self._drain_socket()
            if self._stop.is_set():
                return
            try:
                self._on_change()
            except Exception:  # keep watching; the next event or rescan retries
                self.errors += 1
                _log.exception("link rescan failed")

    def __enter__(self) -> LinkWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
