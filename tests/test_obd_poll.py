"""Active OBD-II polling (can-isotp) against the simulated responder on python-can virtual buses.

What the poller transmits is counted by a separate listener on the same
channel (`Spy`), not by the poller's own counters.
"""

from __future__ import annotations

import threading
import uuid

import can
import pytest

from carledger.obd import ObdConfig, ObdPoller
from carledger.sources import BusSource
from carledger_sim.car import SimulatedCar
from carledger_sim.obd_responder import DEFAULT_VIN, SUPPORTED, DriveClock, ObdResponder
from conftest import wait_until

READ_ONLY = {0x01, 0x02, 0x03, 0x07, 0x09, 0x0A}
BITMAPS = {0x20, 0x40, 0x60, 0x80, 0xA0}


def channel() -> str:
    return f"obd-test-{uuid.uuid4().hex}"


def is_answer_id(m: can.Message) -> bool:
    if m.is_extended_id:
        return m.arbitration_id & 0x1FFFFF00 == 0x18DAF100
    return 0x7E8 <= m.arbitration_id <= 0x7EF


class Spy:
    """Every frame on a virtual channel, as another node sees it."""

    def __init__(self, name: str):
        self.bus = can.Bus(interface="virtual", channel=name)
        self.frames: list[can.Message] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.bus.recv(0.05)
            if msg is not None:
                self.frames.append(msg)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.bus.shutdown()

    def tester_frames(self) -> list[can.Message]:
        """Frames not from an ECU answer identifier: the poller's."""
        return [m for m in list(self.frames) if not is_answer_id(m)]

    def requests(self) -> list[can.Message]:
        return [m for m in self.tester_frames() if m.data[0] >> 4 == 0]


class Rig:
    """OBD responder(s) answering from a simulated drive, a poller, and a spy, on one virtual channel."""

    def __init__(self, config: ObdConfig, *, speed: float = 1.0, responders: tuple[dict, ...] = ({},)):
        self.name = channel()
        self.car = SimulatedCar("city", seed=3, duration=300)
        self.car.history()  # the drive, computed before anyone asks (ECUs answer in milliseconds)
        self.clock = DriveClock(self.car, speed=speed)
        self.spy = Spy(self.name)
        self.buses: list[can.BusABC] = []
        self.responders = [self._responder(options) for options in responders]
        self.samples: list[tuple] = []
        self.events: list[tuple[str, dict]] = []
        self.poller_bus = can.Bus(interface="virtual", channel=self.name)
        self.poller = ObdPoller(self.poller_bus, config, lambda *s: self.samples.append(s),
                                lambda kind, detail: self.events.append((kind, detail)))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poller.run, args=(self.stop,), daemon=True)

    def _responder(self, options: dict) -> ObdResponder:
        bus = can.Bus(interface="virtual", channel=self.name)
        self.buses.append(bus)
        return ObdResponder(bus, self.clock, **options).start()

    def __enter__(self) -> "Rig":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the poller did not stop"
        for responder in self.responders:
            responder.stop()
        self.spy.close()
        for bus in [*self.buses, self.poller_bus]:
            bus.shutdown()

    def named(self, name: str) -> list[tuple]:
        return [s for s in list(self.samples) if s[1] == name]

    def kinds(self) -> list[str]:
        return [k for k, _ in list(self.events)]


def check_read_only(frames: list[can.Message], extended: bool = False) -> None:
    """Only single-frame requests of read-only services, and flow control, to tester identifiers."""
    assert frames
    for m in frames:
        data = bytes(m.data)
        if extended:
            assert m.is_extended_id and (m.arbitration_id == 0x18DB33F1 or m.arbitration_id & 0xFFFF00FF == 0x18DA00F1)
        else:
            assert not m.is_extended_id and (m.arbitration_id == 0x7DF or 0x7E0 <= m.arbitration_id <= 0x7E7)
        kind = data[0] >> 4
        assert kind in (0, 3), f"neither a single frame nor flow control: {data.hex()}"
        if kind == 0:
            assert data[1] in READ_ONLY, f"service {data[1]:02X} is not read-only"


# -- the whole job ---------------------------------------------------------------------------


