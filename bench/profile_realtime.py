"""Where the agent's CPU goes at the car's pace: its parts, timed in the thread that runs them.

    python bench/profile_realtime.py [--seconds 15] [--interval 0.05] [--bus socketcan|udp_multicast]

Runs the agent of bench_realtime.py (16 signals, one bus) in this process, on
the same stand-in bus and feeder, and wraps the parts of its pipeline thread
with `time.thread_time`: reading the socket (and, within it, the `recvmmsg`
call with the datagrams' parsing), decoding and the policy, the checks at
each point of the data's time, the seals, the wait for the next wake-up, the
owner's requests. Each part's time is its own, the parts it calls apart.
What no wrapper holds (the round's loop, the sync's audit, the watchdog) is
the rest of the thread's CPU (schedstat). A cProfile or py-spy sample of a
real-time run is mostly the idle wait; this is the CPU of each part per
frame on the bus, and per call (the wrappers add a little to each call).

Not a test, and no baseline: docs/performance.md uses it to say where the
real-time cost per frame goes; bench_realtime.py gives the figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_realtime  # noqa: E402  (bench scripts are run as files)
from bench_pipeline import LOG, STREAMS  # noqa: E402

AGENT_THREAD = "agent"


class Parts:
    """CPU time of wrapped callables in the agent's thread, each without the wrapped calls inside it."""

    def __init__(self) -> None:
        self.spent: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self._stack: list[list] = []  # [label, start, time of wrapped calls inside]

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original: Callable = getattr(owner, name)
        parts = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread().name != AGENT_THREAD:
                return original(*args, **kwargs)
            frame = [label, time.thread_time(), 0.0]
            parts._stack.append(frame)
            try:
                return original(*args, **kwargs)
            finally:
                parts._stack.pop()
                took = time.thread_time() - frame[1]
                parts.spent[label] += took - frame[2]
                parts.calls[label] += 1
                if parts._stack:
                    parts._stack[-1][2] += took

        setattr(owner, name, timed)

    def clear(self) -> None:
        self.spent.clear()
        self.calls.clear()


def thread_cpu(native_id: int) -> float:
    """CPU seconds of one thread of this process, from the scheduler's own count."""
    with open(f"/proc/self/task/{native_id}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of feed")
    parser.add_argument("--interval", type=bench_realtime._intervals, default=[0.05], metavar="SECONDS",
                        help="the agent's wake-up interval (default 0.05)")
    parser.add_argument("--bus", choices=bench_realtime.BUSES, default=bench_realtime.BUSES[0],
                        help="the stand-in for the car's bus (bench_realtime.py --bus)")
    args = parser.parse_args()
    if not LOG.exists():
        print(f"reference data not available: {LOG}", file=sys.stderr)
        return 2
    if args.bus == "socketcan":  # the stand-in as python-can's socketcan, after the agent's parted import of python-can
        import carledger._imports  # noqa: F401
        import socketcan_standin

        socketcan_standin.install()

    from carledger import dispatch, pipeline
    from carledger.config import load_config
    from carledger.notify import Watchdog
    from carledger.sources import base, receive
    from carledger.sources.socketcan import SocketReader
    from carledger.sources.udpmulticast import DatagramReader

    parts = Parts()
    for owner, name, label in (
            (SocketReader, "read", "reading: the reader's own loop"), (DatagramReader, "read", "reading: the reader's own loop"),
            (receive._Many, "receive", "reading: recvmmsg and its datagrams"),
            (dispatch.BusDispatch, "process", "decoding and the policy"),
            (pipeline.Pipeline, "_seal", "seals"), (pipeline.Pipeline, "_checkpoint", "checks at a point of time"),
            (pipeline.Pipeline, "_process", "splitting batches"), (pipeline.Pipeline, "_process_part", "splitting batches"),
            (pipeline.Pipeline, "_owner_requests", "the owner's requests"),
            (pipeline.Pipeline, "_bus_events", "the buses' events"), (base.Pacer, "wait", "the wait for the next wake-up"),
            (Watchdog, "beat", "the watchdog")):
        parts.wrap(owner, name, label)

    with tempfile.TemporaryDirectory(prefix="carledger-profile-") as tmp:
        config = bench_realtime.write_agent(Path(tmp) / "run", 1, STREAMS, args.interval[0], args.bus)
        agent = pipeline.Pipeline(load_config(config))
        runner = threading.Thread(target=agent.run, daemon=True, name=AGENT_THREAD)
        runner.start()
        while not all(s.opened.is_set() for s in agent.sources):
            time.sleep(0.01)
        parts.clear()
        assert runner.native_id is not None
        before = thread_cpu(runner.native_id)
        fed = subprocess.run([sys.executable, "-c", bench_realtime.FEEDER, str(LOG),
                              json.dumps(bench_realtime.channels(1, args.bus)), "1.0", str(args.seconds),
                              str(Path(__file__).resolve().parent)],
                             capture_output=True, text=True, cwd=bench_realtime.REPO, env=dict(os.environ))
        time.sleep(0.3)  # the last wake-up takes what is in flight
        total = thread_cpu(runner.native_id) - before
        agent.stop()
        runner.join(30)
    if fed.returncode != 0:
        print(f"the feeder failed:\n{fed.stderr}", file=sys.stderr)
        return 1
    sent = sum(sum(per_bus.values()) for per_bus in json.loads(fed.stdout)["sent"])
    print(f"{args.seconds:g} s on the {args.bus} stand-in, wake-up interval {args.interval[0] * 1000:g} ms: "
          f"the pipeline thread {total / sent * 1e6:.1f} us CPU per frame on the bus ({sent:,} frames)")
    rows = sorted(parts.spent.items(), key=lambda kv: -kv[1])
    rows.append(("the rest (the round's loop, the sync's audit ...)", total - sum(parts.spent.values())))
    for label, spent in rows:
        calls = parts.calls.get(label)
        per_call = f"{calls:6d} calls, {spent / calls * 1e6:8.1f} us a call" if calls else ""
        print(f"  {label:52s} {spent / sent * 1e6:6.2f} us/frame  {per_call}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
