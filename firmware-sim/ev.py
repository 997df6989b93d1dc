"""The simulated car as an electric vehicle: a battery management system that answers UDS, and a J1939 BAM.

`ev_battery(state)` derives the traction battery from the drive model: the
state of charge falls with the energy the drive takes (distance, speed,
acceleration), the pack sags under the current that power draws, cells
spread a little, the pack warms with use. Nothing is random, so a test can
compute what the BMS answered at any drive second.

`EvResponder` is an `ObdResponder` (same addressing, modes, can-isotp
flow control) that also answers ReadDataByIdentifier (0x22) for the DIDs of
dbc/carledger_ev.dbc: 0x0101 battery status (14 bytes: multi-frame), 0x0105
state of health (5 bytes: a single frame). An unknown DID gets 7F 22 31,
a request of another length 7F 22 13.

`BamBroadcaster` sends a J1939 DM1 (PGN 65226, two active DTCs, 10 bytes)
by BAM every `period` seconds: TP.CM then TP.DT packets 50 ms apart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import can

from .model import VehicleState
from .obd_responder import Background, ObdResponder

__all__ = ["BamBroadcaster", "CELLS", "DM1_PAYLOAD", "DM1_PGN", "EvBattery", "EvResponder", "bam_frames", "did_data", "ev_battery"]

CELLS = 96
CAPACITY_KWH = 64.0
START_SOC = 80.0  # percent at the start of the drive
SOH = 96.3  # percent
_MASS = 1750.0  # kg
_CELL_R = 0.0011  # ohm per cell
_EFFICIENCY = 0.88
READ_DATA_BY_IDENTIFIER = 0x22


@dataclass(frozen=True)
class EvBattery:
    soc: float  # percent
    soh: float  # percent
    pack_voltage: float  # V
    pack_current: float  # A, discharge positive
    temperature_max: float  # celsius
    temperature_min: float
    cell_voltage_max: float  # V
    cell_voltage_min: float


def _ocv(soc: float) -> float:
    """Open-circuit voltage of one NMC cell at `soc` percent."""
    return 3.30 + 0.90 * soc / 100.0


def ev_battery(state: VehicleState) -> EvBattery:
    """The battery at `state`: energy at about 165 Wh/km plus what the current acceleration takes."""
    v = state.speed_kmh / 3.6
    used_kwh = state.distance_m / 1000.0 * 0.165
    soc = max(0.0, START_SOC - used_kwh / CAPACITY_KWH * 100.0)
    force = _MASS * state.accel_long + 180.0 + 0.42 * v * v  # inertia, rolling, air
    power_w = force * v / _EFFICIENCY if force > 0 else force * v * 0.6  # regeneration recovers part
    ocv = _ocv(soc)
    current = power_w / (CELLS * ocv)
    cell = ocv - current * _CELL_R
    warm = min(15.0, state.distance_m / 1000.0 * 0.8)
    return EvBattery(
        soc=soc, soh=SOH, pack_voltage=CELLS * cell, pack_current=current,
        temperature_max=state.ambient_temp + 4.0 + warm, temperature_min=state.ambient_temp + 2.0 + warm * 0.8,
        cell_voltage_max=cell + 0.012, cell_voltage_min=cell - 0.015,
    )


def _field(value: float, scale: float, size: int, signed: bool = False) -> bytes:
    raw = int(round(value / scale))
    low, high = (-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1) if signed else (0, (1 << (8 * size)) - 1)
    return max(low, min(high, raw)).to_bytes(size, "big", signed=signed)


def did_data(did: int, battery: EvBattery) -> bytes | None:
    """The data of a DID (after 62 and the DID), as dbc/carledger_ev.dbc lays it out; None if unknown."""
    if did == 0x0101:
        return b"".join((
            _field(battery.soc, 0.5, 1), _field(battery.pack_voltage, 0.1, 2), _field(battery.pack_current, 0.1, 2, True),
            _field(battery.temperature_max, 1, 1, True), _field(battery.temperature_min, 1, 1, True),
            _field(battery.cell_voltage_max, 0.001, 2), _field(battery.cell_voltage_min, 0.001, 2),
        ))
    if did == 0x0105:
        return _field(battery.soh, 0.1, 2)
    return None


class EvResponder(ObdResponder):
    """The battery management system: OBD-II as `ObdResponder`, plus UDS 0x22 DIDs. Default 0x7E4 -> 0x7EC."""

    def __init__(self, bus: can.BusABC, state, *, response_id: int = 0x7EC, name: str = "BMS-Battery", **options):
        super().__init__(bus, state, response_id=response_id, name=name, **options)

    def answer(self, payload: bytes, functional: bool = False) -> bytes | None:
        if payload[0] != READ_DATA_BY_IDENTIFIER:
            return super().answer(payload, functional)
        if len(payload) != 3:
            return None if functional else b"\x7f\x22\x13"
        did = int.from_bytes(payload[1:3], "big")
        data = did_data(did, ev_battery(self.state()))
        if data is None:
            return None if functional else b"\x7f\x22\x31"
        return b"\x62" + payload[1:3] + data


# J1939 DM1 from the BMS: amber warning lamp on; SPN 5919 FMI 18 (once), SPN 520425 FMI 3 (twice)
DM1_PAYLOAD = bytes((0x04, 0xFF, 0x1F, 0x17, 0x12, 0x01, 0xE9, 0xF0, 0xE3, 0x02))
DM1_PGN = 0xFECA


def bam_frames(pgn: int, source: int, payload: bytes) -> list[tuple[int, bytes]]:
    """(29-bit identifier, data) of a BAM: TP.CM (priority 7) then the TP.DT packets, last one 0xFF-padded."""
    packets = -(-len(payload) // 7)
    cm = bytes((0x20,)) + len(payload).to_bytes(2, "little") + bytes((packets, 0xFF)) + pgn.to_bytes(3, "little")
    out = [(0x1CECFF00 | source, cm)]
    for i in range(packets):
        out.append((0x1CEBFF00 | source, bytes((i + 1,)) + payload[7 * i:7 * i + 7].ljust(7, b"\xff")))
    return out


class BamBroadcaster(Background):
    """Sends `payload` of `pgn` from `source` by BAM every `period` seconds, packets `gap` seconds apart."""

    thread_name = "j1939-bam"

    def __init__(self, bus: can.BusABC, *, pgn: int = DM1_PGN, source: int = 0xF3, payload: bytes = DM1_PAYLOAD,
                 period: float = 1.0, gap: float = 0.05):
        self.bus, self.frames = bus, bam_frames(pgn, source, payload)
        self.period, self.gap = period, gap
        self.sent = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, (can_id, data) in enumerate(self.frames):
                if i and self._stop.wait(self.gap):
                    return
                self.bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))
            self.sent += 1
            if self._stop.wait(self.period):
                return
