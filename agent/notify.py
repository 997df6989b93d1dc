"""systemd's sd_notify protocol (READY, WATCHDOG, STATUS, STOPPING), without libsystemd."""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Talks to NOTIFY_SOCKET when systemd set it; does nothing otherwise."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 1e6 / 2 if usec.isdigit() and int(usec) > 0 else None
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, message: str) -> None:
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message.encode(), self.address)
            except OSError:
                pass  # systemd gone (shutdown): nothing to tell

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def alive(self, status: str | None = None) -> None:
        """Called by the pipeline loop each time it has made progress; pings at half the watchdog period."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1" + (f"\nSTATUS={status}" if status else ""))
