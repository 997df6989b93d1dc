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
        self.watchdog_interval = int(usec) / 1e6 / 2 if usec.isascii() and usec.isdigit() and int(usec) > 0 else None
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


class Watchdog:
    """Feeds systemd's watchdog only while the whole pipeline is alive, not on a timer.

    Alive means, at each pass of the pipeline loop (`beat`):

    - the loop itself runs (a hung loop never calls `beat`, so pings stop);
    - every source thread showed life when it promised to: a source with an
      `alive_until` attribute (monotonic time; BusSource sets it before each
      blocking read or back-off wait) is stalled once that is `stall` seconds
      past, e.g. a driver call that never returns;
    - the store keeps up: blocks that are due have not failed to seal for
      more than `stall` seconds since the last successful seal (`sealed`).

    While something is stalled, pings are withheld and STATUS says why, so
    systemd restarts the agent after WatchdogSec and `systemctl status` shows
    the reason.
    """

    def __init__(self, notifier: Notifier, sources: list | tuple = (), *, stall: float | None = None):
        self.notifier = notifier
        self.sources = list(sources)
        if stall is None:  # a third of the watchdog period: systemd notices within one period
            stall = notifier.watchdog_interval * 2 / 3 if notifier.watchdog_interval else 10.0
        self.stall = stall
        self.problem: str | None = None  # why pings are withheld, while they are
        self._unsealed_since: float | None = None

    def sealed(self) -> None:
        """Call after every seal that committed: the store is keeping up."""
        self._unsealed_since = None

    def beat(self, *, unsealed: bool = False, status: str | None = None, now: float | None = None) -> str | None:
        """Call on every pass of the pipeline loop; `unsealed` while due blocks could not be sealed.

        `unsealed` is not "records are pending" (they always are between
        seals): it is True while the last seal attempt failed and its records
        still wait, e.g. a full or failing disk the pipeline tries again.

        Pings systemd (at most every half watchdog period) when all is alive;
        returns the problem, or None.
        """
        now = time.monotonic() if now is None else now
        if not unsealed:
            self._unsealed_since = None
        elif self._unsealed_since is None:
            self._unsealed_since = now
        problem = self._problem(now)
        if problem != self.problem:
            self.problem = problem
            self.notifier.send(f"STATUS={problem}" if problem else f"STATUS={status or 'recording'}")
        if problem is None:
            self.notifier.alive(status)
        return problem

    def _problem(self, now: float) -> str | None:
        for source in self.sources:
            alive_until = getattr(source, "alive_until", None)
            if alive_until is not None and now - alive_until > self.stall:
                return f"watchdog withheld: source {source.name} stalled for {now - alive_until:.0f} s"
        if self._unsealed_since is not None and now - self._unsealed_since > self.stall:
            return f"watchdog withheld: nothing sealed for {now - self._unsealed_since:.0f} s while records wait"
        return None
