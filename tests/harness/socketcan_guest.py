"""The SocketCAN tier's guest program: the agent, firmware-sim's drive and can-utils on real vcan.

Run by tests/test_socketcan.py through `harness.run_guest`, inside
user-mode-linux or against host vcan interfaces. Interfaces: "can" (classic,
mtu 16) and "fd" (CAN FD, mtu 72). Each scenario leaves its result (and its
candump logs and agent stores) for the host-side test to check.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.guest import (  # noqa: E402
    VCAN, Agent, Candump, agent_config, files, ledger_events, ledger_values, receivers, run_scenarios,
    scenario, sh, transmitted_frames, wait_for,
)

from carledger.dbc import path as dbc_path  # noqa: E402
from carledger.sources import BusSource, FrameFilter  # noqa: E402
from carledger.sources.canerror import CAN_ERR_FLAG  # noqa: E402
from carledger.sources.socketcan import RECEIVE_BUFFER, SocketReader  # noqa: E402

CAN, FD = VCAN["can"], VCAN["fd"]
DEMO_DBC = dbc_path("carledger_demo.dbc")
SENTINEL = "0B4#FFFF000000000000"  # Vehicle.Speed 655.35 km/h: sent last, so once it is recorded, all before it is
SENTINEL_SPEED = 655.35
SPEED_STREAM = {"speed": ["Vehicle.Speed"]}


def bus(name: str, interface: str, dbc: str = DEMO_DBC, extra: str = "") -> str:
    return f"""
    [[bus]]
    name = "{name}"
    interface = "socketcan"
    channel = "{interface}"
    dbc = ["{dbc}"]
    {extra}
    """


def send_sentinel(store: Path, interface: str = CAN) -> None:
    sh("cansend", interface, SENTINEL)
    wait_for(lambda: SENTINEL_SPEED in ledger_values(store, "speed"), 120, "the sentinel frame recorded")


@scenario
def cangen_through_kernel_filters() -> dict:
    """cangen traffic, wanted and unwanted IDs: what the kernel lets into the agent's socket, and what it decodes."""
    out = files("cangen_through_kernel_filters")
    store = out / "ledger"
    config = agent_config(out / "agent.toml", store, bus("can", CAN), SPEED_STREAM)
    with Candump(CAN, out / "candump.log") as dump, Agent(config, [CAN], out / "agent.log") as agent:
        sent_before = transmitted_frames()
        sh("cangen", CAN, "-I", "0B4", "-L", "8", "-D", "i", "-g", "5", "-n", "200")
        sh("cangen", CAN, "-I", "r", "-L", "8", "-g", "2", "-n", "300")
        sh("cangen", CAN, "-e", "-I", "r", "-L", "8", "-g", "2", "-n", "100")
        send_sentinel(store)
        sent = transmitted_frames() - sent_before
        kernel_filters = [r for r in receivers(CAN) if r["ident"] == "raw"]
        agent_pid = agent.proc.pid
    stop = [e for e in ledger_events(store) if e["event"] == "agent-stop"]
    return {
        "sent_by_anyone": sent, "sent_by_us": 601, "candump_lines": len(dump.lines()),
        "kernel_filters": kernel_filters, "agent_pid": agent_pid, "agent_exit": agent.returncode,
        "agent_frames": stop[0]["frames"]["can"] if stop else None,
    }


@scenario
def interface_down_up_and_gone() -> dict:
    """The agent keeps running while its interface is set down and up, and deleted and added again."""
    out = files("interface_down_up_and_gone")
    store = out / "ledger"
    config = agent_config(out / "agent.toml", store, bus("can", CAN), SPEED_STREAM)

    def reopened(n: int) -> bool:
        return sum(e["event"] == "bus-reopened" for e in ledger_events(store)) >= n

    def errors(text: str) -> int:
        return sum(text in e.get("error", "") for e in ledger_events(store) if e["event"] == "bus-error")

    def recorded(speed: float) -> bool:
        return speed in ledger_values(store, "speed")

    with Agent(config, [CAN], out / "agent.log") as agent:
        sh("cansend", CAN, "0B4#E803000000000000")  # 10.00 km/h
        wait_for(lambda: recorded(10.0), 60, "10 km/h recorded")
        sh("ip", "link", "set", CAN, "down")
        wait_for(lambda: errors("Network is down") >= 2, 60, "reopening refused while down")
        sh("ip", "link", "set", CAN, "up")
        wait_for(lambda: reopened(1), 60, "the bus reopened after up")
        sh("cansend", CAN, "0B4#D007000000000000")  # 20.00 km/h
        wait_for(lambda: recorded(20.0), 60, "20 km/h recorded after up")
        sh("ip", "link", "del", "dev", CAN)
        wait_for(lambda: errors("No such device") >= 2, 60, "open failures while gone")
        sh("ip", "link", "add", "dev", CAN, "type", "vcan")
        sh("ip", "link", "set", CAN, "mtu", "16", "up")
        wait_for(lambda: reopened(2), 60, "the bus reopened after the interface came back")
        sh("cansend", CAN, "0B4#B80B000000000000")  # 30.00 km/h
        wait_for(lambda: recorded(30.0), 60, "30 km/h recorded after re-adding")
        pid_still = agent.proc.poll() is None
    return {
        "speeds": ledger_values(store, "speed"), "events": ledger_events(store),
        "running_throughout": pid_still, "agent_exit": agent.returncode,
    }


