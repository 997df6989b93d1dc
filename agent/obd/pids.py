"""SAE J1979 service 01 (current data): the standard PIDs, how to decode them, what they are called.

Each PID carries one or more signals, each a field of the data bytes that
follow the PID byte (A = byte 0, B = byte 1, ...) read as an unsigned (or
two's-complement) integer and scaled linearly: ``value = raw * scale + offset``.
Bit fields take ``width`` bits at ``shift`` of that integer. This one shape
covers every formula of the J1979 table that has a physical value; status
words and enumerations come out as integers.

A signal's sample name is its COVESA VSS path where VSS has one (the same
paths the demo DBC's CAN signals use, so OBD and CAN speed are both
``Vehicle.Speed``), else ``OBD.<NAME>`` with the python-OBD command name.
Its source is ``OBD.01.<PID>`` (hex).

The supported-PID bitmaps (PIDs 00, 20, 40, ... E0) say which of the next 32
PIDs an ECU answers: bit 7 of byte A is PID base+1, bit 0 of byte D is
base+32 (itself the next bitmap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

__all__ = [
    "BITMAP_PIDS", "Pid", "PidSignal", "PIDS", "PidError", "decode_pid", "pid_by_name",
    "pids_for_name", "supported_from_bitmap", "bitmap_from_supported",
]

BITMAP_PIDS = (0x00, 0x20, 0x40, 0x60, 0x80, 0xA0, 0xC0, 0xE0)


class PidError(ValueError):
    """Data that cannot be a valid answer for a PID (too short, unknown PID); str() is the reason."""


@dataclass(frozen=True)
class PidSignal:
    """One value in a PID's data: bytes [byte, byte+size), optionally a bit field of them."""

    name: str  # python-OBD style, e.g. "SPEED"
    vss: str | None
    unit: str
    byte: int
    size: int = 1
    scale: float = 1.0
    offset: float = 0.0
    signed: bool = False
    shift: int = 0
    width: int | None = None  # bit field width; None: the whole field

    @property
    def sample_name(self) -> str:
        return self.vss or f"OBD.{self.name}"

    def decode(self, data: bytes) -> int | float:
        raw = int.from_bytes(data[self.byte:self.byte + self.size], "big", signed=self.signed)
        if self.width is not None:
            return (raw >> self.shift) & ((1 << self.width) - 1)
        if self.scale == 1.0 and self.offset == 0.0:
            return raw
        return raw * self.scale + self.offset


@dataclass(frozen=True)
class Pid:
    pid: int
    name: str
    signals: tuple[PidSignal, ...]

    @property
    def length(self) -> int:
        """Data bytes an answer carries after the PID byte."""
        return max(s.byte + s.size for s in self.signals)

    @property
    def source(self) -> str:
        return f"OBD.01.{self.pid:02X}"


_PCT = 100.0 / 255.0  # A*100/255
_TRIM = 100.0 / 128.0  # A*100/128 - 100
_O = "Vehicle.OBD."
_ENGINE = "Vehicle.Powertrain.CombustionEngine."


def _one(pid: int, name: str, vss: str | None, unit: str, size: int = 1, scale: float = 1.0,
         offset: float = 0.0, signed: bool = False) -> Pid:
    return Pid(pid, name, (PidSignal(name, vss, unit, 0, size, scale, offset, signed),))


def _bitmap(pid: int, name: str) -> Pid:
    return Pid(pid, name, (PidSignal(name, None, "", 0, 4),))


def _o2_narrow(pid: int) -> Pid:
    n = pid - 0x13
    bank, sensor = (n - 1) // 4 + 1, (n - 1) % 4 + 1
    name = f"O2_B{bank}S{sensor}"
    return Pid(pid, name, (
        PidSignal(f"{name}_VOLTAGE", f"{_O}O2.Sensor{n}.Voltage", "V", 0, 1, 1 / 200),
        PidSignal(f"{name}_TRIM", f"{_O}O2.Sensor{n}.ShortTermFuelTrim", "%", 1, 1, _TRIM, -100.0),
    ))


def _o2_wide(pid: int, second: str) -> Pid:
    n = (pid & 0x0F) - 3 if pid < 0x30 else pid - 0x33
    name = f"O2_S{n}_WR_{second.upper()}"
    scale, offset, unit = (8 / 65536, 0.0, "V") if second == "Voltage" else (1 / 256, -128.0, "mA")
    return Pid(pid, name, (
        PidSignal(f"{name}_LAMBDA", f"{_O}O2WR.Sensor{n}.Lambda", "", 0, 2, 2 / 65536),
        PidSignal(name, f"{_O}O2WR.Sensor{n}.{second}", unit, 2, 2, scale, offset),
    ))