def test_polling_the_simulated_car_gets_pids_vin_dtcs_and_live_values():
    config = ObdConfig(pids=((0x0D, 0.05), (0x0C, 0.05), (0x05, 0.05), (0xA6, 1.0)), dtc_interval=1.0, max_rate=40)
    tracked = []
    with Rig(config) as rig:
        rig.responders[0].inject_dtc("P0301")
        rig.responders[0].inject_dtc("P0171", "pending")
        wait_until(lambda: "P0171" in [s[2] for s in rig.named("OBD.PENDING_DTCS")], timeout=30)
        for sim_t in range(10, 250, 15):  # live values follow the drive: hold its clock, read, compare
            rig.clock.hold(float(sim_t))
            mark = len(rig.samples)
            wanted = ("Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed",
                      "Vehicle.Powertrain.CombustionEngine.ECT")
            wait_until(lambda: all(sum(1 for s in rig.samples[mark:] if s[1] == n) >= 2 for n in wanted), timeout=20)
            latest = {s[1]: s[2] for s in rig.samples[mark:]}
            tracked.append((rig.car.state_at(float(sim_t)), latest))
        rig.clock.hold(None)
    assert rig.poller.ecus == {0x7E8: set(SUPPORTED) | BITMAPS}
    assert ("ecu-discovered", {"ecu": "7E8", "pids": " ".join(f"{p:02X}" for p in sorted(SUPPORTED))}) in rig.events
    assert rig.named("Vehicle.VehicleIdentification.VIN")[0][2:] == (DEFAULT_VIN, "OBD.09.02")
    assert rig.poller.vin == DEFAULT_VIN
    assert rig.named("Vehicle.OBD.DTCList")[-1][2:] == ("P0301", "OBD.03")
    assert rig.named("OBD.PERMANENT_DTCS")[-1][2:] == ("", "OBD.0A")
    assert {s[3] for s in rig.named("Vehicle.Speed")} == {"OBD.01.0D"}
    for state, got in tracked:
        assert abs(got["Vehicle.Speed"] - state.speed_kmh) <= 0.5
        assert abs(got["Vehicle.Powertrain.CombustionEngine.Speed"] - state.engine_rpm) <= 0.125
        assert abs(got["Vehicle.Powertrain.CombustionEngine.ECT"] - state.coolant_temp) <= 0.5
    assert max(state.speed_kmh for state, _ in tracked) > 25 and len({g["Vehicle.Speed"] for _, g in tracked}) > 5
    t, _, km, _ = rig.named("Vehicle.TraveledDistance")[0]
    assert abs(km - rig.car.state_at(rig.clock.sim_time(t)).odometer_km) < 0.5
    # what went on the bus: read-only requests and flow control (the VIN answer is multi-frame)
    sent = rig.spy.tester_frames()
    check_read_only(sent)
    assert any(m.data[0] == 0x30 and m.arbitration_id == 0x7E0 for m in sent)
    assert len(sent) == rig.poller.stats["frames_sent"]
    assert {r[1][0] for r in rig.responders[0].requests} <= READ_ONLY


def test_a_stored_dtc_comes_with_its_freeze_frame():
    config = ObdConfig(pids=((0x0D, 0.5),), dtc_interval=0.3, vin=False, max_rate=40)
    with Rig(config) as rig:
        rig.clock.hold(270.0)  # the fault is set while the car drives
        rig.responders[0].inject_dtc("P0301")
        rig.clock.hold(20.0)  # and read later, in other conditions
        wait_until(lambda: rig.named("OBD.FREEZE.THROTTLE_POS"), timeout=30)
    frozen, now = rig.car.state_at(270.0), rig.car.state_at(20.0)
    assert frozen.speed_kmh > 20 and abs(frozen.speed_kmh - now.speed_kmh) > 5
    (t_dtc, _, code, source), = rig.named("OBD.FREEZE.DTC")[:1]
    assert (code, source) == ("P0301", "OBD.02.02")
    speed = rig.named("OBD.FREEZE.SPEED")[0]
    assert speed[0] == t_dtc and speed[3] == "OBD.02.0D"  # the conditions carry the fault's time
    assert abs(speed[2] - frozen.speed_kmh) <= 0.5
    assert abs(rig.named("OBD.FREEZE.RPM")[0][2] - frozen.engine_rpm) <= 0.125
    assert abs(rig.named("OBD.FREEZE.COOLANT_TEMP")[0][2] - frozen.coolant_temp) <= 0.5
    check_read_only(rig.spy.tester_frames())
    asked = {bytes(m.data[1:4]) for m in rig.spy.requests() if m.data[1] == 0x02}
    assert asked == {b"\x02\x02\x00", b"\x02\x00\x00", b"\x02\x04\x00", b"\x02\x05\x00", b"\x02\x0c\x00",
                     b"\x02\x0d\x00", b"\x02\x11\x00"}


