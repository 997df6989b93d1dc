"""`carledger doctor`: each check on real inputs, and the whole command on a vcan with a partially known DBC."""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from pathlib import Path

import can
import cantools
import pytest

from carledger.cli import main
from carledger.config import local_streams_policy
from carledger.cli.doctor import (
    FAIL, OK, SKIP, WARN, check_broker, check_clock, check_key, check_store, describe_interface, describe_traffic,
)
from carledger.dbc import path as dbc_path
from carledger.ledger import load_or_create_signing_key
from carledger.sources.candump import read_candump_file
from conftest import wait_until
from harness import find_vcan, run_guest
from harness.drives import write_drive_log

KNOWN = ("ABS_SPEED", "ECM_ENGINE", "TCM_GEAR")  # the part of the demo car a "partial" DBC knows


def partial_dbc(path: Path) -> Path:
    db = cantools.database.load_file(dbc_path("carledger_demo.dbc"))
    db.messages[:] = [m for m in db.messages if m.name in KNOWN]
    db.refresh()
    path.write_text(db.as_dbc_string())
    return path


def doctor_json(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["doctor", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


# -- the traffic check on python-can's virtual bus --------------------------------------


def one_bus_config(tmp_path: Path, interface: str, channel: str) -> Path:
    """An agent configuration with one bus, "car", on the partial DBC, recording its speed locally."""
    config = tmp_path / "agent.toml"
    policy = tmp_path / "policy.toml"
    policy.write_text(local_streams_policy({"speed": ["ABS_SPEED.*"]}))
    config.write_text(textwrap.dedent(f"""
        [agent]
        store = "{tmp_path / 'ledger'}"
        policy = "{policy}"
        [[bus]]
        name = "car"
        interface = "{interface}"
        channel = "{channel}"
        dbc = ["{partial_dbc(tmp_path / 'partial.dbc')}"]
    """))
    return config


def test_decodable_share_and_busy_unknown_ids_on_a_virtual_bus(tmp_path, capsys):
    channel = f"doctor-{uuid.uuid4().hex[:8]}"
    config = one_bus_config(tmp_path, "virtual", channel)
    # each round: 3 frames the DBC knows (0B4, 0C8, 0C8), 1 it does not (123), and every 4th round a rare 7FF
    stop = threading.Event()

    def car() -> None:
        bus = can.Bus(interface="virtual", channel=channel)
        n = 0
        while not stop.is_set():
            for can_id in (0x0B4, 0x0C8, 0x0C8, 0x123) + ((0x7FF,) if n % 4 == 0 else ()):
                bus.send(can.Message(arbitration_id=can_id, data=bytes(8), is_extended_id=False))
            n += 1
            time.sleep(0.002)
        bus.shutdown()

    sender = threading.Thread(target=car)
    sender.start()
    try:
        code, report = doctor_json(capsys, "-c", str(config), "--listen", "1.5")
    finally:
        stop.set()
        sender.join()
    traffic = by_name(report)["traffic on car"]["details"]
    # 3 known of 4.25 frames a round; a round cut at either end of the window moves it by < 1 %
    assert traffic["share"] == pytest.approx(3 / 4.25, abs=0.01)
    assert [b["id"] for b in traffic["busy_unknown"]] == ["123", "7FF"]
    assert traffic["unknown_identifiers"] == 2 and traffic["frames"] > 500
    assert code == 0 and report["verdict"] in (OK, WARN)


def test_a_bus_that_cannot_open_is_told_where_to_look(tmp_path, capsys):
    """Only a SocketCAN bus has an interface check to point at; any other names its configuration."""
    config = one_bus_config(tmp_path, "nosuchinterface", "can0")
    code, report = doctor_json(capsys, "-c", str(config), "--listen", "0.2")
    traffic = by_name(report)["traffic on car"]
    assert code == 1 and traffic["status"] == FAIL and 'Unknown interface type "nosuchinterface"' in traffic["summary"]
    assert "check bus 'car' in the configuration" in traffic["fix"] and "above" not in traffic["fix"]


def test_traffic_verdicts():
    def known(key: int) -> bool:
        return key == 0x100

    assert describe_traffic("t", collections.Counter(), known, 2).status == WARN  # silence
    nothing = describe_traffic("t", collections.Counter({0x200: 50}), known, 2)
    assert nothing.status == FAIL and "right DBC" in nothing.fix
    mostly = describe_traffic("t", collections.Counter({0x100: 90, 0x200: 10}), known, 2)
    assert mostly.status == OK and mostly.details["share"] == 0.9
    extended = describe_traffic("t", collections.Counter({0x100: 10, 0x98FEF100: 30}), known, 2)
    assert extended.status == WARN and extended.details["busy_unknown"][0] == {"id": "18FEF100", "frames": 30, "per_second": 15.0}


# -- interfaces, from what `ip -details -json link` says ---------------------------------

CAN0 = {
    "ifname": "can0", "flags": ["NOARP", "UP", "LOWER_UP", "ECHO"], "mtu": 16, "operstate": "UP",
    "linkinfo": {"info_kind": "can", "info_data": {
        "ctrlmode": ["LISTEN-ONLY"], "state": "ERROR-ACTIVE", "berr_counter": {"tx": 0, "rx": 0}, "restart_ms": 100,
        "bittiming": {"bitrate": 500000, "sample_point": "0.875", "tq": 125, "prop_seg": 6, "phase_seg1": 7,
                      "phase_seg2": 2, "sjw": 1, "brp": 1},
        "clock": 8000000}},
}


def with_data(**changes) -> dict:
    details = json.loads(json.dumps(CAN0))
    details["linkinfo"]["info_data"].update(changes)
    return details


def test_interface_states_bitrates_and_fixes():
    good = describe_interface("can0", CAN0, 500000, False)
    assert good.status == OK and good.summary == "up, 500000 bit/s, error-active, error counters tx 0 rx 0"
    assert good.details["listen_only"] is True
    mismatch = describe_interface("can0", CAN0, 250000, False)
    assert mismatch.status == WARN and "runs at 500000" in mismatch.summary
    passive = describe_interface("can0", with_data(state="ERROR-PASSIVE", berr_counter={"tx": 0, "rx": 135}), None, False)
    assert passive.status == WARN and "rx 135" in passive.summary and "termination" in passive.fix
    off = describe_interface("can0", with_data(state="BUS-OFF"), None, False)
    assert off.status == FAIL and "bus-off" in off.summary
    down = dict(CAN0, flags=["NOARP", "ECHO"])
    assert describe_interface("can0", down, None, False).status == FAIL
    absent = describe_interface("can0", None, None, False)
    assert absent.status == FAIL and "dtoverlay" in absent.fix
    assert describe_interface("can0", CAN0, None, True).status == FAIL  # FD configured, classic mtu


# -- clock, key, store, broker -----------------------------------------------------------


def test_clock_never_set_or_behind_the_store(tmp_path):
    assert check_clock(86400.0, str(tmp_path), synchronized=False).status == FAIL  # 1970: no RTC, no NTP yet
    assert check_clock(time.time(), str(tmp_path), synchronized=False).status == WARN
    assert check_clock(time.time(), str(tmp_path), synchronized=True).status == OK
    store = tmp_path / "ledger"
    assert main(["run", "--replay", str(write_log(tmp_path)), "--dbc", dbc_path("carledger_demo.dbc"),
                 "--store", str(store), "--fast", "--stream", "s=Vehicle.Speed"]) == 0
    behind = check_clock(1_710_000_000.0, str(store), synchronized=True)  # before the drive's 2026 blocks
    assert behind.status == FAIL and "before the newest block" in behind.summary


def write_log(tmp_path: Path) -> Path:
    log = tmp_path / "drive.log"
    write_drive_log(log)
    lines = log.read_text().splitlines()
    now = time.time()
    first = float(lines[0].split()[0][1:-1])
    log.write_text("\n".join(  # the same drive, happening now
        f"({float(line.split()[0][1:-1]) - first + now:.6f}) {line.split(' ', 1)[1]}" for line in lines) + "\n")
    return log


def test_key_permissions(tmp_path):
    assert check_key(str(tmp_path)).status == OK  # not created yet
    load_or_create_signing_key(tmp_path)
    key = tmp_path / "keys" / "vehicle.key"
    assert check_key(str(tmp_path)).status == OK and oct(key.stat().st_mode & 0o777) == "0o600"
    key.chmod(0o644)
    exposed = check_key(str(tmp_path))
    assert exposed.status == FAIL and f"chmod 600 {key}" in exposed.fix


def test_store_health_and_room(tmp_path):
    fresh = check_store(str(tmp_path / "ledger"))
    assert fresh.status == OK and "not created yet" in fresh.summary and fresh.details["free_bytes"] > 0
    store = tmp_path / "ledger"
    assert main(["run", "--replay", str(write_log(tmp_path)), "--dbc", dbc_path("carledger_demo.dbc"),
                 "--store", str(store), "--fast", "--stream", "s=Vehicle.Speed"]) == 0
    healthy = check_store(str(store))
    assert healthy.status == OK and healthy.details["blocks"] > 0 and healthy.details["integrity"] == "ok"
    with open(store / "ledger.sqlite", "r+b") as f:  # junk over the middle of the database
        f.seek(4096)
        f.write(os.urandom(8192))
    assert check_store(str(store)).status == FAIL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"),
                    reason="mosquitto not installed (scripts/setup installs it)")
def test_broker_reachable_refused_and_not_configured(tmp_path):
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 20)
        reachable = check_broker(("127.0.0.1", port))
        assert reachable.status == OK and reachable.details["connack"] == 0
    finally:
        broker.terminate()
        broker.wait(10)
    refused = check_broker(("127.0.0.1", port))
    assert refused.status == WARN and "not reachable" in refused.summary
    assert check_broker(None).status == SKIP and "not configured" in check_broker(None).summary


