"""OBD-II configuration tables: the shapes of docs/obd.md, and errors that name file, line and key."""

from __future__ import annotations

import pytest

from carledger.config import ConfigError
from carledger.obd import ObdConfig, elm327_config_from_table, obd_config_from_table, pid_intervals
from carledger.obd.schedule import Backoff, PollSchedule, RateLimit
from carledger.tomlfile import read_toml

GOOD = """\
[agent]
store = "/tmp/ledger"

[[bus]]
name = "obd-port"
interface = "socketcan"
channel = "can0"
dbc = "car.dbc"

[bus.obd]
id_bits = 11
max_rate = 8
timeout = 0.15
dtc_interval = 120
backoff = [2, 60]

[bus.obd.pids]
"0D" = 1.0
RPM = 0.5
"0x05" = 10

[[elm327]]
port = "/dev/ttyUSB0"
baudrate = 38400
protocol = "6"
vin = false

[elm327.pids]
SPEED = 2
"""


def load(tmp_path, text: str):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return read_toml(path)


def test_the_documented_shape_parses(tmp_path):
    doc = load(tmp_path, GOOD)
    config = obd_config_from_table(doc, doc.data["bus"][0]["obd"], "bus[0].obd")
    assert config == ObdConfig(pids=((0x0D, 1.0), (0x0C, 0.5), (0x05, 10.0)), id_bits=11, max_rate=8.0,
                               timeout=0.15, dtc_interval=120.0, backoff=(2.0, 60.0))
    elm = elm327_config_from_table(doc, doc.data["elm327"][0], "elm327[0]")
    assert (elm.port, elm.baudrate, elm.protocol, elm.vin, elm.pids) == ("/dev/ttyUSB0", 38400, "6", False, ((0x0D, 2.0),))
    assert obd_config_from_table(doc, {}, "bus[0].obd") == ObdConfig()