def test_only_obd_requests_and_never_faster_than_the_configured_rate():
    # ask for far more than 4 requests per second could carry
    config = ObdConfig(pids=tuple((pid, 0.01) for pid in (0x04, 0x05, 0x0C, 0x0D, 0x11, 0x2F)),
                       dtc_interval=0.5, max_rate=4.0)
    with Rig(config) as rig:
        wait_until(lambda: len(rig.spy.requests()) >= 13, timeout=20)
    requests = rig.spy.requests()
    check_read_only(rig.spy.tester_frames())
    times = [m.timestamp for m in requests]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.25 * 0.98, min(gaps)
    assert (len(times) - 1) / (times[-1] - times[0]) <= 4.0 * 1.01
    assert len(rig.spy.tester_frames()) == rig.poller.stats["frames_sent"]
    assert not any(bytes(m.data[1:2]) == b"\x04" for m in requests)  # never "clear DTCs"


# -- slow, pending, silent ECUs ------------------------------------------------------------------


def test_response_pending_is_waited_for_and_slow_answers_arrive():
    config = ObdConfig(pids=((0x0D, 0.2),), dtc_interval=0, vin=False, timeout=0.1, pending_timeout=2.0)
    with Rig(config, responders=({"mode": "pending", "delay": 0.4},)) as rig:
        wait_until(lambda: len(rig.named("Vehicle.Speed")) >= 3, timeout=20)
    stats = rig.poller.stats
    assert stats["pending"] >= 3 and stats["timeouts"] == 0
    assert "timeout" not in rig.kinds()
    pending_frames = [m for m in rig.spy.frames if bytes(m.data[:4]) == b"\x03\x7f\x01\x78"]
    assert len(pending_frames) >= 3


def test_an_unanswered_pid_is_reported_once_not_at_every_request():
    config = ObdConfig(pids=((0x0D, 0.1),), dtc_interval=0, vin=False, timeout=0.1, silent_after=1000)
    with Rig(config) as rig:
        wait_until(lambda: rig.named("Vehicle.Speed"), timeout=20)
        rig.responders[0].mode = "silent"
        wait_until(lambda: rig.poller.stats["timeouts"] >= 5, timeout=20)
    assert rig.kinds().count("timeout") == 1
    assert ("timeout", {"ecu": "7E8", "request": "010d"}) in rig.events


def test_silent_ecus_make_polling_back_off_and_it_resumes_when_they_return():
    config = ObdConfig(pids=((0x0D, 0.05), (0x0C, 0.05)), dtc_interval=0, vin=False, max_rate=20,
                       timeout=0.05, silent_after=3, backoff=(0.3, 0.6))
    with Rig(config) as rig:
        responder = rig.responders[0]
        wait_until(lambda: len(rig.named("Vehicle.Speed")) >= 5, timeout=20)
        responder.mode = "silent"  # ignition off
        wait_until(lambda: "ecu-silent" in rig.kinds(), timeout=20)
        silent_from = len(rig.spy.requests())
        wait_until(lambda: len(rig.spy.requests()) >= silent_from + 4, timeout=20)
        during = rig.spy.requests()[silent_from:]
        # while nobody answers only discovery probes go out, spaced by the back-off
        assert all(bytes(m.data[:3]) == b"\x02\x01\x00" and m.arbitration_id == 0x7DF for m in during)
        gaps = [b.timestamp - a.timestamp for a, b in zip(during, during[1:])]
        assert gaps and min(gaps) >= 0.3 * 0.75 * 0.98
        samples_before = len(rig.samples)
        responder.mode = "normal"  # ignition on again
        wait_until(lambda: rig.kinds().count("ecu-discovered") == 2 and len(rig.samples) >= samples_before + 5,
                   timeout=20)
    kinds = rig.kinds()
    assert kinds.count("ecu-silent") == 1  # reported when it started, not at every probe
    assert kinds.index("ecu-discovered") < kinds.index("ecu-silent") < len(kinds) - 1 - kinds[::-1].index("ecu-discovered")


