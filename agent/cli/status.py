"""`carledger status [STORE]`: is the car collecting, paused, or paused until a time; and each stream's state."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from carledger.cli._display import table
from carledger.cli._store import EXIT_OK, EXIT_USAGE, add_store_options, exit_status, fail

EPILOG = """\
examples:
  carledger status                        the store of /etc/carledger/agent.toml
  carledger status /var/lib/carledger --json

Prints the collection switch (collecting; paused until `carledger resume`;
paused until a time, after which the car collects again by itself), the
policy version in force, the disk the store uses, and for each stream
whether it collects now or why not (no consent, consent expired or revoked,
paused), and up to when its recipient has acked it (the last sync); and
each bus's health from the agent's signed `health` stream: frames counted,
their rate, and the last problem (bus-error, source-failed, frames-dropped). Read from the
owner's state (STORE/owner/), whether or not the agent runs; the agent
publishes the same switch in its MQTT status (docs/owner-state.md).
""" + exit_status("printed", None)


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="collecting, paused, or paused until when; each stream's state",
        description="The owner's collection switch and each stream's state, from the store's owner state.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_store_options(parser, positional=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carledger.ledger import LedgerError
    from carledger.owner import OwnerStateError
    from carledger.policy import PolicyError

    try:
        report = status_report(args.store, time.time())
    except (OwnerStateError, PolicyError, LedgerError, OSError) as exc:
        return fail(args, str(exc), EXIT_USAGE)
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return EXIT_OK
    print(f"collection: {describe(report['collection'])}")
    version = report["policy_version"]
    print(f"policy: version {version}" if version else "policy: none applied (nothing is collected)")
    print(f"disk: {report['disk']['store_bytes']:,} bytes in the store ({report['disk']['blocks_bytes']:,} of blocks)")
    for bus, health in report["buses"].items():
        rate = f", {health['frames_per_s']:g} frames/s" if health.get("frames_per_s") is not None else ""
        problem = health.get("problem")
        last = f"; last problem {problem['kind']} at {problem['t']}" if problem else ""
        print(f"bus {bus}: {health.get('frames')} frames by {health.get('counted')}{rate}{last}")
    if report["streams"]:
        rows = [("stream", "recipient", "state", "acked up to")]
        rows += [(s["stream"], s["recipient"] or "(kept in the car)", s["state"],
                  "-" if s["recipient"] is None else s["acked_until"] or "nothing yet") for s in report["streams"]]
        print(table(rows))
    return EXIT_OK


def status_report(store: str, now: float) -> dict[str, Any]:
    """What `status --json` prints, for the command and the console's "Now" page alike.

    The owner's switch and each stream's state come from the owner state; the
    last sync per stream is the end of the newest block its recipient acked (a
    signed ack, docs/sync.md), read from the store's marks; the disk used is
    the store's files and the blocks' bytes. Raises OwnerStateError, PolicyError, LedgerError, OSError.
    """
    from carledger.ledger import Store
    from carledger.owner.state import OwnerState, iso

    state = OwnerState.load(store)
    streams = []
    with Store.open_readonly(store) as ledger:
        backlog = ledger.backlog()
        for stream in state.effective_policy().streams:
            why = state.why_inactive(stream, now)
            acked = None if stream.local else ledger.acked_seq(stream.name)
            rows = [] if acked is None else ledger.blocks_between(stream.name, acked, acked)
            streams.append({"stream": stream.name, "recipient": None if stream.local else stream.recipient,
                            "state": "collecting" if why is None else why,
                            "acked_until": iso(rows[-1].t1 / 1e6) if rows else None,
                            "unacked_blocks": None if stream.local else backlog.get(stream.name, (0, 0))[0]})
        blocks_bytes = ledger.stored_bytes()
        buses = bus_health(ledger)
    store_bytes = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
    return {"collection": state.collection(now), "policy_version": state.policy.version or None,
            "streams": streams, "disk": {"store_bytes": store_bytes, "blocks_bytes": blocks_bytes}, "buses": buses}


#: Health blocks read back from the newest: enough for the last counters and the recent problems.
HEALTH_LOOKBACK = 32
#: The agent's health events that say something about a bus (agent/sources/bus.py, agent/pipeline.py).
BUS_PROBLEMS = ("bus-error", "source-failed", "frames-dropped", "bus-reopened")


def bus_health(ledger: Any) -> dict[str, dict[str, Any]]:
    """Per bus, from the newest signed blocks of the agent's `health` stream (each one's signature checked):
    the frames counted at the last `counters` event and when, the rate since the one before, and the last
    problem (bus-error, source-failed, frames-dropped, bus-reopened). Empty before the agent's first health block."""
    from carledger.ledger import Event, MalformedBlock, decode_record, open_block
    from carledger.owner.state import iso
    from nacl.signing import VerifyKey

    head = ledger.stream_head("health")
    if head is None:
        return {}
    key = VerifyKey(bytes(ledger.meta()["public_key"]))
    events: list[Event] = []
    for row in ledger.blocks_between("health", max(0, head[0] - HEALTH_LOOKBACK + 1), head[0]):
        try:
            block = open_block(ledger.message(row), key, allow_bare=True)
        except MalformedBlock:
            continue  # `carledger verify` reports it; a status shows what is signed
        events += [r for r in map(decode_record, block.records) if isinstance(r, Event)]
    buses: dict[str, dict[str, Any]] = {}
    counters = [e for e in events if e.kind in ("counters", "agent-stop") and isinstance(e.detail.get("frames"), dict)]
    for before, last in zip([None, *counters], counters):
        for bus, frames in last.detail["frames"].items():
            entry = buses.setdefault(bus, {"problem": None})
            entry.update(frames=frames, counted=iso(last.t / 1e6), frames_per_s=None)
            earlier = None if before is None else before.detail["frames"].get(bus)
            if type(earlier) is int and type(frames) is int and last.t > before.t and frames >= earlier:
                entry["frames_per_s"] = round((frames - earlier) / ((last.t - before.t) / 1e6), 1)
    for event in events:
        bus = event.detail.get("bus")
        if event.kind in BUS_PROBLEMS and isinstance(bus, str):
            buses.setdefault(bus, {"frames": None, "counted": None, "frames_per_s": None})["problem"] = {
                "kind": event.kind, "t": iso(event.t / 1e6), "error": event.detail.get("error")}
    return buses


def describe(collection: dict) -> str:
    """`collecting`, `paused until carledger resume`, `paused until 2027-06-03T12:00:00Z` in words."""
    if collection["state"] == "collecting":
        return "collecting" + (f" (a pause ended {collection['since']})" if collection.get("since") else "")
    if collection.get("by") == "policy":
        return "paused by the policy in force (paused = true)"
    since = f", since {collection['since']}" if collection.get("since") else ""
    return f"paused until {collection['until']}{since}" if collection.get("until") else \
        f"paused until `carledger resume`{since}"
