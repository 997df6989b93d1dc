"""The fleet demo's body (scripts/demo-fleet runs it after scripts/setup): the collector as a fleet runs it.

    .venv/bin/python scripts/demo_fleet.py [--vehicles 20] [--ticks 10] [--workers 3] [--out demo-fleet-out]

A PostgreSQL cluster of its own (initdb and pg_ctl from /usr/lib/postgresql/*/bin,
a Unix socket in a temporary directory, run as the user carledger-test when
root), two mosquitto brokers on loopback, three `carledger collect run --dsn`
worker processes sharing the work over MQTT 5 shared subscriptions on both
brokers, and a fleet of simulated cars: each with its own Ed25519 key and
agent store, sealing signed blocks of two streams and sending them through
the agent's own sync (`carledger.sync.Syncer`) to the broker its id is
assigned to (docs/collector.md, "Fleet"). Then what arrived: `collect
status` and `collect verify` on the database, each car's acks, each worker's
share.

The pieces are the ones the fault tests use (tests/pg.py, tests/broker.py,
tests/fleet.py), not copies. Ctrl-C, SIGTERM or an error at any point stops
everything it started, workers first, then the cars, the brokers and
PostgreSQL; exit 130 on Ctrl-C, 1 on an error (one line), 2 when PostgreSQL
or mosquitto is not installed.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from broker import MOSQUITTO  # noqa: E402
from carledger.cli import main as carledger  # noqa: E402
from carledger.collect.pgstore import PgStore  # noqa: E402
from carledger.ledger import Store  # noqa: E402
from conftest import wait_until  # noqa: E402
from fleet import Fleet  # noqa: E402
from pg import PgCluster, pg_bin  # noqa: E402


class Stop(BaseException):  # like KeyboardInterrupt: no `except Exception` on the way swallows it
    """Ctrl-C, SIGTERM or SIGHUP: stop everything, in order."""


def _quiet() -> None:
    """While stopping, cars losing their broker is what stopping does: not worth a warning per car."""
    logging.getLogger("carledger.sync").setLevel(logging.ERROR)


def _stop(signum: int, _frame) -> None:
    _quiet()  # a terminal's Ctrl-C reaches the brokers too, at the same moment
    raise Stop(signal.Signals(signum).name)


def acks(fleet: Fleet) -> dict[str, tuple[int, int]]:
    """Per car: (blocks sealed, blocks the collector's signed acks cover), read from each car's own store."""
    out = {}
    for vid in fleet.cars:
        with Store.open_readonly(fleet.tmp / vid) as s:
            names = s.heads()
            sealed = sum(s.block_count(name) for name in names)
            acked = sum((s.acked_seq(name) if s.acked_seq(name) is not None else -1) + 1 for name in names)
        out[vid] = (sealed, acked)
    return out


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(args: argparse.Namespace, out: Path) -> None:
    """Start everything, drive, wait for the acks, show what arrived; the caller's finally stops it all."""
    state: dict = {}
    try:
        section("1. PostgreSQL, two mosquitto brokers, three workers")
        state["cluster"] = cluster = PgCluster(pg_bin()).start()
        dsn = cluster.new_database()
        print(f"PostgreSQL {pg_bin().parent.name}: a cluster in {cluster.root} (socket there, no TCP)"
              + (f", run as {cluster.as_user[2]}" if cluster.as_user else ""))
        state["fleet"] = fleet = Fleet(out, dsn, cars=args.vehicles, workers=args.workers)
        for i, b in enumerate(fleet.brokers):
            print(f"broker {i}: mosquitto on {b.host}:{b.port}")
        for i, p in enumerate(fleet.workers):
            print(f"worker w{i}: carledger collect run {fleet.keydir.name} --dsn '{dsn}' --group fleet "
                  + " ".join(f"--broker {b.host}:{b.port}" for b in fleet.brokers) + f"   (pid {p.pid})")

        section(f"2. {len(fleet.cars)} vehicles, each with its own key, enrolled in the database")
        per_broker = {f"{b.host}:{b.port}": 0 for b in fleet.brokers}
        for vid in fleet.cars:
            b = fleet.broker_of(vid)
            per_broker[f"{b.host}:{b.port}"] += 1
        print(f"vehicles {', '.join(list(fleet.cars)[:3])} ... {list(fleet.cars)[-1]}; assigned by hash of the id: "
              + ", ".join(f"{n} on {name}" for name, n in per_broker.items()))

        section(f"3. the fleet drives: {args.ticks} seals of 2 streams (speed, gps) per car, synced as they are sealed")
        fleet.sync()
        t0 = time.monotonic()
        for _ in range(args.ticks):
            fleet.drive(1)
            time.sleep(args.tick_period)
        sealed = sum(n for n, _ in acks(fleet).values())
        print(f"{sealed} blocks sealed and signed in the cars")
        wait_until(lambda: all(a == n for n, a in acks(fleet).values()), timeout=args.timeout, interval=0.2)
        print(f"every block acked by a worker's signed ack within {time.monotonic() - t0:.1f} s of the first seal")

        section("4. what arrived: carledger collect status --dsn DSN")
        carledger(["collect", "status", "--dsn", dsn])

        section("5. every chain re-verified from the signed blocks: carledger collect verify --dsn DSN")
        if carledger(["collect", "verify", "--dsn", dsn]) != 0:
            raise RuntimeError("collect verify found a broken chain (above)")
        fleet.assert_exactly_once()  # each car's blocks, as its own store has them, stored once each, in order
        store = PgStore(dsn)
        try:
            records = sum(s["records"] for vid in fleet.cars for s in store.streams(vid).values())
        finally:
            store.close()

        section("6. acks, as each car's store has them")
        counts = acks(fleet)
        for vid, (n, a) in counts.items():
            print(f"{vid:<8} {n:>4} blocks sealed, {a:>4} acked")
        state["summary"] = (len(counts), sum(n for n, _ in counts.values()), records, sum(a for _, a in counts.values()))
    finally:
        stop(state)
    section("7. each worker's share (its own count, printed when it stopped)")
    for i in range(args.workers):
        log = (out / f"worker-{i}.log").read_text(errors="replace")
        m = re.findall(r"received \d+, accepted \d+, duplicates \d+, rejected \d+", log)
        print(f"worker w{i}: {m[-1] if m else 'no count (it did not stop cleanly: see ' + str(out / f'worker-{i}.log') + ')'}")
    cars, blocks, records, acked = state["summary"]
    print(f"\ndemo-fleet: done; {cars} vehicles, {blocks} blocks ({records} records) stored once and verified, "
          f"{acked} acked; logs in {out}")


def stop(state: dict) -> None:
    """Stop what was started, in order; each step runs even when one before it failed."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    _quiet()
    try:
        for name, method in (("fleet", "close"), ("cluster", "close")):
            if name in state:
                try:
                    getattr(state[name], method)()
                except Exception as exc:  # keep stopping the rest
                    print(f"demo-fleet: stopping the {name}: {exc}", file=sys.stderr)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vehicles", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=10, help="seals per car (each: one block of each stream)")
    parser.add_argument("--tick-period", type=float, default=0.3, metavar="S", help="seconds between seals")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120, metavar="S", help="wait this long for every ack")
    parser.add_argument("--out", default=str(REPO / "demo-fleet-out"), help="the cars' stores, the brokers' and "
                        "workers' logs (recreated each run; default demo-fleet-out)")
    args = parser.parse_args()
    if pg_bin() is None:
        print("demo-fleet: PostgreSQL is not installed (scripts/setup installs Debian's postgresql)", file=sys.stderr)
        return 2
    if not Path(MOSQUITTO).exists():
        print(f"demo-fleet: {MOSQUITTO} is not installed (scripts/setup installs Debian's mosquitto)", file=sys.stderr)
        return 2
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        run(args, out)
    except Stop as exc:
        print(f"\ndemo-fleet: stopped ({exc}); everything it started is stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"demo-fleet: {type(exc).__name__}: {exc} (logs in {out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
