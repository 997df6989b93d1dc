"""An OBD-II ECU on the simulated bus: answers J1979 requests from the drive model's state.

It listens on a python-can bus for functional (0x7DF, or 0x18DB33F1 for
29-bit) and physical requests (0x7E0+i, or 0x18DAxxF1) and answers from its
own identifier (0x7E8+i, or 0x18DAF1xx) through can-isotp, so multi-frame
answers (the VIN, long DTC lists) wait for the tester's flow control as ISO
15765-2 says.

What it answers:

- service 01: the PIDs in `SUPPORTED` (load, coolant, MAP, rpm, speed,
  intake temperature, MAF, throttle, run time, fuel level, distances,
  barometric pressure, module voltage, ambient, pedal, oil temperature, fuel
  rate, odometer ...) encoded here with the J1979 formulas, written out
  independently of the agent's decoder, plus the supported-PID bitmaps
  01 00, 01 20, ... up to the highest supported PID; up to six PIDs per request;
- services 03, 07 and 0A: the stored, pending and permanent DTCs
  (`inject_dtc`); service 01 PID 01 reports the MIL and the stored count;
- service 02 (freeze frame 0): the first stored DTC and the load, coolant,
  rpm, speed and throttle of the moment it was injected;
- service 09: 00 (supported info types), 02 (VIN, multi-frame), 0A (ECU name).

Unsupported PIDs are not answered to functional requests (J1979) and get
7F 01 31 (request out of range) physically; an unknown service 7F xx 11, a
request without its PID 7F xx 12. Every request received is kept in
`requests` so tests can check what a tester sent.

`mode`, changeable while running: "normal"; "slow" (answers after `delay`
seconds); "pending" (7F xx 78 at once, the answer after `delay`); "silent"
(no answer at all, like an ECU with the ignition off).
"""

from __future__ import annotations

import abc
import collections
import threading
import time
from collections.abc import Callable

import can
import isotp

from .model import VehicleState

MODES = ("normal", "slow", "pending", "silent")
SUPPORTED = frozenset({
    0x01, 0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x0F, 0x10, 0x11, 0x1C, 0x1F, 0x21, 0x2F, 0x31, 0x33,
    0x42, 0x46, 0x49, 0x51, 0x5C, 0x5E, 0xA6,
})
FREEZE_SUPPORTED = frozenset({0x02, 0x04, 0x05, 0x0C, 0x0D, 0x11})  # service 02: kept with the first stored DTC
DEFAULT_VIN = "WCLDEM0CAR0000047"
_EFF_FUNCTIONAL = 0x18DB33F1
_TESTER = 0xF1
_PETROL_DENSITY = 0.745  # kg/l
_STOICHIOMETRIC = 14.7


def _u(value: float, size: int = 1) -> bytes:
    top = (1 << (8 * size)) - 1
    return min(top, max(0, int(round(value)))).to_bytes(size, "big")


def _pct(value: float) -> bytes:
    return _u(value * 255.0 / 100.0)