@pytest.mark.parametrize("line, replacement, field, message", [
    ('max_rate = 8', 'max_rate = 0', "bus[0].obd.max_rate", "must be more than 0"),
    ('max_rate = 8', 'max_rate = "fast"', "bus[0].obd.max_rate", "expected requests per second"),
    ('id_bits = 11', 'id_bits = 12', "bus[0].obd.id_bits", "expected 11 or 29"),
    ('timeout = 0.15', 'timeout = -1', "bus[0].obd.timeout", "must be more than 0"),
    ('dtc_interval = 120', 'dtc_interval = true', "bus[0].obd.dtc_interval", "expected a number of seconds"),
    ('backoff = [2, 60]', 'backoff = [60, 2]', "bus[0].obd.backoff", "0 < first <= longest"),
    ('backoff = [2, 60]', 'backoff = [nan, 60]', "bus[0].obd.backoff", "0 < first <= longest"),
    ('max_rate = 8', 'max_rate = nan', "bus[0].obd.max_rate", "not a finite number"),
    ('timeout = 0.15', 'timeout = nan', "bus[0].obd.timeout", "not a finite number"),
    ('"0x05" = 10', '"0x05" = inf', "bus[0].obd.pids.0x05", "more than 0"),
    ('"0D" = 1.0', '"FF" = 1.0', "bus[0].obd.pids.FF", "not a standard service 01 PID"),
    ('RPM = 0.5', 'SPEEDO = 0.5', "bus[0].obd.pids.SPEEDO", "not a standard service 01 PID"),
    ('"0x05" = 10', '"0x05" = 0', "bus[0].obd.pids.0x05", "more than 0"),
    ('"0x05" = 10', 'SPEED = 3', "bus[0].obd.pids.SPEED", "PID 0D is listed twice"),
    ('timeout = 0.15', 'timout = 0.15', "bus[0].obd.timout", "unknown key"),
    ('timeout = 0.15', 'port = "/dev/ttyUSB0"', "bus[0].obd.port", "unknown key"),
])
def test_mistakes_name_the_line_and_key(tmp_path, line, replacement, field, message):
    assert line in GOOD
    text = GOOD.replace(line, replacement, 1)
    doc = load(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        obd_config_from_table(doc, doc.data["bus"][0]["obd"], "bus[0].obd")
    error = caught.value
    assert error.field == field and message in error.message
    assert error.line == text.splitlines().index(replacement) + 1
    assert str(error).startswith(f"{doc.path}:{error.line}: {field}: ")


@pytest.mark.parametrize("line, replacement, field, message", [
    ('port = "/dev/ttyUSB0"', 'timeout = 0.5', "elm327[0].port", "required"),
    ('protocol = "6"', 'protocol = "3"', "elm327[0].protocol", "not an ISO 15765-4 CAN protocol"),
    ('protocol = "6"', 'protocol = 6', "elm327[0].protocol", "expected a protocol number as a string"),
    ('baudrate = 38400', 'baudrate = -1', "elm327[0].baudrate", "must be more than 0"),
])
def test_elm327_mistakes(tmp_path, line, replacement, field, message):
    text = GOOD.replace(line, replacement, 1)
    doc = load(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        elm327_config_from_table(doc, doc.data["elm327"][0], "elm327[0]")
    assert caught.value.field == field and message in caught.value.message
    assert caught.value.line is not None


def test_ecus_must_be_answer_identifiers_of_the_addressing(tmp_path):
    doc = load(tmp_path, GOOD.replace("id_bits = 11", "id_bits = 29\necus = [0x7E8]"))
    with pytest.raises(ConfigError, match="0x18DAF100 to 0x18DAF1FF for 29-bit"):
        obd_config_from_table(doc, doc.data["bus"][0]["obd"], "bus[0].obd")
    doc = load(tmp_path, GOOD.replace("id_bits = 11", "ecus = [0x7E8, 0x7E9]"))
    assert obd_config_from_table(doc, doc.data["bus"][0]["obd"], "bus[0].obd").ecus == (0x7E8, 0x7E9)


def test_policy_names_map_to_pid_intervals():
    assert pid_intervals([("Vehicle.Speed", 1.0), ("Vehicle.Powertrain.CombustionEngine.Speed", 0.5),
                          ("Vehicle.Speed", 0.2), ("Vehicle.CurrentLocation.Latitude", 1.0)]) == {0x0D: 0.2, 0x0C: 0.5}
    assert pid_intervals([("OBD.ACTUAL_ENGINE_TORQUE", 2.0)]) == {0x62: 2.0}


# -- the timing rules, without a bus --------------------------------------------------------------


def test_schedule_runs_the_most_overdue_item_and_keeps_intervals():
    schedule = PollSchedule([(0x0D, 1.0), (0x05, 10.0)])
    schedule.reset(now=100.0)
    asked = []
    now = 100.0
    while now < 120.0:
        item, due = schedule.next()
        now = max(now, due)
        asked.append((item, now))
        schedule.done(item, now)
    assert sum(1 for item, t in asked if item == 0x0D and t < 120.0) == 20
    assert [t for item, t in asked if item == 0x05] == [100.0, 110.0]
    schedule.replace([(0x0D, 1.0), (0x0C, 0.5)], now=now)
    assert schedule.next() == (0x0C, now)  # new items are due at once, kept ones keep their time
    schedule.remove(0x0C)
    assert 0x0C not in schedule and schedule.next()[0] == 0x0D


def test_rate_limit_and_backoff():
    limit = RateLimit(4.0)
    assert limit.wait(10.0) == 0.0
    limit.sent(10.0)
    assert limit.wait(10.1) == pytest.approx(0.15)
    assert limit.wait(10.3) == 0.0
    backoff = Backoff(1.0, 8.0)
    delays = [backoff.delay() for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8]):
        assert 0.75 * nominal <= delay <= nominal
    backoff.reset()
    assert backoff.delay() <= 1.0
    with pytest.raises(ValueError):
        RateLimit(0)
