"""bench_socketcan.py's guest program: each way of reading a CAN_RAW socket drains the same queued burst.

Run through tests/harness (`run_guest`), inside user-mode-linux or on host
vcan. For each round and each reader: a bound socket with a receive buffer
that holds the whole burst, `cangen` sends --frames frames into it while
nobody reads, then the reader takes them all; the thread's CPU time of those drains
(several per figure: the guest's clock ticks at 100 Hz) is the reader's
cost. Results: results/readers.json.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.guest import VCAN, run_scenarios, scenario, sh  # noqa: E402

import can  # noqa: E402

from carledger.sources import receive  # noqa: E402
from carledger.sources.socketcan import SocketReader  # noqa: E402

CAN = VCAN["can"]
FRAMES = int(os.environ.get("BENCH_FRAMES", "10000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BURSTS = 4  # per reader and round: the guest's CPU clock ticks at 100 Hz, so each figure sums several drains
BUFFER = 64 << 20  # holds the burst (the kernel charges ~1 KiB a frame); granted with SO_RCVBUFFORCE as root
SO_RCVBUFFORCE = 33


def burst() -> None:
    """Queues FRAMES classic frames (8 bytes, counting payloads) on CAN, as fast as cangen sends."""
    sh("cangen", CAN, "-I", "0B4", "-L", "8", "-D", "i", "-g", "0", "-n", str(FRAMES))


def python_can(bus: can.BusABC) -> Callable[[], int]:
    """python-can's own read: a select, a recvmsg and a Message per frame (what its Notifier does)."""
    def drain() -> int:
        n = 0
        while bus.recv(0) is not None:
            n += 1
        return n
    return drain


def one_at_a_time(bus: can.BusABC) -> Callable[[], int]:
    return _reader(bus, batched=False)


def many_per_call(bus: can.BusABC) -> Callable[[], int]:
    return _reader(bus, batched=True)


def _reader(bus: can.BusABC, batched: bool) -> Callable[[], int]:
    """The agent's SocketReader on the bus's socket (made before the burst: it switches the kernel's stamps on)."""
    original = receive._Many.on
    if not batched:
        receive._Many.on = classmethod(lambda cls, receiver: None)
    try:
        reader = SocketReader(bus.socket, 0)
    finally:
        receive._Many.on = original
    assert reader._receiver.batched == batched

    def drain() -> int:
        n = 0
        while batch := reader.read(0, 4096, lambda *a: None):
            n += len(batch)
        return n
    return drain


READERS = {"python-can recv": python_can, "carledger, recvmsg each": one_at_a_time, "carledger, recvmmsg": many_per_call}


@scenario
def readers() -> dict:
    costs: dict[str, list[float]] = {name: [] for name in READERS}
    for _ in range(ROUNDS):
        for name, reader in READERS.items():
            bus = can.Bus(interface="socketcan", channel=CAN, can_filters=[{"can_id": 0x0B4, "can_mask": 0x7FF}])
            try:
                for option in (socket.SO_RCVBUF, SO_RCVBUFFORCE):
                    try:
                        bus.socket.setsockopt(socket.SOL_SOCKET, option, BUFFER)
                    except OSError:
                        pass
                drain = reader(bus)
                cpu = 0.0
                for _ in range(BURSTS):
                    burst()
                    c0 = time.thread_time()
                    n = drain()
                    cpu += time.thread_time() - c0
                    if n != FRAMES:
                        raise RuntimeError(f"{name}: read {n} of {FRAMES} frames (receive buffer too small?)")
            finally:
                bus.shutdown()
            costs[name].append(cpu / (BURSTS * FRAMES) * 1e6)
    return {"frames": FRAMES, "rounds": ROUNDS, "us_per_frame": costs}


if __name__ == "__main__":
    sys.exit(run_scenarios())
