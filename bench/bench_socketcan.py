"""Reading a SocketCAN socket: python-can's recv against the agent's reader, one frame or many per system call.

    python bench/bench_socketcan.py [--frames 10000] [--rounds 3] [--json]

The car's buses are SocketCAN sockets; this machine's kernel has no CAN, so
the readers run where the SocketCAN test tier runs them (tests/harness:
host vcan where the kernel has it, else user-mode-linux with its vcan).
bench/socketcan_guest.py, in that guest, queues a burst of --frames classic
frames (cangen) into a bound, kernel-filtered socket while nobody reads,
then drains it with one reader and takes the thread's CPU time; readers
alternate for --rounds rounds:

- python-can recv: a `select`, a `recvmsg` and a `Message` per frame, what a
  python-can `Notifier` does;
- carledger, recvmsg each: the agent's `SocketReader` where the C library
  has no `recvmmsg`;
- carledger, recvmmsg: the agent's `SocketReader` as it runs, 32 frames per
  system call.

A drained burst is what the agent meets at every wake-up (50 ms: ~225
frames a full bus); the wake-ups themselves are not in these figures.
Under user-mode-linux each system call costs far more than under a native
kernel (the guest kernel is itself a process), so the gain from fewer
calls is larger there than on a Raspberry Pi: those ratios are an upper
bound. So the agent's two ways are also measured on this machine's own
kernel, on the stand-in the unit tests use: a loopback UDP socket carrying
SocketCAN frame structs, stamped with SO_TIMESTAMPING like a CAN socket
(python-can cannot open its SocketCAN bus on one).

Prints the median µs per frame of each reader and ratios. Not a test:
nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness import find_vcan, run_guest  # noqa: E402

GUEST = REPO / "bench" / "socketcan_guest.py"
CLASSIC = struct.Struct("=IB3x8s")  # struct can_frame


def on_this_kernel(frames: int, rounds: int) -> dict[str, list[float]]:
    """µs of thread CPU per frame for the agent's reader draining `frames` queued datagrams, recvmsg each or recvmmsg."""
    from carledger.sources import receive
    from carledger.sources.socketcan import SocketReader

    payloads = [CLASSIC.pack(0x0B4, 8, i.to_bytes(8, "little")) for i in range(frames)]
    costs: dict[str, list[float]] = {"carledger, recvmsg each": [], "carledger, recvmmsg": []}
    original = receive._Many.on
    for _ in range(rounds):
        for name in costs:
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rx.bind(("127.0.0.1", 0))
                tx.connect(rx.getsockname())
                if name.endswith("each"):
                    receive._Many.on = classmethod(lambda cls, receiver: None)
                reader = SocketReader(rx, 64 << 20)
                receive._Many.on = original
                for payload in payloads:
                    tx.send(payload)
                c0, n = time.thread_time(), 0
                while batch := reader.read(0, 4096, lambda *a: None):
                    n += len(batch)
                cpu = time.thread_time() - c0
            finally:
                receive._Many.on = original
                rx.close()
                tx.close()
            if n != frames:
                raise RuntimeError(f"{name}: read {n} of {frames} datagrams (receive buffer too small?)")
            costs[name].append(cpu / n * 1e6)
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10000, help="frames per burst")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of every reader; the median is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    vcan, why_not = find_vcan()
    if vcan is None:
        print(f"bench_socketcan: no SocketCAN here: {why_not}", file=sys.stderr)
        return 2
    print(f"SocketCAN readers on {vcan.description}: {args.rounds} rounds of {args.frames:,}-frame bursts",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="carledger-bench-") as tmp:
        run = run_guest(vcan, GUEST, Path(tmp), {"can": 16}, timeout=1800,
                        env={"BENCH_FRAMES": str(args.frames), "BENCH_ROUNDS": str(args.rounds)})
        guest = run.result("readers")["us_per_frame"]
    print(f"the agent's reader on this machine's kernel (loopback UDP stand-in): {args.rounds} rounds", file=sys.stderr)
    native = on_this_kernel(args.frames, args.rounds)
    if args.json:
        print(json.dumps({"vcan": vcan.mode, "frames": args.frames, "rounds": args.rounds,
                          "guest_us_per_frame": guest, "native_us_per_frame": native}))
        return 0
    report(f"in {vcan.mode} (SocketCAN)", guest, "python-can recv")
    report("on this kernel (UDP stand-in)", native, "carledger, recvmsg each")
    return 0


def report(where: str, costs: dict[str, list[float]], reference: str) -> None:
    base = statistics.median(costs[reference])
    for name, each in costs.items():
        median = statistics.median(each)
        spread = ", ".join(f"{c:.2f}" for c in each)
        ratio = f", {base / median:.2f}x less than {reference}" if name != reference else ""
        print(f"{where}: {name}: {median:.2f} us CPU per frame{ratio} (rounds: {spread})")


if __name__ == "__main__":
    sys.exit(main())