FD_DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 1536 FD_STATUS: 64 ECU
 SG_ First : 0|8@1+ (1,0) [0|255] "" Vector__XXX
 SG_ Last : 504|8@1+ (1,0) [0|255] "" Vector__XXX
BA_DEF_ BO_ "VFrameFormat" ENUM "StandardCAN","ExtendedCAN","reserved","J1939PG","reserved","reserved","reserved","reserved","reserved","reserved","reserved","reserved","reserved","reserved","StandardCAN_FD","ExtendedCAN_FD";
BA_DEF_DEF_ "VFrameFormat" "StandardCAN";
BA_ "VFrameFormat" BO_ 1536 14;
"""


@scenario
def can_fd() -> dict:
    """A 64-byte CAN FD frame on an FD vcan (mtu 72) is read and decoded, up to its last byte."""
    out = files("can_fd")
    store = out / "ledger"
    (out / "fd.dbc").write_text(FD_DBC)
    config = agent_config(out / "agent.toml", store, bus("fd", FD, str(out / "fd.dbc"), "fd = true"),
                          {"fd": ["FD_STATUS.*"]})
    payload = bytes([7]) + bytes(62) + bytes([42])
    with Agent(config, [FD], out / "agent.log"):
        sh("cansend", FD, f"600##1{payload.hex()}")
        wait_for(lambda: 42 in ledger_values(store, "fd"), 60, "the FD frame decoded")
    mtu = int(Path(f"/sys/class/net/{FD}/mtu").read_text())
    return {"mtu": mtu, "values": ledger_values(store, "fd")}


class Reader:
    """A BusSource read in a thread, as the pipeline does; frames and events collected."""

    def __init__(self, source: BusSource):
        self.source, self.frames, self.events = source, [], []
        source.on_event = lambda kind, detail: self.events.append((kind, detail))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for batch in self.source.batches(self.stop):
            self.frames.extend(batch)

    def __enter__(self) -> "Reader":
        self.thread.start()
        wait_for(self.source.opened.is_set, 60, "the bus open")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.source.close()


def only(can_id: int) -> FrameFilter:
    return FrameFilter.of([(can_id, 0x7FF, False)])


@scenario
def set_filter_and_timestamps() -> dict:
    """BusSource.set_filter swaps the kernel filter of the open socket; an empty filter closes the bus."""
    source = BusSource("can", only(0x0B4), interface="socketcan", channel=CAN)
    steps = {}
    before = time.time()
    with Reader(source) as reader:
        sh("cansend", CAN, "0C8#01")
        sh("cansend", CAN, "0B4#01")
        wait_for(lambda: len(reader.frames) >= 1, 30, "the first frame")
        steps["first"] = [hex(k) for _, k, _ in reader.frames]
        source.set_filter(only(0x0C8))
        wait_for(lambda: any(int(r["can_id"], 16) == 0x0C8 for r in receivers(CAN) if r["ident"] == "raw"), 30,
                 "the new kernel filter")
        steps["kernel_filters_after_swap"] = [r["can_id"] for r in receivers(CAN) if r["ident"] == "raw" and r["list"] != "rcvlist_err"]
        sh("cansend", CAN, "0B4#02")
        sh("cansend", CAN, "0C8#02")
        wait_for(lambda: len(reader.frames) >= 2, 30, "the second frame")
        source.set_filter(FrameFilter.of([]))
        wait_for(lambda: not source.opened.is_set(), 30, "the bus closed for an empty filter")
        steps["receivers_while_closed"] = [r["can_id"] for r in receivers(CAN) if r["ident"] == "raw"]
        source.set_filter(only(0x0B4))
        wait_for(source.opened.is_set, 30, "the bus reopened for a new filter")
        sh("cansend", CAN, "0B4#03")
        wait_for(lambda: len(reader.frames) >= 3, 30, "the third frame")
    after = time.time()
    return {
        "frames": [[t, hex(k), d.hex()] for t, k, d in reader.frames], "steps": steps,
        "wall_before": before, "wall_after": after, "hardware_timestamps": source.hardware_timestamps,
        "receive_buffer": source.receive_buffer_granted, "events": [k for k, _ in reader.events],
    }


def send_error_frame(sock: socket.socket, classes: int, data: bytes) -> None:
    sock.send(struct.pack("=IB3x8s", CAN_ERR_FLAG | classes, 8, data))


@scenario
def error_frames() -> dict:
    """Error frames become bus-error events: state changes at once, a flood summarised with its count."""
    source = BusSource("can", only(0x0B4), interface="socketcan", channel=CAN, error_interval=1.0)
    with socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW) as sock, Reader(source) as reader:
        sock.bind((CAN,))
        send_error_frame(sock, 0x004, bytes([0, 0x04, 0, 0, 0, 0, 0, 0]))  # controller: rx-warning
        wait_for(lambda: reader.events, 30, "the first error event")
        for _ in range(300):  # a flood of protocol errors (stuff errors)
            send_error_frame(sock, 0x088, bytes([0, 0, 0x04, 0x0A, 0, 0, 0, 0]))
        send_error_frame(sock, 0x040, bytes(8))  # bus-off
        wait_for(lambda: sum(d["error_frame"]["count"] for _, d in reader.events) == 302, 30, "every frame counted")
    return {
        "events": [d for _, d in reader.events], "error_frames": source.error_frames,
        "state": source.error_state, "frames": len(reader.frames),
    }


@scenario
def receive_buffer_burst() -> dict:
    """A 3000-frame burst while the reader is stalled: what fits in the socket buffer, and the kernel's drop count."""
    import can

    results = {}
    for label, size in (("python-can default", 0), ("carledger", RECEIVE_BUFFER)):
        bus_ = can.Bus(interface="socketcan", channel=CAN, can_filters=only(0x0B4).to_can_filters())
        try:
            reader = SocketReader(bus_.socket, size)
            sh("cangen", CAN, "-I", "0B4", "-L", "8", "-D", "i", "-g", "0", "-n", "3000")
            frames = []
            while batch := reader.read(0, 512, lambda *a: None):
                frames.extend(batch)
            sh("cansend", CAN, "0B4#FF")  # the drop count arrives with the next frame queued
            marker = reader.read(10.0, 512, lambda *a: None)
            results[label] = {
                "buffer_bytes": bus_.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                "received": len(frames), "dropped": reader.dropped, "marker": len(marker),
                "many_per_call": reader._receiver.batched,
            }
        finally:
            bus_.shutdown()
    return results