def _pid_bytes(pid: int, s: VehicleState, dtcs: int, mil_km: float, clear_km: float) -> bytes:
    """J1979 service 01 data bytes of `pid` (after the PID byte) for state `s`."""
    if pid == 0x01:
        return bytes((0x80 * (dtcs > 0) | min(dtcs, 0x7F), 0x07, 0xE5, 0x00))
    if pid == 0x04:
        return _pct(s.engine_load)
    if pid in (0x05, 0x0F, 0x46, 0x5C):
        celsius = {0x05: s.coolant_temp, 0x0F: s.intake_temp, 0x46: s.ambient_temp, 0x5C: s.oil_temp}[pid]
        return _u(celsius + 40.0)
    if pid == 0x0B:
        return _u(s.map_kpa)
    if pid == 0x0C:
        return _u(s.engine_rpm * 4.0, 2)
    if pid == 0x0D:
        return _u(s.speed_kmh)
    if pid == 0x10:  # air mass from the fuel burnt at the stoichiometric ratio
        return _u(s.fuel_rate * _PETROL_DENSITY * _STOICHIOMETRIC / 3.6 * 100.0, 2)
    if pid == 0x11:
        return _pct(s.throttle)
    if pid == 0x1C:
        return b"\x06"  # EOBD
    if pid == 0x1F:
        return _u(max(0.0, s.t - 1.2), 2)
    if pid == 0x21:
        return _u(mil_km, 2)
    if pid == 0x2F:
        return _pct(s.fuel_level)
    if pid == 0x31:
        return _u(clear_km, 2)
    if pid == 0x33:
        return _u(s.baro_kpa)
    if pid == 0x42:
        return _u(s.battery_voltage * 1000.0, 2)
    if pid == 0x49:
        return _pct(s.accel_pedal)
    if pid == 0x51:
        return b"\x01"  # gasoline
    if pid == 0x5E:
        return _u(s.fuel_rate * 20.0, 2)
    if pid == 0xA6:
        return _u(s.odometer_km * 10.0, 4)
    raise KeyError(pid)


def _bitmap(base: int, supported: set[int]) -> bytes:
    bits = 0
    for pid in supported:
        if base < pid <= base + 32:
            bits |= 1 << (32 - (pid - base))
    return bits.to_bytes(4, "big")


def _dtc_bytes(code: str) -> bytes:
    systems = "PCBU"
    text = code.strip().upper()
    try:
        if len(text) != 5 or text[0] not in systems or text[1] not in "0123":
            raise ValueError
        value = (systems.index(text[0]) << 14) | (int(text[1]) << 12) | int(text[2:], 16)
    except ValueError:
        raise ValueError(f"{code!r} is not a DTC like P0301") from None
    return value.to_bytes(2, "big")


class DriveClock:
    """The state of `car` (a SimulatedCar) now, its drive having started at `start_time`
    (POSIX, default now) and running `speed` times faster than the wall clock."""

    def __init__(self, car, speed: float = 1.0, start_time: float | None = None):
        self.car, self.speed = car, speed
        self.start_time = time.time() if start_time is None else start_time
        self.held: float | None = None

    def sim_time(self, t: float) -> float:
        """Drive seconds at POSIX time `t` (a frame's timestamp)."""
        return (t - self.start_time) * self.speed

    def hold(self, sim_t: float | None) -> None:
        """Stop the clock at drive second `sim_t` (None: let it run again), so that what
        an ECU answers can be compared with one known state."""
        self.held = sim_t

    def __call__(self) -> VehicleState:
        held = self.held
        return self.car.state_at(self.sim_time(time.time()) if held is None else held)


