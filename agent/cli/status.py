"""`carledger status [STORE]`: is the car collecting, paused, or paused until a time; and each stream's state."""

from __future__ import annotations

import argparse
import json
import time

from carledger.cli._display import table
from carledger.cli._store import EXIT_OK, EXIT_USAGE, add_store_options, exit_status, fail

EPILOG = """\
examples:
  carledger status                        the store of /etc/carledger/agent.toml
  carledger status /var/lib/carledger --json

Prints the collection switch (collecting; paused until `carledger resume`;
paused until a time, after which the car collects again by itself), the
policy version in force, and for each stream whether it collects now or
why not (no consent, consent expired or revoked, paused). Read from the
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
    from carledger.owner import OwnerStateError
    from carledger.owner.state import OwnerState
    from carledger.policy import PolicyError

    now = time.time()
    try:
        state = OwnerState.load(args.store)
    except (OwnerStateError, PolicyError, OSError) as exc:
        return fail(args, str(exc), EXIT_USAGE)
    collection = state.collection(now)
    policy = state.effective_policy()
    streams = []
    for stream in policy.streams:
        why = state.why_inactive(stream, now)
        streams.append({"stream": stream.name, "recipient": None if stream.local else stream.recipient,
                        "state": "collecting" if why is None else why})
    if args.json:
        print(json.dumps({"collection": collection, "policy_version": state.policy.version or None,
                          "streams": streams}, sort_keys=True))
        return EXIT_OK
    print(f"collection: {describe(collection)}")
    print(f"policy: version {state.policy.version}" if state.policy.version else "policy: none applied (nothing is collected)")
    if streams:
        rows = [("stream", "recipient", "state")]
        rows += [(s["stream"], s["recipient"] or "(kept in the car)", s["state"]) for s in streams]
        print(table(rows))
    return EXIT_OK


def describe(collection: dict) -> str:
    """`collecting`, `paused until carledger resume`, `paused until 2027-06-03T12:00:00Z` in words."""
    if collection["state"] == "collecting":
        return "collecting" + (f" (a pause ended {collection['since']})" if collection.get("since") else "")
    if collection.get("by") == "policy":
        return "paused by the policy in force (paused = true)"
    since = f", since {collection['since']}" if collection.get("since") else ""
    return f"paused until {collection['until']}{since}" if collection.get("until") else \
        f"paused until `carledger resume`{since}"
