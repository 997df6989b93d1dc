"""The simulated car: drive model + ECUs + fault injection, as a stream of CAN frames."""

from __future__ import annotations

import heapq
import math
import random
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import can
import cantools

from .ecus import Fault, MalformedFrame, SilentEcu, TxMessage, UnknownIdFlood, build_ecus
from .model import DriveModel, VehicleState
from .pacing import send_paced
from .scenarios import Scenario, get_scenario

DEFAULT_DBC = str(Path(__file__).resolve().parent.parent / "dbc" / "carledger_demo.dbc")


def default_dbc_path() -> str:
    """Path of the shipped demo DBC (installed package data, or the source tree)."""
    try:
        from carledger.dbc import path

        p = path("carledger_demo.dbc")
        if Path(p).exists():
            return p
    except ImportError:  # pragma: no cover - carledger not installed
        pass
    return DEFAULT_DBC


_DB_CACHE: dict[str, cantools.database.can.Database] = {}


def load_database(dbc=None) -> cantools.database.can.Database:
    """A cantools database from a path (cached per path), an existing database, or the demo DBC."""
    if dbc is None:
        dbc = default_dbc_path()
    if isinstance(dbc, cantools.database.can.Database):
        return dbc
    key = str(Path(dbc).resolve())
    db = _DB_CACHE.get(key)
    if db is None:
        try:
            db = cantools.database.load_file(key)
        except (OSError, cantools.database.Error, ValueError) as exc:
            raise ValueError(f"cannot load DBC {dbc}: {exc}") from None
        if not isinstance(db, cantools.database.can.Database):
            raise ValueError(f"{dbc} is not a CAN database")
        _DB_CACHE[key] = db
    return db


_FLOOD = object()