def test_a_slow_or_silent_ecu_does_not_stall_can_collection_on_this_or_other_buses():
    config = ObdConfig(pids=((0x0D, 0.1),), dtc_interval=0, vin=False, timeout=0.1, pending_timeout=30.0,
                       backoff=(0.2, 0.5))
    with Rig(config, responders=({"mode": "normal"},)) as rig:
        other = channel()
        cars = [(rig.name, SimulatedCar("city", seed=1, duration=60)), (other, SimulatedCar("highway", seed=2, duration=60))]
        stop = threading.Event()
        counts = {rig.name: 0, other: 0}
        threads = []
        for name, car in cars:
            tx = can.Bus(interface="virtual", channel=name)
            rig.buses.append(tx)
            threads.append(threading.Thread(target=car.run, args=(tx, 1.0, stop), daemon=True))
            source = BusSource(name, None, interface="virtual", channel=name)

            def collect(source=source, name=name):
                for batch in source.batches(stop):
                    counts[name] += sum(1 for f in batch if not (0x7E0 <= f[1] <= 0x7EF or f[1] == 0x7DF))

            threads.append(threading.Thread(target=collect, daemon=True))
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: rig.named("Vehicle.Speed"), timeout=20)
            rig.responders[0].mode = "silent"  # the poller times out, then backs off
            wait_until(lambda: "ecu-silent" in rig.kinds(), timeout=20)
            before = dict(counts)
            wait_until(lambda: all(counts[n] >= before[n] + 500 for n in counts), timeout=20)
            # then "response pending" and nothing more for 30 s: the poller sits inside one exchange
            rig.responders[0].delay = 1000.0
            rig.responders[0].mode = "pending"
            mark = len(rig.spy.frames)
            wait_until(lambda: any(bytes(m.data[:4]) == b"\x03\x7f\x01\x78" for m in rig.spy.frames[mark:]), timeout=20)
            requests, before = rig.poller.stats["requests"], dict(counts)
            wait_until(lambda: all(counts[n] >= before[n] + 500 for n in counts), timeout=20)
            assert rig.poller.stats["requests"] == requests  # still inside that one exchange
        finally:
            stop.set()
            for thread in threads:
                thread.join(5)


# -- negative answers, unsupported PIDs ----------------------------------------------------------


class Refusing(ObdResponder):
    """Answers some PIDs with a fixed negative response code."""

    refuse: dict[int, int] = {}

    def answer(self, payload: bytes, functional: bool = False):
        if payload[0] == 0x01 and len(payload) == 2 and payload[1] in self.refuse:
            return bytes((0x7F, 0x01, self.refuse[payload[1]]))
        return super().answer(payload, functional)


def test_negative_answers_drop_unsupported_pids_and_keep_busy_ones():
    config = ObdConfig(pids=((0x0D, 0.1), (0x0C, 0.1), (0x05, 0.1), (0x0A, 0.1)), dtc_interval=0, vin=False,
                       max_rate=30)
    rig = Rig(config, responders=())
    responder = Refusing(can.Bus(interface="virtual", channel=rig.name), rig.clock)
    responder.refuse = {0x0D: 0x31, 0x0C: 0x12, 0x05: 0x22}
    rig.buses.append(responder.bus)
    rig.responders.append(responder.start())
    with rig:
        wait_until(lambda: sum(1 for r in responder.requests if r[1] == b"\x01\x05") >= 5, timeout=20)
    events = [d for k, d in rig.events if k == "negative-response"]
    by_request = {d["request"]: d for d in events}
    assert by_request["010d"]["name"] == "requestOutOfRange" and by_request["010d"]["action"] == "dropped"
    assert by_request["010c"]["name"] == "subFunctionNotSupported-invalidFormat" and by_request["010c"]["action"] == "dropped"
    assert by_request["0105"]["name"] == "conditionsNotCorrect" and by_request["0105"]["action"] == "kept"
    assert len(events) == 3  # each reported once
    asked = [r[1] for r in responder.requests]
    assert asked.count(b"\x01\x0d") == 1 and asked.count(b"\x01\x0c") == 1  # dropped after the first refusal
    assert ("pid-unsupported", {"pids": "0A"}) in rig.events  # not in any ECU's bitmap: never asked
    assert b"\x01\x0a" not in asked


# -- addressing ------------------------------------------------------------------------------------


