"""Helpers for guest programs: scenarios, the agent as a process, can-utils, the kernel's CAN counters.

A guest program (run by `vcan.run_guest`, in user-mode-linux or on the host)
registers scenarios with `@scenario` and calls `run_scenarios()`. Each
scenario returns a JSON-friendly dict, written to RESULTS/results/NAME.json;
an exception is written there instead, with its traceback, and the next
scenario still runs. Files a scenario keeps go to `files(NAME)`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(os.environ.get("CARLEDGER_RESULTS", "."))
VCAN: dict[str, str] = json.loads(os.environ.get("CARLEDGER_VCAN", "{}"))
MODE = os.environ.get("CARLEDGER_HARNESS", "")

_SCENARIOS: list[tuple[str, Callable[[], dict]]] = []


def scenario(fn: Callable[[], dict]) -> Callable[[], dict]:
    _SCENARIOS.append((fn.__name__, fn))
    return fn


def files(name: str) -> Path:
    path = RESULTS / "results" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_scenarios() -> int:
    failed = 0
    for name, fn in _SCENARIOS:
        started = time.monotonic()
        print(f"scenario {name}: start", flush=True)
        try:
            outcome: dict[str, Any] = {"ok": True, "result": fn()}
        except Exception:
            failed += 1
            outcome = {"ok": False, "error": traceback.format_exc()}
        outcome["seconds"] = round(time.monotonic() - started, 2)
        (RESULTS / "results" / f"{name}.json").write_text(json.dumps(outcome, indent=1))
        print(f"scenario {name}: {'ok' if outcome['ok'] else 'FAILED'} in {outcome['seconds']} s", flush=True)
        if not outcome["ok"]:
            print(outcome["error"], flush=True)
    return 1 if failed else 0


def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)


def sh(*argv: str) -> str:
    """Run a command; its output, or an exception with its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


# -- the kernel's view -----------------------------------------------------------------


def receivers(interface: str) -> list[dict[str, str]]:
    """Every CAN_RAW receive filter the kernel holds for `interface` (/proc/net/can/rcvlist_*), with its match count."""
    entries = []
    for path in sorted(Path("/proc/net/can").glob("rcvlist_*")):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 7 and fields[0] == interface:
                entries.append({
                    "list": path.name, "can_id": fields[1], "can_mask": fields[2],
                    "matches": int(fields[5]), "ident": fields[6],
                })
    return entries


def transmitted_frames() -> int:
    """The kernel's count of CAN frames sent by any socket since boot (/proc/net/can/stats TXF)."""
    text = Path("/proc/net/can/stats").read_text()
    return int(re.search(r"(\d+) transmitted frames", text).group(1))


# -- processes ------------------------------------------------------------------------


class Candump:
    """`candump -L` of an interface into a file, for as long as the `with` lasts."""

    def __init__(self, interface: str, path: Path):
        self.interface, self.path = interface, path

    def __enter__(self) -> "Candump":
        before = len(receivers(self.interface))
        self._out = open(self.path, "w")
        self.proc = subprocess.Popen(["candump", "-L", self.interface], stdout=self._out)
        wait_for(lambda: len(receivers(self.interface)) > before, 30, "candump listening")
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # let frames already sent reach it
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        self._out.close()

    def lines(self) -> list[str]:
        return [line for line in self.path.read_text().splitlines() if line.startswith("(")]


def agent_config(path: Path, store: Path, buses: str, streams: dict[str, list[str]], seal_max_age: float = 0.5) -> Path:
    """An agent configuration with local streams ({name: signal patterns}) in a policy file beside it."""
    from carledger.config import local_streams_policy

    policy = path.with_name("policy.toml")
    policy.write_text(local_streams_policy(streams))
    path.write_text(textwrap.dedent(f"""
        [agent]
        store = "{store}"
        policy = "{policy}"
        health_interval = 1
        [seal]
        max_age = {seal_max_age}
    """) + textwrap.dedent(buses))
    return path


class Agent:
    """`carledger run -c CONFIG` as a process; entering waits until its sockets are bound on `interfaces`."""

    def __init__(self, config: Path, interfaces: list[str], log: Path):
        self.config, self.interfaces, self.log_path = config, interfaces, log

    def __enter__(self) -> "Agent":
        before = {i: len(receivers(i)) for i in self.interfaces}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "carledger", "run", "-c", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        for interface in self.interfaces:
            wait_for(
                lambda: len(receivers(interface)) > before[interface] or self.proc.poll() is not None,
                120, f"the agent listening on {interface}",
            )
        if self.proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {self.proc.returncode}: {self.log_path.read_text()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()
        self.returncode = self.proc.returncode


# -- what the agent recorded ------------------------------------------------------------


def ledger_records(store: Path, stream: str) -> list:
    """Every record (Sample or Event) of a stream, read while the agent may still be writing."""
    from carledger.ledger import Store, StoreError, decode_record

    if not (store / "ledger.sqlite").exists():
        return []
    try:
        with Store.open_readonly(store) as db:
            return [decode_record(r) for row in db.iter_blocks(stream) for r in db.records(row)]
    except StoreError:
        return []


def ledger_values(store: Path, stream: str) -> list[float]:
    return [r.value for r in ledger_records(store, stream) if hasattr(r, "value")]


def ledger_events(store: Path) -> list[dict]:
    return [{"event": r.kind, **r.detail} for r in ledger_records(store, "health") if hasattr(r, "kind")]
