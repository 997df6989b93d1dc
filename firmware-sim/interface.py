"""python-can interface plug-in: the simulated car as a bus.

    bus = can.Bus(interface="carledger-sim", channel="city", seed=1, speed=10.0)

`channel` is the scenario name. Keyword arguments (strings are accepted, as
they come from python-can config files):

- seed (int, default 0), duration (seconds, default the scenario's),
- speed: time-warp factor, default 1.0; 0 or "inf" = as fast as possible,
- start_time: POSIX timestamp of the drive's start (default: time.time() when
  the bus is opened),
- dbc: path of another DBC (default: the shipped demo DBC),
- jitter_us, faults (a list of carledger_sim.ecus fault objects).

Timestamps: `start_time + sim seconds`. They are realistic POSIX times that
advance with the simulated drive, so durations measured from timestamps are
physical ones (a harsh brake lasts ~3 s of timestamps whatever the speed).
With speed > 1 they run ahead of the wall clock by that factor; recv()
releases each frame at wall time `open + sim seconds / speed`.

When the drive ends the bus goes quiet: recv(timeout) returns None after the
timeout. send() refuses (the car is read-only for carledger): it records the
frame in `bus.sent` and raises can.CanOperationError. Software filtering by
`can_filters` is done by BusABC.
"""

from __future__ import annotations

import math
import threading
import time

import can

from .car import SimulatedCar
from .scenarios import SCENARIOS


def _number(name: str, value, kind=float):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"carledger-sim: {name} must be a number, not {value!r}") from None


class SimBus(can.BusABC):
    """A python-can bus whose traffic is a simulated car's drive."""

    def __init__(
        self,
        channel=None,
        can_filters=None,
        seed=0,
        speed=1.0,
        duration=None,
        start_time=None,
        dbc=None,
        jitter_us=100,
        faults=(),
        **kwargs,
    ):
        scenario = channel if channel not in (None, "") else "city"
        if scenario not in SCENARIOS:
            raise can.CanInitializationError(
                f"carledger-sim: unknown scenario {scenario!r} as channel (known: {', '.join(SCENARIOS)})"
            )
        seed = _number("seed", seed, int)
        speed = _number("speed", speed)
        if speed < 0 or math.isnan(speed):
            raise ValueError("carledger-sim: speed must be >= 0 (0 or inf: as fast as possible)")
        if duration is not None:
            duration = _number("duration", duration)
        self.speed = speed
        self._paced = 0 < speed < math.inf
        self.start_time = time.time() if start_time is None else _number("start_time", start_time)
        self.car = SimulatedCar(
            scenario,
            seed=seed,
            dbc=dbc,
            duration=duration,
            start_time=self.start_time,
            channel=scenario,
            faults=faults,
            jitter_us=_number("jitter_us", jitter_us, int),
        )
        self.sent: list[can.Message] = []
        self.channel_info = f"carledger-sim {scenario} seed={seed} speed={speed:g}"
        self._frames = self.car.frames()
        self._next: can.Message | None = None
        self._ended = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._mono0 = time.monotonic()
        super().__init__(channel=scenario, can_filters=can_filters, **kwargs)

    def _peek(self) -> can.Message | None:
        if self._next is None and not self._ended:
            self._next = next(self._frames, None)
            if self._next is None:
                self._ended = True
        return self._next

    @property
    def finished(self) -> bool:
        """True once every frame of the drive has been received."""
        return self._ended and self._next is None

    def _recv_internal(self, timeout):
        if self._closed.is_set():
            raise can.CanOperationError("carledger-sim bus is shut down")
        with self._lock:
            msg = self._peek()
            if msg is None:  # the drive is over: quiet bus
                if timeout is None:
                    self._closed.wait()
                else:
                    self._closed.wait(max(0.0, timeout))
                return None, False
            if self._paced:
                delay = self._mono0 + (msg.timestamp - self.start_time) / self.speed - time.monotonic()
                if delay > 0:
                    if timeout is not None and delay > timeout:
                        self._closed.wait(max(0.0, timeout))
                        return None, False
                    if self._closed.wait(delay):
                        return None, False
            self._next = None
            return msg, False

    def send(self, msg: can.Message, timeout=None) -> None:
        self.sent.append(msg)
        raise can.CanOperationError(
            "carledger-sim: the simulated car is read-only, it does not accept frames "
            f"(refused 0x{msg.arbitration_id:X})"
        )

    def shutdown(self) -> None:
        self._closed.set()
        super().shutdown()

    @staticmethod
    def _detect_available_configs():
        return [{"interface": "carledger-sim", "channel": name} for name in SCENARIOS]
