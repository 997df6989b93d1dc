"""UDS on the simulated EV (issue 17): its BMS answers DIDs, polled read-only and decoded passively; a J1939 BAM.

Everything runs on python-can virtual buses. What the poller transmits is
counted by a separate listener (`Spy`), not by the poller's own counters.
"""

from __future__ import annotations

import textwrap
import threading
import uuid

import can
import cantools
import pytest

from carledger.decode import DecodeTable
from carledger.obd.uds import UdsPoller, did_table, dids_to_poll, read_request
from carledger.obd.uds_config import UdsConfig
from carledger.sources.frame import EFF_FLAG
from carledger.transport import TransportDecoder
from carledger_sim.car import SimulatedCar
from carledger_sim.ev import DM1_PAYLOAD, BamBroadcaster, EvResponder, ev_battery
from carledger_sim.obd_responder import DriveClock
from conftest import REPO, wait_until
from test_obd_poll import Spy, is_answer_id

EV_DBC = REPO / "dbc" / "carledger_ev.dbc"
HELD = 290.0  # the drive second the BMS answers from: 1.6 km into the drive, 46 km/h, pulling


class Listener:
    """Another node's passive view: every frame through the transport decoder, then the EV DBC."""

    def __init__(self, channel: str):
        self.bus = can.Bus(interface="virtual", channel=channel)
        self.db = cantools.database.load_file(str(EV_DBC))
        self.table = DecodeTable([self.db])
        self.transport = TransportDecoder()
        self.values: list[tuple[int, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            m = self.bus.recv(0.05)
            if m is None:
                continue
            key = m.arbitration_id | EFF_FLAG if m.is_extended_id else m.arbitration_id
            if not self.transport.claims(key):
                continue
            for _, mkey, data in self.transport.feed(m.timestamp, key, bytes(m.data)):
                extractor = self.table.lookup(mkey)
                if extractor is not None:
                    self.values.append((mkey, {n: v for n, v in zip(extractor.names, extractor.extract(data))
                                               if v is not None}))

    def named(self, signal: str) -> list:
        return [v[signal] for _, v in list(self.values) if signal in v]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.bus.shutdown()


class EvRig:
    def __init__(self, config: UdsConfig, dids: dict, **responder):
        self.channel = f"uds-{uuid.uuid4().hex}"
        self.car = SimulatedCar("city", seed=3, duration=300)
        self.car.history()
        self.clock = DriveClock(self.car)
        self.clock.hold(HELD)
        self.spy = Spy(self.channel)
        self.listener = Listener(self.channel)
        self.ecu_bus = can.Bus(interface="virtual", channel=self.channel)
        self.bms = EvResponder(self.ecu_bus, self.clock, **responder).start()
        self.poller_bus = can.Bus(interface="virtual", channel=self.channel)
        self.events: list[tuple[str, dict]] = []
        self.answers: list[tuple[float, int, bytes]] = []
        self.poller = UdsPoller(self.poller_bus, config, lambda k, d: self.events.append((k, d)),
                                lambda *a: self.answers.append(a))
        self.poller.set_dids(dids)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poller.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> "EvRig":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.bms.stop()
        self.spy.close()
        self.listener.close()
        self.ecu_bus.shutdown()
        self.poller_bus.shutdown()

    def kinds(self) -> list[str]:
        return [k for k, _ in list(self.events)]


def check_read_requests(frames: list[can.Message]) -> None:
    """Every frame the tester sent: a single-frame ReadDataByIdentifier to 0x7E4, or flow control."""
    assert frames
    for m in frames:
        data = bytes(m.data)
        assert not m.is_extended_id and m.arbitration_id == 0x7E4, hex(m.arbitration_id)
        assert data[0] == 0x03 and data[1] == 0x22 or data[0] >> 4 == 3, data.hex()


def test_the_simulated_ev_polled_and_listened_to_gives_the_drive_models_battery():
    expected = ev_battery(SimulatedCar("city", seed=3, duration=300).state_at(HELD))
    dids = {(0x7EC, 0x0101): 0.1, (0x7EC, 0x0105): 0.2}
    with EvRig(UdsConfig(poll=True, timeout=0.3), dids) as rig:
        wait_until(lambda: len(rig.listener.named("StateOfCharge")) >= 3 and rig.listener.named("StateOfHealth"))
        wait_until(lambda: len(rig.answers) >= 4)
    soc = rig.listener.named("StateOfCharge")
    assert all(abs(v - expected.soc) <= 0.25 for v in soc), (soc, expected.soc)  # 0.5 % steps, rounded
    assert rig.listener.named("StateOfHealth")[0] == pytest.approx(expected.soh, abs=0.05)
    for signal, value, step in (("PackVoltage", expected.pack_voltage, 0.1), ("CellVoltageMax", expected.cell_voltage_max, 0.001),
                                ("CellVoltageMin", expected.cell_voltage_min, 0.001), ("PackCurrent", expected.pack_current, 0.1),
                                ("TemperatureMax", expected.temperature_max, 1)):
        assert abs(rig.listener.named(signal)[0] - value) <= step / 2 + 1e-9, signal
    assert expected.pack_current > 10  # the car is accelerating at that second: the pack sags
    # the answer to 0x0101 is 14 bytes: a first frame and a consecutive frame on the bus
    firsts = [m for m in rig.spy.frames if m.arbitration_id == 0x7EC and m.data[0] == 0x10]
    assert firsts and all(m.data[1] == 14 and bytes(m.data[2:5]) == b"\x62\x01\x01" for m in firsts)
    assert {d[:3] for _, _, d in rig.answers} == {b"\x62\x01\x01", b"\x62\x01\x05"}
    check_read_requests(rig.spy.tester_frames())
    assert len(rig.spy.tester_frames()) == rig.poller.stats["frames_sent"]
    assert rig.listener.transport.stats.events == {}


def test_polling_sends_only_read_requests_and_keeps_each_dids_interval():
    dids = {(0x7EC, 0x0101): 0.3}
    with EvRig(UdsConfig(poll=True, max_rate=50), dids) as rig:
        wait_until(lambda: len(rig.spy.requests()) >= 6)
    check_read_requests(rig.spy.tester_frames())
    requests = rig.spy.requests()
    assert {bytes(m.data[:4]) for m in requests} == {b"\x03\x22\x01\x01"}
    times = [m.timestamp for m in requests]
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.3 * 0.98
    assert rig.poller.stats["negative"] == rig.poller.stats["timeouts"] == 0


def test_negative_answers_are_counted_and_unsupported_dids_dropped():
    dids = {(0x7EC, 0x0101): 0.1, (0x7EC, 0x0199): 0.1}
    with EvRig(UdsConfig(poll=True), dids) as rig:
        wait_until(lambda: rig.poller.stats["answers"] >= 5)
    stats = rig.poller.stats
    assert stats["negative"] == 1 and stats["dropped"] == 1  # 7F 22 31 once, then never asked again
    asked = [bytes(m.data[:4]) for m in rig.spy.requests()]
    assert asked.count(b"\x03\x22\x01\x99") == 1
    negative = [d for k, d in rig.events if k == "negative-response"]
    assert negative == [{"ecu": "7EC", "did": "0199", "code": 0x31, "name": "requestOutOfRange", "action": "dropped"}]


def test_response_pending_is_waited_for():
    with EvRig(UdsConfig(poll=True, timeout=0.1, pending_timeout=2.0), {(0x7EC, 0x0101): 0.2},
               mode="pending", delay=0.3) as rig:
        wait_until(lambda: rig.poller.stats["answers"] >= 3)
    stats = rig.poller.stats
    assert stats["pending"] >= 3 and stats["timeouts"] == 0
    assert len(rig.listener.named("StateOfCharge")) >= 3


def test_29_bit_addressing():
    key = EFF_FLAG | 0x18DAF1E4
    with EvRig(UdsConfig(poll=True, id_bits=29), {(key, 0x0101): 0.1}, response_id=0x18DAF1E4, extended=True) as rig:
        wait_until(lambda: len(rig.answers) >= 2)
    assert {(k, d[:3]) for _, k, d in rig.answers} == {(key, b"\x62\x01\x01")}
    sent = rig.spy.tester_frames()
    assert sent and all(m.is_extended_id and m.arbitration_id == 0x18DAE4F1 for m in sent)
    assert all(bytes(m.data[:4]) == b"\x03\x22\x01\x01" or m.data[0] >> 4 == 3 for m in sent)
    assert rig.listener.transport.stats.messages >= 2  # reassembled passively too (0x18DA.... is ISO-TP)


def test_a_did_of_an_ecu_without_a_known_request_id_is_reported_not_guessed():
    dids = {(0x7EC, 0x0101): 0.2, (0x7CE, 0xB002): 0.2}
    with EvRig(UdsConfig(poll=True), dids) as rig:
        wait_until(lambda: rig.poller.stats["answers"] >= 2)
    assert ("uds-unaddressable", {"ecu": "7CE", "did": "B002",
            "reason": "no request identifier: add [request, response] to [bus.uds] pairs"}) in rig.events
    assert {m.arbitration_id for m in rig.spy.tester_frames()} == {0x7E4}


def test_silence_is_timeouts_reported_once_then_back_off():
    config = UdsConfig(poll=True, timeout=0.05, silent_after=3, backoff=(0.2, 0.4))
    with EvRig(config, {(0x7EC, 0x0101): 0.05}, mode="silent") as rig:
        wait_until(lambda: rig.poller.stats["timeouts"] >= 7)
    kinds = rig.kinds()
    assert kinds.count("timeout") == 1 and kinds.count("ecu-silent") >= 2
    assert rig.poller.stats["answers"] == 0 and rig.listener.values == []
    check_read_requests(rig.spy.tester_frames())


def test_the_did_table_comes_from_the_dbc_and_the_policy_picks_what_is_polled():
    table = did_table([cantools.database.load_file(str(EV_DBC))])
    assert set(table) == {(0x7EC, 0x0101), (0x7EC, 0x0105)}
    assert "BMS_UDS.StateOfCharge" in table[(0x7EC, 0x0101)] and table[(0x7EC, 0x0105)] == ["BMS_UDS.StateOfHealth"]
    taken = {"BMS_UDS.StateOfCharge": 5.0, "BMS_UDS.PackVoltage": 2.0}
    assert dids_to_poll(table, taken.get) == {(0x7EC, 0x0101): 2.0}
    assert read_request(0x0101) == b"\x22\x01\x01"
    assert UdsConfig().request_for(0x7EC) == 0x7E4
    assert UdsConfig(pairs=((0x7C6, 0x7CE),)).request_for(0x7CE) == 0x7C6
    assert UdsConfig().request_for(EFF_FLAG | 0x18DAF10E) == EFF_FLAG | 0x18DA0EF1


def test_the_simulators_j1939_bam_is_reassembled_and_decoded_by_pgn():
    channel = f"bam-{uuid.uuid4().hex}"
    listener = Listener(channel)
    spy = Spy(channel)
    bus = can.Bus(interface="virtual", channel=channel)
    try:
        with BamBroadcaster(bus, period=0.2):
            wait_until(lambda: len(listener.values) >= 3)
    finally:
        bus.shutdown()
        listener.close()
        spy.close()
    assert all(key == EFF_FLAG | 0x18FECAF3 for key, _ in listener.values)
    dm1 = listener.values[0][1]
    assert dm1["AmberWarningLamp"] == 1 and dm1["MalfunctionLamp"] == 0
    assert (dm1["DTC1_SPN_Low"] + 65536 * dm1["DTC1_SPN_High"], dm1["DTC1_FMI"], dm1["DTC1_OccurrenceCount"]) == (5919, 18, 1)
    assert (dm1["DTC2_SPN_Low"] + 65536 * dm1["DTC2_SPN_High"], dm1["DTC2_FMI"], dm1["DTC2_OccurrenceCount"]) == (520425, 3, 2)
    assert "DTC3_FMI" not in dm1  # 10 bytes carry two DTCs: the rest is absent, not made up
    frames = [m for m in spy.frames if m.is_extended_id]
    assert [m.arbitration_id >> 16 & 0xFF for m in frames[:3]] == [0xEC, 0xEB, 0xEB]  # TP.CM, then 2 TP.DT
    assert listener.transport.stats.events == {} and len(DM1_PAYLOAD) == 10


def reads(spy) -> list:
    """The tester's single-frame requests the spy saw (not the ECU's answers, not J1939)."""
    return [m for m in list(spy.frames) if not m.is_extended_id and not is_answer_id(m) and m.data[0] >> 4 == 0]


# -- through the whole agent ------------------------------------------------------------------------

def test_the_agent_polls_only_the_dids_its_policy_takes_and_records_the_evs_battery(tmp_path, capsys):
    from carledger.cli import main
    from carledger.config import load_config
    from carledger.pipeline import Pipeline
    from test_obd_pipeline import agent, export, sealed

    channel = f"ev-{uuid.uuid4().hex}"
    car = SimulatedCar("city", seed=3, duration=300)
    car.history()
    clock = DriveClock(car)
    clock.hold(HELD)
    expected = ev_battery(car.state_at(HELD))
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    bam_bus = can.Bus(interface="virtual", channel=channel)
    spy = Spy(channel)
    config = agent(tmp_path, f"""
        [[bus]]
        name = "ev"
        interface = "virtual"
        channel = "{channel}"
        dbc = ["{EV_DBC}"]
        [bus.uds]
        poll = true
        max_rate = 20
    """, """
        [[stream]]
        name = "battery"
        local = true
        min_interval = "0.2s"
        signals = ["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
                   "Vehicle.Powertrain.TractionBattery.CellVoltage.*", "DM1.*"]
    """)
    try:
        with EvResponder(ecu_bus, clock), BamBroadcaster(bam_bus, period=0.3):
            pipeline = Pipeline(load_config(config))
            thread = threading.Thread(target=pipeline.run, daemon=True)
            thread.start()
            try:
                # Enough sealed records, and enough requests to measure their spacing (one answer holds many).
                wait_until(lambda: sealed(tmp_path / "ledger", "battery") >= 10 and len(reads(spy)) >= 3, timeout=30)
            finally:
                pipeline.stop()
                thread.join(15)
    finally:
        spy.close()
        ecu_bus.shutdown()
        bam_bus.shutdown()
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "ledger")]) == 0
    records = export(tmp_path / "ledger", "battery")
    soc = [r["value"] for r in records if r["name"] == "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]
    assert soc and all(abs(v - expected.soc) <= 0.25 for v in soc)
    cell_min = [r["value"] for r in records if r["name"] == "Vehicle.Powertrain.TractionBattery.CellVoltage.Min"]
    assert cell_min and abs(cell_min[0] - expected.cell_voltage_min) <= 0.0005 + 1e-9
    assert not any("StateOfHealth" in r["name"] or "PackVoltage" in r["name"] for r in records)  # not taken
    fmi = [r["value"] for r in records if r["name"] == "DM1.DTC1_FMI"]
    assert fmi and set(fmi) == {18}  # the BAM, reassembled, decoded by PGN
    check_read_requests([m for m in spy.frames if not m.is_extended_id and not is_answer_id(m)])
    asked = {bytes(m.data[:4]) for m in reads(spy)}
    assert asked == {b"\x03\x22\x01\x01"}  # 0x0105 (state of health) is in the DBC, but no stream takes it
    times = [m.timestamp for m in reads(spy)]
    assert len(times) >= 3 and min(b - a for a, b in zip(times, times[1:])) >= 0.2 * 0.98  # the stream's min_interval


@pytest.mark.parametrize("table, message", [
    ("pairs = [[0x7E4]]", "bus[0].uds.pairs[0]: expected [request, response]"),
    ("pairs = [[0x7E4, 0x18DAF1E4]]", "bus[0].uds.pairs[0]: expected [request, response]"),
    ("poll = \"yes\"", "bus[0].uds.poll: expected true or false"),
    ("max_rate = 0", "bus[0].uds.max_rate: must be more than 0"),
    ("id_bits = 16", "bus[0].uds.id_bits: expected 11 or 29"),
    ("dids = [1]", "bus[0].uds.dids: unknown key"),
])
def test_a_bad_uds_table_is_one_line_naming_file_line_and_key(tmp_path, table, message):
    from carledger.config import ConfigError, load_config

    (tmp_path / "agent.toml").write_text(textwrap.dedent(f"""\
        [agent]
        store = "ledger"
        [[bus]]
        name = "ev"
        interface = "virtual"
        dbc = ["{EV_DBC}"]
        [bus.uds]
        {table}
    """))
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "agent.toml")
    assert str(caught.value).startswith(f"{tmp_path / 'agent.toml'}:8: {message}"), str(caught.value)


