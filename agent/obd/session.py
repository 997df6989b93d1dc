"""The polling loop, the same over CAN (can-isotp) and through an ELM327: find the ECUs, poll, back off.

A `Link` carries one request at a time to the car and brings back the raw
answers (the ISO-TP payloads, each with the time it arrived and the ECU that
sent it). `ObdSession.run(stop)` does the rest:

1. discovery: service 01 PID 00 sent functionally (or physically to the
   configured ECUs); each ECU that answers is asked for its next bitmaps
   (01 20, 01 40 ... as long as the previous one says the next exists);
   each configured PID is then polled at the first ECU that supports it;
   the VIN (09 02) is read once per discovery;
2. polling: each PID at its interval, the DTCs of services 03, 07 and 0A
   every `dtc_interval`, never faster than `max_rate` requests per second;
3. negative answers: 0x12 and 0x31 (not supported / out of range) drop the
   PID from polling; 0x78 (response pending) is waited for up to
   `pending_timeout` by the link; others are reported and the PID is kept;
4. silence: after `silent_after` unanswered requests in a row (ignition off)
   the ECUs are forgotten and discovery is retried with exponential back-off
   until they answer again.

Health goes to `on_event(kind, detail)` (see docs/obd.md for the kinds); each
problem is reported when it starts, not at every request. Samples go to
`on_sample(t, name, value, source)`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Protocol

from carledger.obd.config import ObdConfig
from carledger.obd.messages import (
    DTC_SERVICES, FREEZE_DTC_PID, NRC_NAMES, Answer, ResponseError, parse_response, request,
)
from carledger.obd.passive import ecu_name
from carledger.obd.pids import BITMAP_PIDS
from carledger.obd.schedule import Backoff, PollSchedule, RateLimit

__all__ = ["ClosedLink", "Link", "LinkError", "ObdSession", "ObdStats", "PollStats", "SampleSink", "EventSink"]

log = logging.getLogger(__name__)

SampleSink = Callable[[float, str, "int | float | str", str], None]
EventSink = Callable[[str, dict], None]
RawAnswer = tuple[float, int, bytes]  # (time, ECU answer key, payload)

_DTC = "dtc"
_DROP_CODES = frozenset({0x11, 0x12, 0x31})  # not supported: stop asking
# freeze frame PIDs read with a stored DTC (where the ECU keeps them): load, coolant, MAP, rpm, speed,
# intake air, throttle, fuel level, module voltage
FREEZE_PIDS = (0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x0F, 0x11, 0x2F, 0x42)


class LinkError(Exception):
    """The medium failed (bus gone, adapter unplugged); the owner reopens it."""


class Link(Protocol):
    """One request at a time to the car; raw answers back."""

    def exchange(self, payload: bytes, ecu: int | None, expect: set[int] | None,
                 timeout: float, pending_timeout: float, stop: threading.Event) -> list[RawAnswer]:
        """Send `payload` to `ecu` (an answer key) or functionally (None); collect answers until
        `timeout` passes (extended by `pending_timeout` after each 7F xx 78), or sooner once
        every ECU in `expect` has answered for good, or `stop` is set."""

    def idle(self, seconds: float, stop: threading.Event) -> bool:
        """Wait (keeping the medium drained); True if `stop` was set."""


class ClosedLink:
    """The link of a session whose medium is not open: exchanges fail, idling just waits."""

    def __init__(self, why: str):
        self.why = why

    def exchange(self, *args, **kwargs) -> list[RawAnswer]:
        raise LinkError(self.why)

    def idle(self, seconds: float, stop: threading.Event) -> bool:
        return stop.wait(seconds)


@dataclass
class PollStats:
    """What a polling session counts, OBD-II or UDS alike."""

    requests: int = 0
    answers: int = 0
    negative: int = 0
    pending: int = 0
    timeouts: int = 0
    malformed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ObdStats(PollStats):
    samples: int = 0
    discoveries: int = 0


def _ignore_event(kind: str, detail: dict) -> None:
    pass


class ObdSession:
    """Discovery, scheduled polling, DTCs, VIN and back-off over one `Link`."""

    def __init__(self, link: Link, config: ObdConfig, on_sample: SampleSink,
                 on_event: EventSink | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.link, self.config = link, config
        self.on_sample, self.on_event = on_sample, on_event or _ignore_event
        self.clock = clock
        self.stats = ObdStats()
        self.ecus: dict[int, set[int]] = {}  # answer key -> supported PIDs
        self.vin: str | None = None
        self._wanted = dict(config.pids)
        self._targets: dict[int, int] = {}  # PID -> ECU polled for it
        self._schedule = PollSchedule()
        self._limit = RateLimit(config.max_rate)
        self._backoff = Backoff(*config.backoff)
        self._silent_run = 0
        self._silent_reported = False
        self._reported: set[tuple] = set()
        self._lock = threading.Lock()
        self._new_pids: dict[int, float] | None = None

    # -- control from other threads -------------------------------------------------------

    def set_pids(self, pids: Mapping[int, float]) -> None:
        """Poll these PIDs at these intervals from now on (e.g. when the owner's policy changes)."""
        with self._lock:
            self._new_pids = dict(pids)

    # -- the loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set; raises LinkError when the medium fails."""
        while not stop.is_set():
            self._apply_new_pids()
            if not self.ecus:
                if self._discover(stop):
                    self._backoff.reset()
                    self._silent_reported = False
                    continue
                if stop.is_set():
                    return
                if not self._silent_reported:
                    self.on_event("ecu-silent", {"reason": "no ECU answers", "retry": "with back-off"})
                    self._silent_reported = True
                if self.link.idle(self._backoff.delay(), stop):
                    return
                continue
            self._poll_next(stop)

    def _apply_new_pids(self) -> None:
        with self._lock:
            new, self._new_pids = self._new_pids, None
        if new is not None:
            self._wanted = new
            self._plan()

    def _poll_next(self, stop: threading.Event) -> None:
        entry = self._schedule.next()
        if entry is None:
            self.link.idle(0.5, stop)
            return
        item, due = entry
        wait = due - self.clock()
        if wait > 0:
            self.link.idle(min(wait, 0.5), stop)
            return
        if item == _DTC:
            self._read_dtcs(stop)
        else:
            self._poll_pid(item, stop)
        self._schedule.done(item, self.clock())

    # -- requests -----------------------------------------------------------------------

    def _ask(self, payload: bytes, ecu: int | None, stop: threading.Event) -> list[tuple[float, int, Answer]] | None:
        """Answers to one request (None if stopped first), rate-bounded, each checked and parsed."""
        while (wait := self._limit.wait(self.clock())) > 0:
            if self.link.idle(wait, stop):
                return None
        self._limit.sent(self.clock())
        self.stats.requests += 1
        if ecu is not None:
            expect = {ecu}
        else:
            expect = set(self.ecus) or None
        raw = self.link.exchange(payload, ecu, expect, self.config.timeout, self.config.pending_timeout, stop)
        if stop.is_set():
            return None  # cut short: neither an answer nor a timeout
        answers = []
        for t, key, data in raw:
            try:
                answer = parse_response(data)
            except ResponseError as exc:
                self.stats.malformed += 1
                self._report_once(("malformed", key, payload), "malformed-response",
                                  {"ecu": ecu_name(key), "request": payload.hex(), "reason": str(exc)})
                continue
            if answer.service != payload[0] or (answer.negative is None and answer.pid is not None
                                                 and len(payload) > 1 and answer.pid != payload[1]):
                continue  # a late answer to an earlier request
            if answer.pending:
                self.stats.pending += 1
                continue
            self.stats.answers += 1
            answers.append((t, key, answer))
        return answers

    def _emit(self, t: float, answer: Answer) -> None:
        for name, value, source in answer.samples:
            self.on_sample(t, name, value, source)
            self.stats.samples += 1

    def _negative(self, key: int, payload: bytes, answer: Answer) -> bool:
        """Report a negative answer; True if the request should not be repeated."""
        self.stats.negative += 1
        code = answer.negative
        drop = code in _DROP_CODES
        self._report_once(("negative", key, payload, code), "negative-response", {
            "ecu": ecu_name(key), "request": payload.hex(), "code": code,
            "name": NRC_NAMES.get(code, "unknown"), "action": "dropped" if drop else "kept",
        })
        return drop

    def _report_once(self, key: tuple, kind: str, detail: dict) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.info("OBD %s: %s", kind, detail)
            self.on_event(kind, detail)

    def _answered(self, payload: bytes) -> None:
        self._silent_run = 0
        self._reported = {k for k in self._reported if k[0] != "timeout" or k[2] != payload}

    def _unanswered(self, ecu: int, payload: bytes) -> None:
        self.stats.timeouts += 1
        self._silent_run += 1
        self._report_once(("timeout", ecu, payload), "timeout", {"ecu": ecu_name(ecu), "request": payload.hex()})
        if self._silent_run >= self.config.silent_after:
            self.on_event("ecu-silent", {"ecus": ",".join(ecu_name(e) for e in sorted(self.ecus)),
                                         "unanswered": self._silent_run, "retry": "with back-off"})
            self.ecus.clear()
            self._silent_run = 0
            self._silent_reported = True
            self._reported.clear()

    # -- discovery ------------------------------------------------------------------------

    def _discover(self, stop: threading.Event) -> bool:
        self.stats.discoveries += 1
        probe = request(0x01, 0x00)
        found: dict[int, set[int]] = {}
        for t, key, answer in self._ask_all(probe, stop) or ():
            if answer.supported is not None:
                found[key] = set(answer.supported)
        if not found:
            return False
        for key, supported in found.items():
            for base in BITMAP_PIDS[1:]:
                if base not in supported:
                    break
                answers = self._ask(request(0x01, base), key, stop) or []
                bitmaps = [a.supported for _, k, a in answers if a.supported is not None]
                if not bitmaps:
                    break
                supported |= bitmaps[0]
        self.ecus = found
        for key in sorted(found):
            pids = sorted(p for p in found[key] if p not in BITMAP_PIDS)
            self.on_event("ecu-discovered", {"ecu": ecu_name(key), "pids": " ".join(f"{p:02X}" for p in pids)})
        if self.config.vin:
            self._read_vin(stop)
        self._plan()
        self._schedule.reset(self.clock())
        return True

    def _plan(self) -> None:
        targets = {}
        for pid in self._wanted:
            ecu = next((k for k in sorted(self.ecus) if pid in self.ecus[k]), None)
            if ecu is not None:
                targets[pid] = ecu
        missing = sorted(set(self._wanted) - set(targets))
        if missing and self.ecus:
            self._report_once(("unsupported", tuple(missing)), "pid-unsupported",
                              {"pids": " ".join(f"{p:02X}" for p in missing)})
        self._targets = targets
        items = [(pid, self._wanted[pid]) for pid in targets]
        if self.config.dtc_interval > 0:
            items.append((_DTC, self.config.dtc_interval))
        self._schedule.replace(items, self.clock())

    def _ask_all(self, payload: bytes, stop: threading.Event) -> list[tuple[float, int, Answer]] | None:
        """Ask every ECU: functionally, or each configured ECU physically."""
        answers: list[tuple[float, int, Answer]] = []
        for ecu in self.config.ecus or (None,):
            got = self._ask(payload, ecu, stop)
            if got is None:
                return None
            answers += got
        return answers

    def _read_vin(self, stop: threading.Event) -> None:
        for t, key, answer in self._ask_all(request(0x09, 0x02), stop) or ():
            if answer.samples:
                self.vin = answer.samples[0][1]
                self._emit(t, answer)
                return

    # -- polling ------------------------------------------------------------------------

    def _poll_pid(self, pid: int, stop: threading.Event) -> None:
        ecu = self._targets.get(pid)
        if ecu is None:
            return
        payload = request(0x01, pid)
        answers = self._ask(payload, ecu, stop)
        if answers is None:
            return
        if not answers:
            self._unanswered(ecu, payload)
            return
        self._answered(payload)
        for t, key, answer in answers:
            if answer.negative is not None:
                if self._negative(key, payload, answer):
                    self.ecus.get(key, set()).discard(pid)
                    self._targets.pop(pid, None)
                    self._schedule.remove(pid)
            else:
                self._emit(t, answer)

    def _read_dtcs(self, stop: threading.Event) -> None:
        for service, (name, source) in DTC_SERVICES.items():
            payload = request(service)
            answers = self._ask_all(payload, stop)
            if answers is None:
                return
            codes: list[str] = []
            last_t = None
            for t, key, answer in answers:
                if answer.negative is not None:
                    self._negative(key, payload, answer)
                    continue
                codes += [c for c in answer.dtcs or () if c not in codes]
                last_t = t
            if last_t is not None:
                self._answered(payload)
                self.on_sample(last_t, name, ",".join(codes), source)
                self.stats.samples += 1
                if service == 0x03 and codes:
                    self._read_freeze_frame(stop)

    def _read_freeze_frame(self, stop: threading.Event) -> None:
        """Service 02, frame 0: the DTC that stored it and the conditions then, all under the DTC answer's time,
        so that a stored fault code comes with what the car was doing when it was set."""
        for t, key, answer in self._ask_all(request(0x02, FREEZE_DTC_PID, 0), stop) or ():
            if answer.negative is not None or not answer.dtcs:
                continue
            bitmap = self._ask(request(0x02, 0x00, 0), key, stop) or []
            supported = next((a.supported for _, _, a in bitmap if a.supported is not None), set())
            self._emit(t, answer)
            for pid in FREEZE_PIDS:
                if pid in supported:
                    for _, _, value in self._ask(request(0x02, pid, 0), key, stop) or ():
                        if value.negative is None:
                            self._emit(t, value)
            return


def pid_intervals(names: Iterable[tuple[str, float]]) -> dict[int, float]:
    """PID intervals from (sample name, interval) pairs, e.g. from the owner's policy:
    ``{"Vehicle.Speed": 1.0}`` polls PID 0D every second. The shortest interval wins."""
    from carledger.obd.pids import pids_for_name

    out: dict[int, float] = {}
    for name, interval in names:
        for pid in pids_for_name(name):
            out[pid] = min(interval, out.get(pid, interval))
    return out