def _catalyst(pid: int) -> Pid:
    bank, sensor = {0x3C: (1, 1), 0x3D: (2, 1), 0x3E: (1, 2), 0x3F: (2, 2)}[pid]
    return _one(pid, f"CATALYST_TEMP_B{bank}S{sensor}", f"{_O}Catalyst.Bank{bank}.Temperature{sensor}",
                "celsius", 2, 0.1, -40.0)


def _o2_trim(pid: int, name: str, first: str, second: str) -> Pid:
    return Pid(pid, name, (
        PidSignal(name, f"{_O}{first}", "%", 0, 1, _TRIM, -100.0),
        PidSignal(f"{name}_BANK_{second[-1]}", f"{_O}{second}", "%", 1, 1, _TRIM, -100.0),
    ))


_TABLE: list[Pid] = [
    *(_bitmap(p, f"PIDS_{chr(ord('A') + i)}") for i, p in enumerate(BITMAP_PIDS)),
    Pid(0x01, "STATUS", (
        PidSignal("MIL", f"{_O}Status.IsMILOn", "", 0, 1, shift=7, width=1),
        PidSignal("DTC_COUNT", f"{_O}Status.DTCCount", "", 0, 1, shift=0, width=7),
        PidSignal("IGNITION_TYPE", None, "", 1, 1, shift=3, width=1),  # 0 spark, 1 compression
        PidSignal("STATUS", None, "", 0, 4),
    )),
    _one(0x03, "FUEL_STATUS", None, "", 2),
    _one(0x04, "ENGINE_LOAD", f"{_O}EngineLoad", "%", 1, _PCT),
    _one(0x05, "COOLANT_TEMP", f"{_ENGINE}ECT", "celsius", 1, 1.0, -40.0),
    _one(0x06, "SHORT_FUEL_TRIM_1", f"{_O}ShortTermFuelTrim1", "%", 1, _TRIM, -100.0),
    _one(0x07, "LONG_FUEL_TRIM_1", f"{_O}LongTermFuelTrim1", "%", 1, _TRIM, -100.0),
    _one(0x08, "SHORT_FUEL_TRIM_2", f"{_O}ShortTermFuelTrim2", "%", 1, _TRIM, -100.0),
    _one(0x09, "LONG_FUEL_TRIM_2", f"{_O}LongTermFuelTrim2", "%", 1, _TRIM, -100.0),
    _one(0x0A, "FUEL_PRESSURE", f"{_O}FuelPressure", "kPa", 1, 3.0),
    _one(0x0B, "INTAKE_PRESSURE", f"{_ENGINE}MAP", "kPa"),
    _one(0x0C, "RPM", f"{_ENGINE}Speed", "rpm", 2, 0.25),
    _one(0x0D, "SPEED", "Vehicle.Speed", "km/h"),
    _one(0x0E, "TIMING_ADVANCE", f"{_O}TimingAdvance", "degrees", 1, 0.5, -64.0),
    _one(0x0F, "INTAKE_TEMP", f"{_O}IntakeTemp", "celsius", 1, 1.0, -40.0),
    _one(0x10, "MAF", f"{_O}MAF", "g/s", 2, 0.01),
    _one(0x11, "THROTTLE_POS", f"{_O}ThrottlePosition", "%", 1, _PCT),
    _one(0x12, "AIR_STATUS", None, ""),
    _one(0x13, "O2_SENSORS", None, ""),
    *(_o2_narrow(p) for p in range(0x14, 0x1C)),
    _one(0x1C, "OBD_COMPLIANCE", f"{_O}OBDStandards", ""),
    _one(0x1D, "O2_SENSORS_ALT", None, ""),
    Pid(0x1E, "AUX_INPUT_STATUS", (PidSignal("AUX_INPUT_STATUS", f"{_O}IsPTOActive", "", 0, 1, shift=0, width=1),)),
    _one(0x1F, "RUN_TIME", f"{_O}RunTime", "s", 2),
    _one(0x21, "DISTANCE_W_MIL", f"{_O}DistanceWithMIL", "km", 2),
    _one(0x22, "FUEL_RAIL_PRESSURE_VAC", f"{_O}FuelRailPressureVac", "kPa", 2, 0.079),
    _one(0x23, "FUEL_RAIL_PRESSURE_DIRECT", f"{_O}FuelRailPressureDirect", "kPa", 2, 10.0),
    *(_o2_wide(p, "Voltage") for p in range(0x24, 0x2C)),
    _one(0x2C, "COMMANDED_EGR", f"{_O}CommandedEGR", "%", 1, _PCT),
    _one(0x2D, "EGR_ERROR", f"{_O}EGRError", "%", 1, _TRIM, -100.0),
    _one(0x2E, "EVAPORATIVE_PURGE", f"{_O}CommandedEVAP", "%", 1, _PCT),
    _one(0x2F, "FUEL_LEVEL", "Vehicle.Powertrain.FuelSystem.RelativeLevel", "%", 1, _PCT),
    _one(0x30, "WARMUPS_SINCE_DTC_CLEAR", f"{_O}WarmupsSinceDTCClear", ""),
    _one(0x31, "DISTANCE_SINCE_DTC_CLEAR", f"{_O}DistanceSinceDTCClear", "km", 2),
    _one(0x32, "EVAP_VAPOR_PRESSURE", f"{_O}EVAPVaporPressure", "Pa", 2, 0.25, 0.0, True),
    _one(0x33, "BAROMETRIC_PRESSURE", f"{_O}BarometricPressure", "kPa"),
    *(_o2_wide(p, "Current") for p in range(0x34, 0x3C)),
    *(_catalyst(p) for p in range(0x3C, 0x40)),
    _one(0x41, "STATUS_DRIVE_CYCLE", None, "", 4),
    _one(0x42, "CONTROL_MODULE_VOLTAGE", f"{_O}ControlModuleVoltage", "V", 2, 0.001),
    _one(0x43, "ABSOLUTE_LOAD", f"{_O}AbsoluteLoad", "%", 2, _PCT),
    _one(0x44, "COMMANDED_EQUIV_RATIO", f"{_O}CommandedEquivalenceRatio", "", 2, 2 / 65536),
    _one(0x45, "RELATIVE_THROTTLE_POS", f"{_O}RelativeThrottlePosition", "%", 1, _PCT),
    _one(0x46, "AMBIANT_AIR_TEMP", "Vehicle.Exterior.AirTemperature", "celsius", 1, 1.0, -40.0),
    _one(0x47, "THROTTLE_POS_B", f"{_O}ThrottlePositionB", "%", 1, _PCT),
    _one(0x48, "THROTTLE_POS_C", f"{_O}ThrottlePositionC", "%", 1, _PCT),
    _one(0x49, "ACCELERATOR_POS_D", f"{_O}AcceleratorPositionD", "%", 1, _PCT),
    _one(0x4A, "ACCELERATOR_POS_E", f"{_O}AcceleratorPositionE", "%", 1, _PCT),
    _one(0x4B, "ACCELERATOR_POS_F", f"{_O}AcceleratorPositionF", "%", 1, _PCT),
    _one(0x4C, "THROTTLE_ACTUATOR", f"{_O}ThrottleActuator", "%", 1, _PCT),
    _one(0x4D, "RUN_TIME_MIL", f"{_O}RunTimeMIL", "min", 2),
    _one(0x4E, "TIME_SINCE_DTC_CLEARED", f"{_O}TimeSinceDTCCleared", "min", 2),
    Pid(0x4F, "MAX_VALUES", (
        PidSignal("MAX_EQUIV_RATIO", None, "", 0),
        PidSignal("MAX_O2_VOLTAGE", None, "V", 1),
        PidSignal("MAX_O2_CURRENT", None, "mA", 2),
        PidSignal("MAX_INTAKE_PRESSURE", None, "kPa", 3, 1, 10.0),
    )),
    _one(0x50, "MAX_MAF", f"{_O}MaxMAF", "g/s", 1, 10.0),
    _one(0x51, "FUEL_TYPE", None, ""),
    _one(0x52, "ETHANOL_PERCENT", f"{_O}EthanolPercent", "%", 1, _PCT),
    _one(0x53, "EVAP_VAPOR_PRESSURE_ABS", f"{_O}EVAPVaporPressureAbsolute", "kPa", 2, 1 / 200),
    _one(0x54, "EVAP_VAPOR_PRESSURE_ALT", f"{_O}EVAPVaporPressureAlternate", "Pa", 2, 1.0, 0.0, True),
    _o2_trim(0x55, "SHORT_O2_TRIM_B1", "ShortTermO2Trim1", "ShortTermO2Trim3"),
    _o2_trim(0x56, "LONG_O2_TRIM_B1", "LongTermO2Trim1", "LongTermO2Trim3"),
    _o2_trim(0x57, "SHORT_O2_TRIM_B2", "ShortTermO2Trim2", "ShortTermO2Trim4"),
    _o2_trim(0x58, "LONG_O2_TRIM_B2", "LongTermO2Trim2", "LongTermO2Trim4"),
    _one(0x59, "FUEL_RAIL_PRESSURE_ABS", f"{_O}FuelRailPressureAbsolute", "kPa", 2, 10.0),
    _one(0x5A, "RELATIVE_ACCEL_POS", f"{_O}RelativeAcceleratorPosition", "%", 1, _PCT),
    _one(0x5B, "HYBRID_BATTERY_REMAINING", f"{_O}HybridBatteryRemaining", "%", 1, _PCT),
    _one(0x5C, "OIL_TEMP", f"{_ENGINE}EOT", "celsius", 1, 1.0, -40.0),
    _one(0x5D, "FUEL_INJECT_TIMING", f"{_O}FuelInjectionTiming", "degrees", 2, 1 / 128, -210.0),
    _one(0x5E, "FUEL_RATE", f"{_O}FuelRate", "l/h", 2, 0.05),
    _one(0x5F, "EMISSION_REQ", None, ""),
    _one(0x61, "DRIVER_DEMAND_TORQUE", None, "%", 1, 1.0, -125.0),
    _one(0x62, "ACTUAL_ENGINE_TORQUE", None, "%", 1, 1.0, -125.0),
    _one(0x63, "REFERENCE_TORQUE", None, "Nm", 2),
    _one(0x8E, "ENGINE_FRICTION_TORQUE", None, "%", 1, 1.0, -125.0),
    _one(0xA2, "CYLINDER_FUEL_RATE", None, "mg/stroke", 2, 1 / 32),
    _one(0xA6, "ODOMETER", "Vehicle.TraveledDistance", "km", 4, 0.1),
]

