"""The ELM327 path: the emulator on a pseudo-terminal, python-OBD against it, and Elm327Source end to end."""

from __future__ import annotations

import os
import select
import threading
import time
import uuid

import can
import pytest

from carledger.obd import Elm327Source, ObdConfig
from carledger_sim.car import SimulatedCar
from carledger_sim.elm327 import Elm327Emulator
from carledger_sim.obd_responder import DEFAULT_VIN, DriveClock, ObdResponder
from conftest import wait_until

obd = pytest.importorskip("obd")

READ_ONLY = {0x01, 0x02, 0x03, 0x07, 0x09, 0x0A}


class Car:
    """A simulated car's OBD responder and an ELM327 emulator plugged into it."""

    def __init__(self, **responder):
        self.name = f"elm-test-{uuid.uuid4().hex}"
        self.car = SimulatedCar("city", seed=4, duration=300)
        self.car.history()
        self.clock = DriveClock(self.car)
        self.buses = [can.Bus(interface="virtual", channel=self.name) for _ in range(2)]
        self.responder = ObdResponder(self.buses[0], self.clock, **responder).start()
        self.elm = Elm327Emulator(self.buses[1], voltage=lambda: self.clock().battery_voltage).start()

    def close(self) -> None:
        self.elm.stop()
        self.responder.stop()
        for bus in self.buses:
            bus.shutdown()


@pytest.fixture
def car():
    rig = Car()
    yield rig
    rig.close()


class Terminal:
    """The adapter's serial line, as a program on the car computer sees it."""

    def __init__(self, port: str):
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)

    def ask(self, command: str, timeout: float = 5.0) -> str:
        os.write(self.fd, command.encode() + b"\r")
        out = b""
        deadline = time.monotonic() + timeout
        while not out.endswith(b">"):
            left = deadline - time.monotonic()
            assert left > 0, f"no prompt after {command!r}: {out!r}"
            if select.select([self.fd], [], [], left)[0]:
                out += os.read(self.fd, 4096)
        return out.decode()

    def lines(self, command: str) -> list[str]:
        return [line for line in self.ask(command)[:-1].replace("\n", "").split("\r") if line]

    def close(self) -> None:
        os.close(self.fd)


def test_the_emulator_answers_the_at_commands_python_obd_uses(car):
    term = Terminal(car.elm.port)
    try:
        assert "ELM327 v1.5" in term.ask("ATZ")
        assert term.ask("ATE0") == "ATE0\rOK\r\r>"  # still echoing this one
        assert term.ask("ATH1") == "OK\r\r>"
        assert term.ask("ATL0") == "OK\r\r>"
        volts = term.lines("AT RV")
        assert len(volts) == 1 and volts[0].endswith("V") and 10.0 < float(volts[0][:-1]) < 15.0
        assert term.lines("ATSP0") == ["OK"]
        assert term.lines("ATDPN") == ["A6"]
        first = term.lines("0100")
        assert first[0] == "SEARCHING..." and first[1].startswith("7E8 06 41 00 ")
        assert term.lines("ATDP") == ["AUTO, ISO 15765-4 (CAN 11/500)"]
        car.clock.hold(40.0)
        speed = round(car.car.state_at(40.0).speed_kmh)
        assert term.lines("010D") == [f"7E8 03 41 0D {speed:02X}"]
        assert term.lines("") == [f"7E8 03 41 0D {speed:02X}"]  # an empty line repeats the last request
        assert term.lines("010D1") == [f"7E8 03 41 0D {speed:02X}"]  # answer count: returns at once
        assert term.lines("ATS0") == ["OK"]
        assert term.lines("01 0D") == [f"7E803410D{speed:02X}"]
        vin = term.lines("0902")  # multi-line answer, headers on: one line per frame
        assert [line[:5] for line in vin] == ["7E810", "7E821", "7E822"]
        assert term.lines("ATH0") == ["OK"]
        assert term.lines("010D") == [f"410D{speed:02X}"]
        assert term.lines("ATS1") == ["OK"]
        assert term.lines("0902") == ["014", "0: 49 02 01 57 43 4C", "1: 44 45 4D 30 43 41 52", "2: 30 30 30 30 30 34 37"]
        assert term.lines("ATL1") == ["OK"]
        assert term.ask("ATI").endswith("ELM327 v1.5\r\n\r\n>")
        assert term.lines("ATXYZ") == ["?"]
        car.responder.mode = "silent"
        assert term.lines("010D") == ["NO DATA"]
        assert term.lines("ATSP0") == ["OK"]
        assert term.lines("0100") == ["SEARCHING...", "UNABLE TO CONNECT"]
        car.responder.mode = "pending"
        car.responder.delay = 0.3
        assert term.lines("ATH1") == ["OK"]
        assert term.lines("010D") == ["SEARCHING...", f"7E8 03 41 0D {speed:02X}"]  # 7F 01 78 waited out, not shown
    finally:
        term.close()


def test_python_obd_connects_and_reads_through_the_emulator(car):
    car.responder.inject_dtc("P0420")
    car.clock.hold(60.0)
    state = car.car.state_at(60.0)
    connection = obd.OBD(car.elm.port, fast=False, timeout=0.5)
    try:
        assert connection.status() == obd.OBDStatus.CAR_CONNECTED
        assert connection.protocol_name() == "ISO 15765-4 (CAN 11/500)"
        assert connection.supports(obd.commands.SPEED) and connection.supports(obd.commands.OIL_TEMP)
        assert not connection.supports(obd.commands.FUEL_PRESSURE)
        assert connection.query(obd.commands.SPEED).value.magnitude == round(state.speed_kmh)
        assert connection.query(obd.commands.RPM).value.magnitude == pytest.approx(state.engine_rpm, abs=0.125)
        assert connection.query(obd.commands.COOLANT_TEMP).value.magnitude == round(state.coolant_temp)
        assert connection.query(obd.commands.VIN).value.decode() == DEFAULT_VIN
        assert [code for code, _ in connection.query(obd.commands.GET_DTC).value] == ["P0420"]
        assert connection.query(obd.commands.ELM_VOLTAGE).value.magnitude == pytest.approx(state.battery_voltage, abs=0.05)
    finally:
        connection.close()


