"""`carledger wipe`: for a change of owner, delete the previous owner's data and rotate the keys."""

from __future__ import annotations

import argparse
import json
import sys

from carledger.cli._store import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, add_store_options, exit_status, fail

EPILOG = """\
What it does: deletes every block of every stream, the policy, the consents,
the pseudonym secret and the previous owner's enrolments (the owner key for
remote updates, the collector keys); creates a new vehicle key; and starts a
new ledger whose audit stream holds a statement signed by the old key: when,
which key takes over, where each old chain ended. The vehicle id stays (it
names the car). The new owner starts with no policy: nothing is collected
until `carledger policy apply`. `carledger remote identity` then prints what
a collector enrols, and writes the handover a collector of the previous key
needs (docs/owner-state.md, "Change of owner").

Stop the agent first (systemctl stop carledger). It asks for confirmation
unless --yes is given.
""" + exit_status("wiped", "refused or not confirmed")


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "wipe", help="change of owner: delete all personal data, rotate the keys",
        description="Wipe the store for a new owner.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_store_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carledger.ledger import LedgerError, StoreLocked
    from carledger.owner.wipe import wipe

    store = args.store  # resolved (and checked to be a store) by carledger.cli._store
    if not args.yes:
        if not sys.stdin.isatty():
            return fail(args, "wipe deletes all recorded data: confirm with --yes (no terminal to ask on)", EXIT_REFUSED)
        answer = input(f"This deletes ALL data in {store} and replaces the vehicle key. Type WIPE to go on: ")
        if answer.strip() != "WIPE":
            return fail(args, "not confirmed; nothing changed", EXIT_REFUSED)
    try:
        result = wipe(store)
    except StoreLocked:
        return fail(args, f"the agent is running on {store}: stop it first (systemctl stop carledger), then wipe", EXIT_REFUSED)
    except (LedgerError, OSError) as exc:
        return fail(args, str(exc), EXIT_USAGE)
    if args.json:
        print(json.dumps({"ok": True, "blocks_deleted": result.blocks, "streams": result.streams,
                          "old_key": result.old_kid, "new_key": result.new_kid, "vehicle": result.statement["vehicle"]}))
    else:
        print(f"wiped {result.blocks} blocks of {result.streams} streams; vehicle key {result.old_kid} replaced by "
              f"{result.new_kid}. Nothing is collected until the new owner applies a policy (carledger policy apply).")
        print(f"To sync, enrol the new key with your collectors: carledger remote identity --store {store} "
              "(--handover FILE for a collector that knew the previous key).")
    return EXIT_OK
