"""Active OBD-II polling on a CAN bus: the agent's only transmitter, enabled per bus by configuration.

    stop = threading.Event()
    poller = ObdPoller(lambda: can.Bus(interface="socketcan", channel="can0"), config, on_sample, on_event)
    threading.Thread(target=poller.run, args=(stop,), name="obd-can0", daemon=True).start()

It runs in its own thread and owns its own bus object (its own socket on
SocketCAN), so a slow or silent ECU delays only this thread, never frame
collection on this or any other bus. It transmits service 01/03/07/09/0A
requests and ISO-TP flow control, nothing else (DESIGN.md, contract 7), and
counts every frame it sends (`stats["frames_sent"]`).
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Union

import can

from carledger.obd.config import ObdConfig
from carledger.obd.isotp_link import IsoTpLink
from carledger.obd.schedule import Backoff
from carledger.obd.session import ClosedLink, EventSink, LinkError, ObdSession, SampleSink

__all__ = ["BusPoller", "ObdPoller"]

log = logging.getLogger(__name__)

BusOrFactory = Union[can.BusABC, Callable[[], can.BusABC]]


class BusPoller(abc.ABC):
    """A polling thread that owns its bus handle: opens it, makes the link, reopens with back-off on failure.

    Subclasses say which link (`_link`) and what the session runs (`self.session`, with `.link` and
    `.run(stop)`); `frames_sent` counts every frame any link of this poller transmitted.
    """

    what = "polling"

    def __init__(self, bus: BusOrFactory, backoff: tuple[float, float], on_event: EventSink | None):
        self.on_event = on_event or (lambda kind, detail: None)
        self._backoff = backoff
        self._factory = None if isinstance(bus, can.BusABC) else bus
        self._bus = bus if isinstance(bus, can.BusABC) else None
        self._sent_before = 0
        self.link: IsoTpLink | None = None
        self.session: Any = None

    @abc.abstractmethod
    def _link(self, bus: can.BusABC) -> IsoTpLink:
        """The ISO-TP link this poller talks through on `bus`."""

    def _forget(self) -> None:
        """The link is gone: drop what the session learnt through it."""

    @property
    def frames_sent(self) -> int:
        return self._sent_before + (self.link.sent if self.link else 0)

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set. Bus failures are reported and retried; this never raises."""
        backoff = Backoff(*self._backoff)
        while not stop.is_set():
            try:
                if self._bus is None:
                    self._bus = self._factory()
                if self.link is None:
                    self.link = self._link(self._bus)
                    self.session.link = self.link
                self.session.run(stop)
                backoff.reset()
            except (LinkError, can.CanError, OSError, ValueError) as exc:
                log.warning("%s: %s", self.what, exc)
                self.on_event("bus-error", {"error": str(exc)})
                self._drop_bus()
                if stop.wait(backoff.delay()):
                    break
        if self._factory is not None:
            self._drop_bus()

    def _drop_bus(self) -> None:
        if self.link is not None:
            self._sent_before += self.link.sent
            self.link = None
            self._forget()
        if self._factory is not None and self._bus is not None:
            try:
                self._bus.shutdown()
            except Exception:  # already broken; nothing more to release
                pass
            self._bus = None


class ObdPoller(BusPoller):
    """Polls PIDs, DTCs and the VIN over ISO 15765-4 on one bus.

    bus: an open python-can bus, or a function that opens one (then a failed
    bus is shut down and reopened with back-off). The poller installs its
    own receive filters (OBD answer identifiers only).
    on_sample(t, name, value, source): t is the answer frame's timestamp.
    on_event(kind, detail): ecu-discovered, ecu-silent, timeout,
    negative-response, malformed-response, pid-unsupported, bus-error.
    """

    what = "OBD polling"

    def __init__(self, bus: BusOrFactory, config: ObdConfig, on_sample: SampleSink,
                 on_event: EventSink | None = None):
        super().__init__(bus, config.backoff, on_event)
        self.config = config
        self.session = ObdSession(ClosedLink("the bus is not open"), config, on_sample, self.on_event)

    def set_pids(self, pids: Mapping[int, float]) -> None:
        """Poll these PIDs (PID -> interval seconds) from now on; safe from any thread."""
        self.session.set_pids(pids)

    @property
    def stats(self) -> dict[str, int]:
        """Requests, answers, timeouts ... and `frames_sent`: every frame this poller transmitted."""
        out = self.session.stats.as_dict()
        out["frames_sent"] = self.frames_sent
        return out

    @property
    def ecus(self) -> dict[int, set[int]]:
        return dict(self.session.ecus)

    @property
    def vin(self) -> str | None:
        return self.session.vin

    def _link(self, bus: can.BusABC) -> IsoTpLink:
        return IsoTpLink(bus, self.config.id_bits)

    def _forget(self) -> None:
        self.session.ecus.clear()
