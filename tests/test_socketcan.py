"""The SocketCAN tier: the agent, firmware-sim's drives and can-utils on a real vcan.

One guest run per module (tests/harness/socketcan_guest.py), inside
user-mode-linux where the host kernel has no CAN, else on host vcan
interfaces; every test below checks one scenario's results, and its id says
which vcan it ran on ([uml] or [host]).
"""

from __future__ import annotations

import json
from pathlib import Path

import cantools
import pytest

from carledger.cli import main
from carledger.dbc import path as dbc_path
from carledger.sources.candump import read_candump_file
from harness import find_vcan, run_guest
from harness.drives import write_drive_log

VCAN, WHY_NOT = find_vcan()
GUEST = Path(__file__).parent / "harness" / "socketcan_guest.py"
SPEED_ID = 0x0B4
SENTINEL_SPEED = 655.35

pytestmark = pytest.mark.skipif(VCAN is None, reason=f"no SocketCAN: {WHY_NOT}")


@pytest.fixture(scope="module", params=[VCAN.mode if VCAN else "none"])
def guest(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("socketcan")
    drive = out / "drive.log"
    write_drive_log(drive)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(f"\nSocketCAN tier on {VCAN.description}")
    run = run_guest(VCAN, GUEST, out, {"can": 16, "fd": 72}, env={"CARLEDGER_DRIVE_LOG": str(drive)})
    if reporter:
        reporter.write_line(f"SocketCAN tier: guest exit {run.returncode}, results in {out}")
    return run


def exported(store: Path, stream: str, capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["log", "export", str(store), "--stream", stream, "--events"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def values_by_name(rows: list[dict]) -> dict[str, list]:
    series: dict[str, list] = {}
    for row in rows:
        if "name" in row and row["value"] != SENTINEL_SPEED:
            series.setdefault(row["name"], []).append(row["value"])
    return series


def changes(values: list) -> list:
    """Consecutive repeats dropped: what on-change sampling records."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def test_cangen_frames_are_decoded_and_kernel_filters_keep_the_rest_out(guest, capsys):
    result = guest.result("cangen_through_kernel_filters")
    dump = list(read_candump_file(str(guest.files("cangen_through_kernel_filters") / "candump.log")))
    wanted = [f for f in dump if f[1] == SPEED_ID]
    print(f"[{guest.vcan.mode}] on the bus {len(dump)} frames, {len(wanted)} of them 0x0B4; "
          f"the agent's socket received {result['agent_frames']}; kernel filters {result['kernel_filters']}")
    # the kernel's filter for the one needed ID is installed, and it is what let frames in
    speed_filters = [f for f in result["kernel_filters"] if int(f["can_id"], 16) == SPEED_ID]
    assert speed_filters and speed_filters[0]["matches"] == len(wanted)
    assert result["agent_frames"] == len(wanted) < len(dump) == result["candump_lines"] == 601
    # every change of the speed on the bus is in the ledger, decoded as cantools decodes it
    db = cantools.database.load_file(dbc_path("carledger_demo.dbc"))
    expected = changes([db.decode_message(SPEED_ID, d)["VehicleSpeed"] for _, _, d in wanted])
    assert expected[-1] == SENTINEL_SPEED and len(expected) > 200
    store = guest.files("cangen_through_kernel_filters") / "ledger"
    assert main(["verify", str(store)]) == 0
    recorded = [r["value"] for r in exported(store, "speed", capsys) if "name" in r]
    assert recorded == pytest.approx(expected)
    assert result["agent_exit"] == 0


def test_the_agent_transmits_nothing(guest):
    busy = guest.result("cangen_through_kernel_filters")
    assert busy["sent_by_anyone"] == busy["sent_by_us"] == busy["candump_lines"]
    quiet = guest.result("agent_on_a_quiet_bus_sends_nothing")
    print(f"[{guest.vcan.mode}] quiet bus with the agent running: kernel TX count {quiet['transmitted']}, "
          f"candump lines {quiet['candump_lines']}")
    assert quiet == {"transmitted": 0, "candump_lines": 0, "agent_exit": 0}


def test_interface_down_up_and_gone_is_recovered_without_a_restart(guest):
    result = guest.result("interface_down_up_and_gone")
    assert result["running_throughout"] and result["agent_exit"] == 0
    assert result["speeds"] == [10.0, 20.0, 30.0]
    kinds = [e["event"] for e in result["events"]]
    assert kinds.count("agent-start") == 1
    errors = [e["error"] for e in result["events"] if e["event"] == "bus-error"]
    print(f"[{guest.vcan.mode}] bus errors recorded: {errors}")
    assert any("Network is down" in e for e in errors)  # ip link set down: ENETDOWN on the socket
    assert any("No such device" in e for e in errors)  # ip link del: nothing to bind to until it is back
    assert kinds.count("bus-reopened") >= 2


def test_can_fd_frames_on_an_fd_vcan(guest):
    result = guest.result("can_fd")
    assert result["mtu"] == 72
    assert result["values"] == [7, 42]


def test_set_filter_swaps_the_kernel_filter_of_the_open_bus(guest):
    result = guest.result("set_filter_and_timestamps")
    assert [key for _, key, _ in result["frames"]] == ["0xb4", "0xc8", "0xb4"]
    assert [data for _, _, data in result["frames"]] == ["01", "02", "03"]
    assert [int(i, 16) for i in result["steps"]["kernel_filters_after_swap"]] == [0x0C8]
    assert result["steps"]["receivers_while_closed"] == []
    # kernel receive times, in the wall clock; vcan has no hardware clock to give
    assert all(result["wall_before"] <= t <= result["wall_after"] for t, _, _ in result["frames"])
    assert result["hardware_timestamps"] == 0
    assert result["receive_buffer"] >= 1 << 20
    assert "bus-error" not in result["events"]


def test_error_frames_become_rate_limited_bus_health_events(guest):
    result = guest.result("error_frames")
    events = result["events"]
    print(f"[{guest.vcan.mode}] 302 error frames -> {len(events)} events: "
          + "; ".join(f"{e['error']} x{e['error_frame']['count']}" for e in events))
    assert result["error_frames"] == 302 and result["frames"] == 0
    assert sum(e["error_frame"]["count"] for e in events) == 302
    assert len(events) <= 6  # a flood is summarised, not recorded frame by frame
    first = events[0]["error_frame"]
    assert first["classes"] == ["controller"] and first["controller"] == ["rx-warning"]
    assert first["state"] == "error-warning" and first["count"] == 1
    assert any("stuff" in e["error_frame"].get("protocol", []) for e in events)
    assert events[-1]["error_frame"]["state"] == "bus-off" and result["state"] == "bus-off"


def test_a_larger_receive_buffer_holds_a_burst_and_drops_are_counted(guest):
    result = guest.result("receive_buffer_burst")
    print(f"[{guest.vcan.mode}] 3000-frame burst into a stalled reader: {result}")
    for outcome in result.values():
        assert outcome["received"] + outcome["dropped"] == 3000
        assert outcome["marker"] == 1
    assert result["carledger"]["received"] > 2 * result["python-can default"]["received"]
    assert result["carledger"]["many_per_call"]  # read with recvmmsg: in order, nothing lost, the count still right


def test_canplayer_replay_of_an_exported_drive_decodes_to_the_same_values(guest, tmp_path, capsys):
    result = guest.result("canplayer_round_trip")
    drive = guest.out_dir / "drive.log"
    frames = sum(1 for line in drive.read_text().splitlines() if line.startswith("("))
    assert result["candump_lines"] == frames + 1  # canplayer sent every line of the log, then our sentinel
    live_store = guest.files("canplayer_round_trip") / "ledger"
    config = guest.files("canplayer_round_trip") / "agent.toml"
    replay_store = tmp_path / "replayed"
    assert main([
        "run", "--replay", str(drive), "--dbc", dbc_path("carledger_demo.dbc"), "--store", str(replay_store), "--fast",
        "--stream", "speed=Vehicle.Speed",
        "--stream", "drive=Vehicle.Powertrain.CombustionEngine.Speed,Vehicle.Chassis.Accelerator.PedalPosition,"
                    "Vehicle.TraveledDistance",
    ]) == 0
    assert config.exists()
    for stream in ("speed", "drive"):
        live = values_by_name(exported(live_store, stream, capsys))
        replayed = values_by_name(exported(replay_store, stream, capsys))
        assert live.keys() == replayed.keys() and live
        for name in live:
            assert live[name] == replayed[name], name