def test_29_bit_addressing_end_to_end():
    config = ObdConfig(pids=((0x0D, 0.1),), id_bits=29, dtc_interval=1.0, max_rate=30)
    with Rig(config, responders=({"response_id": 0x18DAF110, "extended": True},)) as rig:
        rig.responders[0].inject_dtc("U0100")
        wait_until(lambda: len(rig.named("Vehicle.Speed")) >= 3 and rig.named("Vehicle.OBD.DTCList"), timeout=20)
    assert rig.poller.ecus.keys() == {0x18DAF110 | 0x80000000}
    assert rig.named("Vehicle.VehicleIdentification.VIN")[0][2] == DEFAULT_VIN
    assert rig.named("Vehicle.OBD.DTCList")[-1][2] == "U0100"
    sent = rig.spy.tester_frames()
    check_read_only(sent, extended=True)
    assert {m.arbitration_id for m in sent} == {0x18DB33F1, 0x18DA10F1}


def test_two_ecus_are_discovered_and_each_pid_goes_to_one_of_them():
    config = ObdConfig(pids=((0x0D, 0.1), (0xA6, 0.1)), dtc_interval=0.5, max_rate=40)
    gearbox = {"response_id": 0x7E9, "supported": frozenset({0x0D, 0xA6}), "vin": "WCLDEM0GEARBOX047"}
    with Rig(config, responders=({"supported": frozenset({0x01, 0x05, 0x0C})}, gearbox)) as rig:
        rig.responders[0].inject_dtc("P0301")
        rig.responders[1].inject_dtc("P0700")
        wait_until(lambda: len(rig.named("Vehicle.Speed")) >= 3 and rig.named("Vehicle.OBD.DTCList"), timeout=20)
    assert set(rig.poller.ecus) == {0x7E8, 0x7E9}
    assert {d["ecu"] for k, d in rig.events if k == "ecu-discovered"} == {"7E8", "7E9"}
    assert set(rig.named("Vehicle.OBD.DTCList")[-1][2].split(",")) == {"P0301", "P0700"}
    speed_requests = {m.arbitration_id for m in rig.spy.requests() if bytes(m.data[1:3]) == b"\x01\x0d"}
    assert speed_requests == {0x7E1}  # only the gearbox supports PID 0D
    assert [r for r in rig.responders[0].requests if r[1] == b"\x01\x0d"] == []


def test_configured_ecus_are_addressed_physically_only():
    config = ObdConfig(pids=((0x0D, 0.1),), ecus=(0x7E8,), dtc_interval=0.5, max_rate=30)
    with Rig(config) as rig:
        wait_until(lambda: len(rig.named("Vehicle.Speed")) >= 3 and rig.named("OBD.PERMANENT_DTCS"), timeout=20)
    sent = rig.spy.tester_frames()
    check_read_only(sent)
    assert {m.arbitration_id for m in sent} == {0x7E0}
    assert all(not r[2] for r in rig.responders[0].requests)  # none functional


@pytest.mark.parametrize("mode", ["normal", "silent"])
def test_the_poller_stops_promptly(mode):
    config = ObdConfig(pids=((0x0D, 0.1),), dtc_interval=0, vin=False, backoff=(30.0, 60.0), timeout=0.1)
    with Rig(config, responders=({"mode": mode},)) as rig:
        wait_until(lambda: rig.poller.stats["requests"] >= (2 if mode == "normal" else 1), timeout=20)
    # __exit__ asserts the thread ended within its join timeout, even in a 30 s back-off


def test_junk_on_an_answer_identifier_is_rejected_and_polling_goes_on():
    import random

    config = ObdConfig(pids=((0x0D, 0.05),), dtc_interval=0, vin=False, max_rate=30)
    with Rig(config, responders=({"response_id": 0x7E9},)) as rig:
        junk = can.Bus(interface="virtual", channel=rig.name)
        rig.buses.append(junk)
        wait_until(lambda: rig.named("Vehicle.Speed"), timeout=20)
        rng = random.Random(7)
        crafted = [b"\x10\xff\x41\x0d", b"\x1f\xff" + bytes(6), b"\x21" + bytes(7), b"\x03\x41\x0c\x01",
                   b"\x07\x41\x0d", b"\x02\x7f\x01", b"\x30\x00\x00", b"", b"\x03\x62\xf1\x90"]
        before = len(rig.named("Vehicle.Speed"))
        for i in range(3000):
            data = crafted[i % len(crafted)] if i % 3 else rng.randbytes(rng.randint(0, 8))
            junk.send(can.Message(arbitration_id=0x7E8, data=data, is_extended_id=False))
        wait_until(lambda: sum(1 for s in rig.named("Vehicle.Speed") if s[3] == "OBD.01.0D") >= before + 10, timeout=20)
        assert rig.thread.is_alive()
    assert 0x7E9 in rig.poller.ecus
