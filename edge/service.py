"""Running under systemd: readiness, the watchdog and stopping, over the notify socket.

systemd passes ``NOTIFY_SOCKET`` (a Unix datagram socket; ``@name`` is the abstract
namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. The agent says ``READY=1`` once it
takes messages, ``WATCHDOG=1`` from its main loop (so a hung loop gets the service
restarted), and ``STOPPING=1`` on SIGTERM. Outside systemd every call does nothing.
See config/systemd/edge-gateway.service and docs/service.md.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        usec = environ.get("WATCHDOG_USEC", "")
        # Ping at half the watchdog's period, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._next_ping = 0.0
        self._socket: socket.socket | None = None

    def notify(self, message: str) -> bool:
        """Send one notification (e.g. ``READY=1``); False when not under systemd or it failed."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode(), self.address)
            return True
        except OSError as error:
            log.warning("cannot notify systemd at %r: %s", self.address, error)
            return False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """Call from the main loop; pings only when the period is half over."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            self._next_ping = now + self.watchdog_interval
            self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