def run_source(config: ObdConfig, car: Car, until, timeout: float = 60.0):
    samples, events = [], []
    source = Elm327Source(config, lambda *s: samples.append(s), lambda kind, detail: events.append((kind, detail)))
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: until(samples, events), timeout=timeout)
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    return source, samples, events


def test_elm327_source_gives_the_same_samples_and_names_as_the_can_path(car):
    car.responder.inject_dtc("P0301")
    car.clock.hold(75.0)
    state = car.car.state_at(75.0)
    spy = can.Bus(interface="virtual", channel=car.name)
    config = ObdConfig(pids=((0x0D, 0.2), (0x0C, 0.2), (0x5C, 0.2)), dtc_interval=5.0, port=car.elm.port)
    try:
        source, samples, events = run_source(
            config, car, lambda s, e: {x[1] for x in s} >= {
                "Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed",
                "Vehicle.Powertrain.CombustionEngine.EOT", "Vehicle.OBD.DTCList", "OBD.PERMANENT_DTCS"})
        frames = []
        while (msg := spy.recv(0)) is not None:
            frames.append(msg)
    finally:
        spy.shutdown()
    by_name = {s[1]: s for s in samples}
    assert by_name["Vehicle.VehicleIdentification.VIN"][2:] == (DEFAULT_VIN, "OBD.09.02")
    assert by_name["Vehicle.Speed"][2:] == (round(state.speed_kmh), "OBD.01.0D")
    assert by_name["Vehicle.Powertrain.CombustionEngine.Speed"][2] == pytest.approx(state.engine_rpm, abs=0.125)
    assert by_name["Vehicle.Powertrain.CombustionEngine.EOT"][2:] == (round(state.oil_temp) * 1.0, "OBD.01.5C")
    assert by_name["Vehicle.OBD.DTCList"][2:] == ("P0301", "OBD.03")
    kinds = [k for k, _ in events]
    assert kinds[:2] == ["adapter-connected", "ecu-discovered"]
    assert source.vin == DEFAULT_VIN
    # the adapter put only read-only requests and flow control on the bus; python-OBD itself
    # probes service 06 (on-board monitoring results, also read-only) once when it connects
    services = []
    for m in frames:
        if 0x7E8 <= m.arbitration_id <= 0x7EF:
            continue
        assert m.arbitration_id == 0x7DF or 0x7E0 <= m.arbitration_id <= 0x7E7
        assert m.data[0] >> 4 in (0, 3)
        if m.data[0] >> 4 == 0:
            services.append(m.data[1])
    assert set(services) <= READ_ONLY | {0x06} and services.count(0x06) == 1


def test_elm327_source_waits_for_the_ignition_and_reconnects(car):
    car.responder.mode = "silent"
    config = ObdConfig(pids=((0x0D, 0.2),), dtc_interval=0, vin=False, port=car.elm.port, backoff=(0.2, 0.5))

    def until(samples, events):
        if [k for k, _ in events].count("adapter-error") >= 1:
            car.responder.mode = "normal"  # ignition on
        return any(s[1] == "Vehicle.Speed" for s in samples)

    source, samples, events = run_source(config, car, until, timeout=90)
    errors = [d for k, d in events if k == "adapter-error"]
    assert errors and errors[0]["port"] == car.elm.port
    assert "adapter-connected" in [k for k, _ in events]


def test_elm327_source_finds_a_29_bit_car():
    rig = Car(response_id=0x18DAF110, extended=True)
    try:
        config = ObdConfig(pids=((0x0D, 0.2),), dtc_interval=0, port=rig.elm.port)
        source, samples, events = run_source(config, rig, lambda s, e: any(x[1] == "Vehicle.Speed" for x in s))
    finally:
        rig.close()
    assert ("ecu-discovered", {"ecu": "18DAF110", "pids": " ".join(
        f"{p:02X}" for p in sorted(rig.responder.supported))}) in events
    assert [d for k, d in events if k == "adapter-connected"][0]["protocol"] == "ISO 15765-4 (CAN 29/500)"
    assert any(s[1] == "Vehicle.VehicleIdentification.VIN" and s[2] == DEFAULT_VIN for s in samples)


def test_carledger_sim_elm327_command_serves_python_obd():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "carledger_sim.cli", "elm327", "--duration", "60", "--dtc", "P0301"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ELM327 on /dev/pts/"), line
        connection = obd.OBD(line.split()[2], fast=False, timeout=0.5)
        try:
            assert connection.status() == obd.OBDStatus.CAR_CONNECTED
            assert connection.query(obd.commands.SPEED).value.magnitude >= 0
            assert [code for code, _ in connection.query(obd.commands.GET_DTC).value] == ["P0301"]
        finally:
            connection.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_carledger_sim_obd_command_rejects_a_bad_dtc(capsys):
    from carledger_sim.cli import main

    assert main(["obd", "--interface", "virtual", "--channel", f"x-{uuid.uuid4().hex}", "--duration", "1",
                 "--dtc", "X0301"]) == 1
    assert "carledger-sim: error: 'X0301' is not a DTC like P0301" in capsys.readouterr().err
