"""ECUs: encode the shared vehicle state into the frames of a DBC.

Every message of the DBC is sent by the ECU named as its transmitter, every
`GenMsgCycleTime` milliseconds, encoded with cantools from the current
`VehicleState`. Signals are filled by name from `SIGNAL_SOURCES` (a signal the
table does not know is sent as 0, clamped into its range), so another DBC that
reuses these signal names works too.

Protected messages (the ones with signals named `Counter` and `Checksum`)
carry a rolling counter (+1 per frame, wrapping at the signal's maximum) and a
checksum byte: CRC-8/SAE-J1850 (polynomial 0x1D, initial value 0xFF, final
XOR 0xFF, not reflected; check("123456789") = 0x4B) over the identifier, little
endian (2 bytes for 11-bit identifiers, 4 for 29-bit), followed by every
payload byte except the checksum byte itself.

Multiplexed messages send one page per frame, cycling through the
multiplexer values in ascending order.

Fault injection: `SilentEcu` (an ECU stops sending), `MalformedFrame` (one
frame with a wrong DLC), `UnknownIdFlood` (frames with identifiers the DBC
does not define). `SimulatedCar` applies them while scheduling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .model import IGNITION_CODES, VehicleState

# -- checksum -------------------------------------------------------------------


def _crc8_table(poly: int = 0x1D) -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return table


_CRC8 = _crc8_table()


def crc8_sae_j1850(data: bytes) -> int:
    """CRC-8/SAE-J1850: poly 0x1D, init 0xFF, xorout 0xFF, no reflection."""
    crc = 0xFF
    for b in data:
        crc = _CRC8[crc ^ b]
    return crc ^ 0xFF


def frame_checksum(arbitration_id: int, data: bytes, checksum_byte: int, is_extended_id: bool = False) -> int:
    """The checksum byte of a protected frame (see the module docstring)."""
    ident = arbitration_id.to_bytes(4 if is_extended_id else 2, "little")
    return crc8_sae_j1850(ident + data[:checksum_byte] + data[checksum_byte + 1 :])


# -- where each signal's value comes from -----------------------------------------

SIGNAL_SOURCES: dict[str, Callable[[VehicleState], float]] = {
    # ACU_STATUS
    "DriverAirbagDeployed": lambda s: s.driver_airbag_deployed,
    "PassengerAirbagDeployed": lambda s: s.passenger_airbag_deployed,
    "DriverBeltLatched": lambda s: s.driver_belted,
    "PassengerBeltLatched": lambda s: s.passenger_belted,
    "PassengerSeatOccupied": lambda s: s.passenger_present,
    "CrashDetected": lambda s: s.crash_detected,
    "AirbagWarningLamp": lambda s: s.airbag_lamp,
    # ABS_SPEED
    "VehicleSpeed": lambda s: s.speed_kmh,
    "VehicleStandstill": lambda s: s.speed_kmh <= 0.0,
    # ECM_ENGINE
    "EngineSpeed": lambda s: s.engine_rpm,
    "EngineTorque": lambda s: s.engine_torque,
    "AcceleratorPedal": lambda s: s.accel_pedal,
    "EngineRunning": lambda s: s.engine_running,
    # ABS_BRAKE
    "BrakePedalPosition": lambda s: s.brake_pedal,
    "BrakeSwitch": lambda s: s.brake_switch,
    "AbsActive": lambda s: s.abs_active,
    "BrakePressure": lambda s: s.brake_pressure,
    # EPS_STEERING
    "SteeringWheelAngle": lambda s: s.steering_angle,
    "SteeringWheelSpeed": lambda s: s.steering_speed,
    # ABS_ACCEL
    "LongitudinalAccel": lambda s: s.accel_long,
    "LateralAccel": lambda s: s.accel_lat,
    "YawRate": lambda s: s.yaw_rate,
    # TCM_GEAR
    "CurrentGear": lambda s: s.gear,
    "SelectedGear": lambda s: s.selected_gear,
    "ShiftInProgress": lambda s: s.shift_in_progress,
    "TorqueConverterLocked": lambda s: s.converter_locked,
    # BCM_STATUS
    "IgnitionState": lambda s: IGNITION_CODES[s.ignition],
    "BatteryVoltage": lambda s: s.battery_voltage,
    # ECM_TEMPS
    "CoolantTemp": lambda s: s.coolant_temp,
    "OilTemp": lambda s: s.oil_temp,
    "IntakeAirTemp": lambda s: s.intake_temp,
    # ECM_FUEL
    "FuelLevel": lambda s: s.fuel_level,
    "FuelRate": lambda s: s.fuel_rate,
    # BCM_ODOMETER
    "Odometer": lambda s: s.odometer_km,
    # GPS_COURSE
    "Heading": lambda s: s.heading,
    "GpsSpeed": lambda s: s.gps_speed,
    "Satellites": lambda s: s.gps_satellites,
    "FixType": lambda s: s.gps_fix,
    "Altitude": lambda s: s.altitude,
    # ECM_STATUS (multiplexed)
    "EngineHours": lambda s: s.engine_hours,
    "IntakeManifoldPressure": lambda s: s.map_kpa,
    "EngineLoad": lambda s: s.engine_load,
    "ThrottlePosition": lambda s: s.throttle,
    "AmbientAirTemp": lambda s: s.ambient_temp,
    "BarometricPressure": lambda s: s.baro_kpa,
    # GPS_POSITION
    "Latitude": lambda s: s.lat,
    "Longitude": lambda s: s.lon,
}

COUNTER = "Counter"
CHECKSUM = "Checksum"


class TxMessage:
    """One cyclic message of an ECU: encodes the state into a payload."""

    def __init__(self, message, ecu: str, offset_us: int):
        self.message = message
        self.name: str = message.name
        self.ecu = ecu
        self.arbitration_id: int = message.frame_id
        self.is_extended_id: bool = message.is_extended_frame
        self.length: int = message.length
        if not message.cycle_time:
            raise ValueError(f"message {message.name} has no GenMsgCycleTime")
        self.cycle_us: int = int(message.cycle_time) * 1000
        self.offset_us = offset_us
        self._counter = 0
        self._page = 0
        signals = {s.name: s for s in message.signals}
        self._counter_max = None
        if COUNTER in signals:
            sig = signals[COUNTER]
            self._counter_max = int(sig.maximum) if sig.maximum is not None else (1 << sig.length) - 1
        self.checksum_byte: int | None = None
        if CHECKSUM in signals:
            sig = signals[CHECKSUM]
            if sig.length != 8 or sig.start % 8 != 0 or sig.byte_order != "little_endian":
                raise ValueError(f"{message.name}.{CHECKSUM} must be one whole byte")
            self.checksum_byte = sig.start // 8
        mux = [s for s in message.signals if s.is_multiplexer]
        self._mux_name = mux[0].name if mux else None
        pages: set[int] = set()
        for s in message.signals:
            if s.multiplexer_ids:
                pages.update(s.multiplexer_ids)
        self._pages = sorted(pages)
        # per page: list of (signal name, source, minimum, maximum, is_integer)
        self._fillers: dict[int | None, list] = {}
        for page in self._pages or [None]:
            fill = []
            for s in message.signals:
                if s.name in (COUNTER, CHECKSUM) or s.is_multiplexer:
                    continue
                if page is not None and s.multiplexer_ids and page not in s.multiplexer_ids:
                    continue
                lo = s.minimum
                hi = s.maximum
                integer = not s.is_float and s.scale == 1 and s.offset == 0
                fill.append((s.name, SIGNAL_SOURCES.get(s.name), lo, hi, integer))
            self._fillers[page] = fill

    def payload(self, state: VehicleState) -> bytes:
        page = None
        values: dict[str, float] = {}
        if self._pages:
            page = self._pages[self._page]
            self._page = (self._page + 1) % len(self._pages)
            values[self._mux_name] = page
        for name, source, lo, hi, integer in self._fillers[page]:
            v = float(source(state)) if source is not None else 0.0
            if lo is not None and v < lo:
                v = lo
            if hi is not None and v > hi:
                v = hi
            values[name] = int(round(v)) if integer else v
        if self._counter_max is not None:
            values[COUNTER] = self._counter
            self._counter = 0 if self._counter >= self._counter_max else self._counter + 1
        if self.checksum_byte is not None:
            values[CHECKSUM] = 0
        data = self.message.encode(values, scaling=True, padding=False, strict=False)
        if self.checksum_byte is not None:
            buf = bytearray(data)
            buf[self.checksum_byte] = frame_checksum(self.arbitration_id, data, self.checksum_byte, self.is_extended_id)
            data = bytes(buf)
        return data


@dataclass
class Ecu:
    name: str
    messages: list[TxMessage]


def build_ecus(db) -> list[Ecu]:
    """One `Ecu` per transmitting node of a cantools database, in DBC order.

    Messages are phase-shifted within their cycle (1.37 ms apart) so that the
    fast ones do not all fall on the same instant. Messages without a cycle
    time are not sent.
    """
    ecus: dict[str, Ecu] = {}
    for i, msg in enumerate(m for m in db.messages if m.cycle_time):
        sender = msg.senders[0] if msg.senders else "UNKNOWN"
        cycle_us = int(msg.cycle_time) * 1000
        offset = ((i + 1) * 1370) % max(1, cycle_us - 1000)
        ecus.setdefault(sender, Ecu(sender, [])).messages.append(TxMessage(msg, sender, offset))
    return list(ecus.values())


# -- fault injection ----------------------------------------------------------------


@dataclass(frozen=True)
class SilentEcu:
    """The ECU sends nothing from `start` to `end` (seconds since start of drive)."""

    ecu: str
    start: float = 0.0
    end: float = math.inf


@dataclass(frozen=True)
class MalformedFrame:
    """One extra frame of `message` at time `at` whose DLC is wrong: the payload
    is cut to `dlc` bytes (or zero-padded when `dlc` is longer). Default: 3 bytes short."""

    message: str
    at: float
    dlc: int | None = None


@dataclass(frozen=True)
class UnknownIdFlood:
    """Frames with identifiers the DBC does not define, one every `period` seconds
    from `start` to `end`, random payloads. `ids` defaults to the free identifiers
    in 0x600-0x6FF."""

    start: float = 0.0
    end: float = math.inf
    period: float = 0.001
    ids: tuple[int, ...] = ()
    is_extended_id: bool = False


Fault = SilentEcu | MalformedFrame | UnknownIdFlood