class SimulatedCar:
    """A car on a CAN bus: frames of a DBC at their cycle times from one drive model.

    scenario: a name from `scenarios.SCENARIOS` ("city", "crash", ...) or a `Scenario`.
    seed: everything random (route, driver, initial temperatures and fuel,
          timestamp jitter, flood payloads) follows from it.
    dbc: path or cantools database; default: the shipped demo DBC.
    duration: seconds of driving (default: the scenario's).
    start_time: timestamp of the drive's t = 0 (POSIX seconds; default 0.0).
    channel: the `channel` set on every frame (None by default).
    faults: `SilentEcu`, `MalformedFrame`, `UnknownIdFlood` instances.
    jitter_us: each frame is sent 0..jitter_us microseconds after its nominal time.
    dt: model step in seconds.

    Frame timestamps are start_time + sim seconds, rounded to microseconds
    (like SocketCAN), so they survive a candump log round trip unchanged.
    """

    def __init__(
        self,
        scenario: "str | Scenario" = "city",
        seed: int = 0,
        dbc=None,
        duration: float | None = None,
        start_time: float = 0.0,
        channel=None,
        faults: Iterable[Fault] = (),
        jitter_us: int = 100,
        dt: float = 0.01,
    ):
        self.scenario = get_scenario(scenario)
        self.seed = int(seed)
        self.duration = float(self.scenario.default_duration if duration is None else duration)
        if not (self.duration > 0 and math.isfinite(self.duration)):
            raise ValueError(f"duration must be a positive number of seconds, not {duration!r}")
        self.start_time = float(start_time)
        self.channel = channel
        self.db = load_database(dbc)
        self.dt = float(dt)
        self._dt_us = int(round(self.dt * 1e6))
        if self._dt_us <= 0:
            raise ValueError("dt must be positive")
        self.jitter_us = max(0, int(jitter_us))
        self.faults = tuple(faults)
        self.ecus = build_ecus(self.db)  # for inspection; frames() builds its own
        names = {m.name for e in self.ecus for m in e.messages}
        ecu_names = {e.name for e in self.ecus}
        for f in self.faults:
            if isinstance(f, SilentEcu) and f.ecu not in ecu_names:
                raise ValueError(f"unknown ECU {f.ecu!r} (known: {', '.join(sorted(ecu_names))})")
            if isinstance(f, MalformedFrame) and f.message not in names:
                raise ValueError(f"unknown message {f.message!r}")
            if isinstance(f, MalformedFrame) and f.dlc is not None and not 0 <= f.dlc <= 8:
                raise ValueError("a malformed frame's DLC must be 0..8")
            if isinstance(f, UnknownIdFlood) and not f.period > 0:
                raise ValueError("flood period must be positive")
        self._history: list[VehicleState] | None = None

    # -- the drive model ------------------------------------------------------------

    def model(self) -> DriveModel:
        """A fresh drive model for this car (same seed, same drive)."""
        return DriveModel(self.scenario, self.seed, self.dt, self.duration)

    @property
    def n_steps(self) -> int:
        end_us = int(round(self.duration * 1e6))
        return (end_us - 1) // self._dt_us + 1

    def states(self) -> Iterator[VehicleState]:
        """Every model state of the drive, at t = 0, dt, 2 dt, ... < duration."""
        m = self.model()
        yield m.state
        for _ in range(self.n_steps - 1):
            yield m.step()

    def history(self) -> list[VehicleState]:
        """All states of the drive (computed once, then cached)."""
        if self._history is None:
            self._history = list(self.states())
        return self._history

    def state_at(self, t: float) -> VehicleState:
        """The state the ECUs encoded into a frame sent at t seconds since the start.

        For a frame: `car.state_at(msg.timestamp - car.start_time)`.
        """
        h = self.history()
        i = int(round(t * 1e6)) // self._dt_us
        return h[min(max(i, 0), len(h) - 1)]

    # -- frames ----------------------------------------------------------------------

    def frames(self) -> Iterator[can.Message]:
        """All frames of the drive in timestamp order, as fast as they can be made."""
        end_us = int(round(self.duration * 1e6))
        dt_us = self._dt_us
        model = self.model()
        state = model.state
        idx = 0
        bus_rng = random.Random(f"{self.seed}/bus")
        fault_rng = random.Random(f"{self.seed}/faults")
        jitter = self.jitter_us
        ecus = build_ecus(self.db)
        by_name: dict[str, TxMessage] = {m.name: m for e in ecus for m in e.messages}
        silent: dict[str, list[tuple[int, float]]] = {}
        heap: list = []
        seq = 0
        for e in ecus:
            for tx in e.messages:
                t0 = tx.offset_us
                heap.append((t0 + (bus_rng.randint(0, jitter) if jitter else 0), seq, tx, t0))
                seq += 1
        for f in self.faults:
            if isinstance(f, SilentEcu):
                silent.setdefault(f.ecu, []).append((int(round(f.start * 1e6)), f.end * 1e6))
            elif isinstance(f, MalformedFrame):
                t0 = int(round(f.at * 1e6))
                heap.append((t0, seq, f, t0))
                seq += 1
            elif isinstance(f, UnknownIdFlood):
                ids = f.ids or tuple(
                    i for i in range(0x600, 0x700) if i not in {m.frame_id for m in self.db.messages}
                )
                t0 = int(round(f.start * 1e6))
                heap.append((t0, seq, (_FLOOD, f, ids, max(1, int(round(f.period * 1e6)))), t0))
                seq += 1
        heapq.heapify(heap)
        start = self.start_time
        channel = self.channel

        def is_silent(ecu: str, t_us: int) -> bool:
            return any(a <= t_us < b for a, b in silent.get(ecu, ()))

        while heap:
            t_us, _, item, nominal = heapq.heappop(heap)
            if t_us >= end_us:
                continue
            want = t_us // dt_us
            while idx < want:
                state = model.step()
                idx += 1
            ts = round(start + t_us / 1e6, 6)
            if isinstance(item, TxMessage):
                nxt = nominal + item.cycle_us
                heapq.heappush(heap, (nxt + (bus_rng.randint(0, jitter) if jitter else 0), seq, item, nxt))
                seq += 1
                if silent and is_silent(item.ecu, t_us):
                    continue
                data = item.payload(state)
                yield can.Message(
                    timestamp=ts,
                    arbitration_id=item.arbitration_id,
                    is_extended_id=item.is_extended_id,
                    data=data,
                    channel=channel,
                )
            elif isinstance(item, MalformedFrame):
                tx = by_name[item.message]
                data = tx.payload(state)
                dlc = item.dlc if item.dlc is not None else max(0, len(data) - 3)
                data = data[:dlc] + bytes(max(0, dlc - len(data)))
                yield can.Message(
                    timestamp=ts,
                    arbitration_id=tx.arbitration_id,
                    is_extended_id=tx.is_extended_id,
                    data=data,
                    channel=channel,
                )
            else:  # flood
                _, f, ids, period_us = item
                if t_us < f.end * 1e6:
                    nxt = nominal + period_us
                    heapq.heappush(heap, (nxt, seq, item, nxt))
                    seq += 1
                    yield can.Message(
                        timestamp=ts,
                        arbitration_id=fault_rng.choice(ids),
                        is_extended_id=f.is_extended_id,
                        data=fault_rng.randbytes(8),
                        channel=channel,
                    )

    def run(self, bus: can.BusABC, realtime_factor: float = 1.0, stop_event: threading.Event | None = None) -> int:
        """Send the drive onto `bus`, paced to sim time / realtime_factor
        (0 or inf: as fast as possible). Returns the number of frames sent."""
        return send_paced(self.frames(), bus, realtime_factor, stop_event, t0=self.start_time)