def test_a_replayed_log_cannot_be_polled(tmp_path):
    from carledger.config import ConfigError, load_config

    (tmp_path / "x.log").write_text("")
    (tmp_path / "agent.toml").write_text(f'[agent]\nstore = "l"\n[[bus]]\nname = "ev"\nreplay = "x.log"\n'
                                         f'dbc = ["{EV_DBC}"]\n[bus.uds]\npoll = true\n')
    with pytest.raises(ConfigError, match="a replayed log cannot be polled"):
        load_config(tmp_path / "agent.toml")
    (tmp_path / "agent.toml").write_text(f'[agent]\nstore = "l"\n[[bus]]\nname = "ev"\nreplay = "x.log"\n'
                                         f'dbc = ["{EV_DBC}"]\n[bus.uds]\npairs = [[0x7C6, 0x7CE]]\n')
    assert load_config(tmp_path / "agent.toml").buses[0].uds.pairs == ((0x7C6, 0x7CE),)


def test_the_ev_example_policy_of_the_docs_polls_what_it_says():
    from carledger.decode import VssMapping
    from carledger.policy import policy_from_text

    text = (REPO / "docs" / "uds.md").read_text()
    policy_toml = text.split("## An EV example policy")[1].split("```toml\n")[1].split("```")[0]
    policy = policy_from_text("uds.md", policy_toml, check_expiry=False)
    mapping = VssMapping.load([str(REPO / "dbc" / "carledger_ev.vss.toml")])

    def interval(source: str) -> float | None:
        takers = [s.min_interval for s in policy.streams if s.selects(mapping.name(source), source)]
        return min(takers) if takers else None

    table = did_table([cantools.database.load_file(str(EV_DBC))])
    assert dids_to_poll(table, interval) == {(0x7EC, 0x0101): 5.0, (0x7EC, 0x0105): 60.0}


def test_carledger_sim_ev_answers_dids_and_sends_the_bam():
    from carledger_sim.cli import main as sim

    channel = f"sim-ev-{uuid.uuid4().hex}"
    listener = Listener(channel)
    exits: list[int] = []
    thread = threading.Thread(target=lambda: exits.append(sim(["ev", "--interface", "virtual", "--channel", channel,
                                                                 "--duration", "4", "--bam-period", "0.2"])))
    thread.start()
    bus = can.Bus(interface="virtual", channel=channel)
    poller = UdsPoller(bus, UdsConfig(poll=True))
    poller.set_dids({(0x7EC, 0x0101): 0.2})
    stop = threading.Event()
    polling = threading.Thread(target=poller.run, args=(stop,))
    polling.start()
    try:
        wait_until(lambda: listener.named("StateOfCharge") and listener.named("DTC1_FMI"))
    finally:
        stop.set()
        polling.join(10)
        thread.join(15)
        bus.shutdown()
        listener.close()
    assert exits == [0]
    assert 0 < listener.named("StateOfCharge")[0] <= 80 and listener.named("DTC1_FMI")[0] == 18