@scenario
def canplayer_round_trip() -> dict:
    """A candump log written by the agent's writer, replayed by canplayer at recorded pace, recorded live."""
    out = files("canplayer_round_trip")
    store = out / "ledger"
    drive = os.environ["CARLEDGER_DRIVE_LOG"]
    streams = dict(SPEED_STREAM, drive=[
        "Vehicle.Powertrain.CombustionEngine.Speed", "Vehicle.Chassis.Accelerator.PedalPosition", "Vehicle.TraveledDistance",
    ])
    config = agent_config(out / "agent.toml", store, bus("can", CAN), streams)
    with Candump(CAN, out / "candump.log") as dump, Agent(config, [CAN], out / "agent.log") as agent:
        sh("canplayer", "-I", drive, f"{CAN}=can0")
        send_sentinel(store)
    return {"candump_lines": len(dump.lines()), "agent_exit": agent.returncode}


@scenario
def agent_on_a_quiet_bus_sends_nothing() -> dict:
    """With nobody else on the bus, candump and the kernel's TX counter see nothing from the agent."""
    out = files("agent_on_a_quiet_bus_sends_nothing")
    config = agent_config(out / "agent.toml", out / "ledger", bus("can", CAN), SPEED_STREAM)
    before = transmitted_frames()
    with Candump(CAN, out / "candump.log") as dump, Agent(config, [CAN], out / "agent.log") as agent:
        wait_for(lambda: any(e["event"] == "counters" for e in ledger_events(out / "ledger")), 60,
                 "the agent's first health counters")
    return {"transmitted": transmitted_frames() - before, "candump_lines": len(dump.lines()), "agent_exit": agent.returncode}


if __name__ == "__main__":
    sys.exit(run_scenarios())