def test_exit_codes_and_text_output(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nstore = 5\n")
    assert main(["doctor", "-c", str(bad)]) == 2
    assert "bad.toml:2: agent.store" in capsys.readouterr().out
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        [[bus]]
        name = "can0"
        interface = "socketcan"
        channel = "nosuchcan9"
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """))
    assert main(["doctor", "-c", str(config), "--listen", "0.2", "--broker", "127.0.0.1:1"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] interface nosuchcan9: no such interface" in out and "fix: " in out
    assert out.rstrip().endswith("verdict: not ready: fix the failures above")


# -- on a real vcan ------------------------------------------------------------------------

VCAN, WHY_NOT = find_vcan()


@pytest.mark.skipif(VCAN is None, reason=f"no SocketCAN: {WHY_NOT}")
def test_doctor_on_a_vcan_with_a_partially_known_dbc(tmp_path_factory, request):
    out = tmp_path_factory.mktemp("doctor")
    drive = out / "drive.log"
    write_drive_log(drive)
    dbc = partial_dbc(out / "partial.dbc")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(f"\ndoctor on {VCAN.description}")
    run = run_guest(VCAN, Path(__file__).parent / "harness" / "doctor_guest.py", out, {"can": 16, "down": 16},
                    env={"CARLEDGER_DRIVE_LOG": str(drive), "CARLEDGER_PARTIAL_DBC": str(dbc)})
    result = run.result("doctor_on_vcan")
    checks = by_name(result["report"])
    db = cantools.database.load_file(str(dbc))
    known_ids = {m.frame_id for m in db.messages}
    frames = list(read_candump_file(str(drive)))
    expected = sum(1 for f in frames if f[1] in known_ids) / len(frames)
    traffic = checks["traffic on car"]
    print(f"[{VCAN.mode}] doctor: {traffic['summary']} (the drive log: {expected:.1%} decodable)")
    assert traffic["details"]["share"] == pytest.approx(expected, abs=0.03)
    busiest = collections.Counter(f[1] for f in frames if f[1] not in known_ids).most_common(2)  # 0D0, 130: 100/s each
    assert {b["id"] for b in traffic["details"]["busy_unknown"][:2]} == {f"{key:03X}" for key, _ in busiest}
    assert checks[f"interface {run.interfaces['can']}"]["status"] == OK
    assert "virtual CAN" in checks[f"interface {run.interfaces['can']}"]["summary"]
    down = checks[f"interface {run.interfaces['down']}"]
    assert down["status"] == FAIL and "down" in down["summary"] and "ip link set" in down["fix"]
    assert checks["traffic on spare"]["status"] == SKIP
    assert result["report"]["verdict"] == FAIL and result["exit"] == 1