class Background(abc.ABC):
    """Something of the simulated car that runs in its own thread: `start()`, `stop()`, or `with`."""

    thread_name = "carledger-sim"
    _stop: threading.Event
    _thread: threading.Thread | None = None

    @abc.abstractmethod
    def _run(self) -> None:
        """The thread's loop; each subclass (the responder, the ELM327 emulator) defines it."""

    def _closed(self) -> None:
        """Release what the thread used, after it ended."""

    def start(self):
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._closed()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ObdResponder(Background):
    """One OBD-II ECU on `bus`, answering from `state()`; `start()` runs it in its own thread.

    response_id: the ECU's answer identifier: 0x7E8-0x7EF (11-bit) or
    0x18DAF1xx (29-bit, then `extended=True`).
    """

    def __init__(
        self,
        bus: can.BusABC,
        state: Callable[[], VehicleState],
        *,
        response_id: int = 0x7E8,
        extended: bool = False,
        vin: str = DEFAULT_VIN,
        name: str = "ECM-EngineControl",
        supported: frozenset[int] = SUPPORTED,
        mode: str = "normal",
        delay: float = 0.2,
    ):
        if extended:
            if response_id & 0x1FFFFF00 != 0x18DAF100:
                raise ValueError(f"a 29-bit OBD answer identifier is 0x18DAF1xx, not 0x{response_id:X}")
            address = isotp.Address(isotp.AddressingMode.NormalFixed_29bits,
                                    target_address=_TESTER, source_address=response_id & 0xFF)
            self.functional_id, self.request_id = _EFF_FUNCTIONAL, 0x18DA00F1 | (response_id & 0xFF) << 8
        else:
            if not 0x7E8 <= response_id <= 0x7EF:
                raise ValueError(f"an 11-bit OBD answer identifier is 0x7E8-0x7EF, not 0x{response_id:X}")
            address = isotp.Address(isotp.AddressingMode.Normal_11bits, txid=response_id, rxid=response_id - 8)
            self.functional_id, self.request_id = 0x7DF, response_id - 8
        if len(vin) != 17:
            raise ValueError("a VIN has 17 characters")
        self.bus, self.state, self.extended = bus, state, extended
        self.response_id, self.vin, self.name = response_id, vin, name
        self.supported = set(supported)
        self.mode, self.delay = mode, delay
        self.dtcs: dict[str, list[str]] = {"stored": [], "pending": [], "permanent": []}
        self.requests: list[tuple[float, bytes, bool]] = []  # (time, payload, functional)
        self._inbox: collections.deque = collections.deque()
        self._layer = isotp.TransportLayerLogic(
            rxfn=self._next_frame, txfn=self._send, address=address,
            params={"tx_padding": 0xAA, "stmin": 0, "blocksize": 0},
        )
        self._due: list[tuple[float, bytes]] = []
        self._mil_at_km: float | None = None
        self._frozen: tuple[str, VehicleState] | None = None  # the first stored DTC and the state it was set in
        self._cleared_at_km: float | None = None
        self._stop = threading.Event()
        self.thread_name = f"obd-responder-{response_id:X}"
        self._lock = threading.Lock()

    # -- control ---------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r} (known: {', '.join(MODES)})")
        self._mode = value

    def inject_dtc(self, code: str, kind: str = "stored") -> None:
        """Add a DTC (``P0301``) to the stored, pending or permanent list."""
        _dtc_bytes(code)  # validates
        if kind not in self.dtcs:
            raise ValueError(f"unknown DTC kind {kind!r} (stored, pending or permanent)")
        with self._lock:
            self.dtcs[kind].append(code.upper())
            if kind == "stored" and self._mil_at_km is None:
                self._frozen = (code.upper(), self.state())
                self._mil_at_km = self._frozen[1].odometer_km

    # -- the ECU -----------------------------------------------------------------------

    def _run(self) -> None:
        layer = self._layer
        while not self._stop.is_set():
            busy = layer.transmitting() or bool(self._due)
            msg = self.bus.recv(0.002 if busy else 0.05)
            while msg is not None:
                self._receive(msg)
                msg = self.bus.recv(0)
            now = time.monotonic()
            for entry in [d for d in self._due if d[0] <= now]:
                self._due.remove(entry)
                layer.send(entry[1])
            layer.process()
            payload = layer.recv()
            while payload is not None:
                self._request(bytes(payload), functional=False)
                payload = layer.recv()

    def _receive(self, msg: can.Message) -> None:
        if msg.is_error_frame or msg.is_remote_frame or msg.is_extended_id != self.extended:
            return
        if msg.arbitration_id == self.functional_id:
            data = bytes(msg.data)
            if data and 1 <= data[0] <= 7 and data[0] < len(data):  # functional requests are single frames
                self._request(data[1:1 + data[0]], functional=True)
        elif msg.arbitration_id == self.request_id:
            self._inbox.append(isotp.CanMessage(msg.arbitration_id, msg.dlc, bytes(msg.data), msg.is_extended_id))

    def _next_frame(self):
        return self._inbox.popleft() if self._inbox else None

    def _send(self, frame: isotp.CanMessage) -> None:
        self.bus.send(can.Message(arbitration_id=frame.arbitration_id, data=frame.data,
                                  is_extended_id=frame.is_extended_id))

    def _request(self, payload: bytes, functional: bool) -> None:
        self.requests.append((time.time(), payload, functional))
        if self._mode == "silent" or not payload:
            return
        answer = self.answer(payload, functional)
        if answer is None:
            return
        now = time.monotonic()
        if self._mode == "normal":
            self._layer.send(answer)
        elif self._mode == "slow":
            self._due.append((now + self.delay, answer))
        else:  # pending
            self._layer.send(bytes((0x7F, payload[0], 0x78)))
            self._due.append((now + self.delay, answer))

    def answer(self, payload: bytes, functional: bool = False) -> bytes | None:
        """The answer to one request payload (None: stay quiet)."""
        service, args = payload[0], payload[1:]
        if service == 0x01:
            return self._current_data(args, functional)
        if service == 0x02:
            return self._freeze_frame(args, functional)
        if service in (0x03, 0x07, 0x0A):
            kind = {0x03: "stored", 0x07: "pending", 0x0A: "permanent"}[service]
            with self._lock:
                codes = list(self.dtcs[kind])
            return bytes((service + 0x40, len(codes))) + b"".join(_dtc_bytes(c) for c in codes)
        if service == 0x09:
            return self._vehicle_info(args, functional)
        return None if functional else bytes((0x7F, service, 0x11))

    def _current_data(self, pids: bytes, functional: bool) -> bytes | None:
        if not 1 <= len(pids) <= 6:
            return None if functional else b"\x7f\x01\x12"
        state = self.state()
        with self._lock:
            stored = len(self.dtcs["stored"])
            mil_km = state.odometer_km - self._mil_at_km if self._mil_at_km is not None else 0.0
        if self._cleared_at_km is None:
            self._cleared_at_km = state.odometer_km - 1234.0  # DTCs last cleared at the last service
        bitmaps = {b for b in range(0, max(self.supported) + 1, 0x20)}
        records = b""
        for pid in pids:
            if pid in bitmaps:
                records += bytes((pid,)) + _bitmap(pid, self.supported | {b for b in bitmaps if b})
            elif pid in self.supported:
                records += bytes((pid,)) + _pid_bytes(pid, state, stored, mil_km, state.odometer_km - self._cleared_at_km)
        if not records:
            return None if functional else b"\x7f\x01\x31"
        return b"\x41" + records

    def _freeze_frame(self, args: bytes, functional: bool) -> bytes | None:
        """Service 02, frame 0 only: 02 the DTC, 00 the bitmap, else a PID of the state frozen with the DTC."""
        if len(args) != 2 or args[1] != 0:
            return None if functional else b"\x7f\x02\x12"
        pid = args[0]
        with self._lock:
            frozen = self._frozen
        if frozen is None:
            return b"\x42\x02\x00\x00\x00" if pid == 0x02 else (None if functional else b"\x7f\x02\x31")
        code, state = frozen
        if pid == 0x00:
            return b"\x42\x00\x00" + _bitmap(0x00, FREEZE_SUPPORTED)
        if pid == 0x02:
            return b"\x42\x02\x00" + _dtc_bytes(code)
        if pid in FREEZE_SUPPORTED:
            return bytes((0x42, pid, 0)) + _pid_bytes(pid, state, 1, 0.0, 0.0)
        return None if functional else b"\x7f\x02\x31"

    def _vehicle_info(self, args: bytes, functional: bool) -> bytes | None:
        if len(args) != 1:
            return None if functional else b"\x7f\x09\x12"
        info = args[0]
        if info == 0x00:
            return b"\x49\x00" + _bitmap(0x00, {0x02, 0x0A})
        if info == 0x02:
            return b"\x49\x02\x01" + self.vin.encode("ascii")
        if info == 0x0A:
            return b"\x49\x0a\x01" + self.name.encode("ascii")[:20].ljust(20, b"\x00")
        return None if functional else b"\x7f\x09\x31"

