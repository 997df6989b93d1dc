"""OBD-II through an ELM327 adapter (USB or Bluetooth serial), driven by python-OBD.

python-OBD (`obd`) does what it does well: it opens the serial port, resets
and sets up the adapter (ATZ, ATE0, ATH1, ATL0, ATRV, ATSP ...), finds the
protocol, sets headers and reads the adapter's lines. Each request the
session makes goes out as a raw python-OBD command; the lines that come back
(headers on: one CAN frame per line) are reassembled and decoded by the same
code as everything else here, so the adapter path yields the same samples
under the same names as polling over CAN.

    source = Elm327Source(config, on_sample, on_event)   # config.port = "/dev/ttyUSB0"
    threading.Thread(target=source.run, args=(stop,), name="obd-elm327", daemon=True).start()

An adapter that cannot be opened, or that loses the car, is reported
(`adapter-error`) and reconnected with back-off; `run()` never raises.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from carledger.obd.config import ObdConfig
from carledger.obd.elmtext import parse_lines
from carledger.obd.reassembly import FrameError, Reassembler
from carledger.obd.schedule import Backoff
from carledger.obd.session import ClosedLink, EventSink, LinkError, ObdSession, RawAnswer, SampleSink

__all__ = ["Elm327Link", "Elm327Source"]

log = logging.getLogger(__name__)


class Elm327Link:
    """A session `Link` over a connected `obd.OBD`."""

    def __init__(self, connection, id_bits: int = 11):
        import obd

        self._obd = obd
        self.connection, self.id_bits = connection, id_bits
        self.rejected_lines = 0

    def _header(self, ecu: int | None) -> bytes:
        if self.id_bits == 11:
            return b"7DF" if ecu is None else f"{ecu - 8:03X}".encode()
        request_id = 0x18DB33F1 if ecu is None else 0x18DA00F1 | (ecu & 0xFF) << 8
        return f"{request_id & 0xFFFFFF:06X}".encode()  # ATSH xxyyzz; priority 18 is the adapter's default

    def exchange(self, payload: bytes, ecu: int | None, expect: set[int] | None,
                 timeout: float, pending_timeout: float, stop: threading.Event) -> list[RawAnswer]:
        obd = self._obd
        if self.connection.status() != obd.OBDStatus.CAR_CONNECTED:
            raise LinkError(f"adapter {self.connection.port_name()!r} is {self.connection.status()}")
        command = obd.OBDCommand("CARLEDGER", "carledger request", payload.hex().upper().encode(), 0,
                                 obd.decoders.raw_string, obd.ECU.ALL, False, self._header(ecu))
        response = self.connection.query(command, force=True)
        t = time.time()
        lines = [line for message in response.messages for line in message.raw().splitlines()]
        frames, rejected = parse_lines(lines, self.id_bits)
        self.rejected_lines += sum(1 for _, reason in rejected if reason != "not a frame")
        rx = Reassembler()
        answers = []
        for key, data in frames:
            try:
                done = rx.feed(t, key, data)
            except FrameError:
                self.rejected_lines += 1
                continue
            if done is not None:
                answers.append((t, key, done))
        return answers

    def idle(self, seconds: float, stop: threading.Event) -> bool:
        return stop.wait(seconds)


class Elm327Source:
    """Polls PIDs, DTCs and the VIN through the ELM327 at `config.port`, in the caller's thread."""

    def __init__(self, config: ObdConfig, on_sample: SampleSink, on_event: EventSink | None = None):
        if not config.port:
            raise ValueError("an ELM327 source needs config.port")
        self.config = config
        self.on_event = on_event or (lambda kind, detail: None)
        self.session = ObdSession(ClosedLink("the adapter is not connected"), config, on_sample, self.on_event)
        self.connection = None

    def set_pids(self, pids: Mapping[int, float]) -> None:
        """Poll these PIDs (PID -> interval seconds) from now on; safe from any thread."""
        self.session.set_pids(pids)

    @property
    def stats(self) -> dict[str, int]:
        return self.session.stats.as_dict()

    @property
    def vin(self) -> str | None:
        return self.session.vin

    def _connect(self):
        import obd

        return obd.OBD(self.config.port, baudrate=self.config.baudrate, protocol=self.config.protocol,
                       fast=False, timeout=max(0.1, self.config.timeout), check_voltage=True)

    def run(self, stop: threading.Event) -> None:
        """Connect, poll, reconnect with back-off, until `stop` is set."""
        import obd

        backoff = Backoff(*self.config.backoff)
        while not stop.is_set():
            try:
                self.connection = self._connect()
                status = self.connection.status()
                if status != obd.OBDStatus.CAR_CONNECTED:
                    raise LinkError(f"adapter {self.config.port}: {status}")
                self.on_event("adapter-connected", {"port": self.config.port,
                                                    "protocol": self.connection.protocol_name()})
                bits = 29 if self.connection.protocol_id() in ("7", "9") else 11  # what the adapter found
                self.session.link = Elm327Link(self.connection, bits)
                backoff.reset()
                self.session.run(stop)
            except (LinkError, OSError) as exc:
                log.warning("ELM327: %s", exc)
                self.on_event("adapter-error", {"port": self.config.port, "error": str(exc)})
                self.session.ecus.clear()
                if stop.wait(backoff.delay()):
                    break
            finally:
                self._close()

    def _close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:  # the port is already gone
                pass
            self.connection = None
            self.session.link = ClosedLink("the adapter is not connected")