PIDS: dict[int, Pid] = {p.pid: p for p in _TABLE}
_BY_NAME: dict[str, Pid] = {p.name: p for p in _TABLE}
assert len(PIDS) == len(_TABLE), "a PID is defined twice"


def pid_by_name(name: str) -> Pid | None:
    """A PID by its python-OBD name (``SPEED``), case-insensitive."""
    return _BY_NAME.get(name.upper())


def pids_for_name(sample_name: str) -> list[int]:
    """The PIDs that produce samples called `sample_name` (a VSS path or ``OBD.<NAME>``)."""
    return [p.pid for p in _TABLE if any(s.sample_name == sample_name for s in p.signals)]


def decode_pid(pid: int, data: bytes) -> Iterator[tuple[PidSignal, int | float]]:
    """The signals of one PID record; `data` is what follows the PID byte (may be longer).

    Raises PidError when the PID is not in the table or `data` is too short for it.
    """
    entry = PIDS.get(pid)
    if entry is None:
        raise PidError(f"PID {pid:02X} is not a standard PID this decoder knows")
    if len(data) < entry.length:
        raise PidError(f"PID {pid:02X} ({entry.name}) needs {entry.length} data bytes, got {len(data)}")
    for signal in entry.signals:
        yield signal, signal.decode(data)


def supported_from_bitmap(base: int, data: bytes) -> set[int]:
    """The PIDs a supported-PID bitmap (the 4 bytes after PID `base`) marks as supported."""
    if len(data) < 4:
        raise PidError(f"supported-PID bitmap {base:02X} needs 4 bytes, got {len(data)}")
    bits = int.from_bytes(data[:4], "big")
    return {base + i + 1 for i in range(32) if bits & (1 << (31 - i))}


def bitmap_from_supported(base: int, supported: set[int]) -> bytes:
    """The 4-byte bitmap for PIDs base+1 .. base+32 (the inverse of `supported_from_bitmap`)."""
    bits = 0
    for pid in supported:
        if base < pid <= base + 32:
            bits |= 1 << (31 - (pid - base - 1))
    return bits.to_bytes(4, "big")
