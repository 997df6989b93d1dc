"""`carledger prove` and `carledger verify-proof`: a stream's records over a time window, provable offline.

`prove STORE --stream S --from T1 --to T2 -o FILE` writes a proof bundle
(agent/ledger/proofs.py, docs/transparency.md "Portable proofs"): the
records with their inclusion proofs into their blocks, the blocks with their
inclusion proofs into the stream's newest signed checkpoint, and that
checkpoint with the cosignatures the store keeps, and a window statement the
stream's own key (the vehicle key, or a recipient's own key) signs so the window itself is bound. `verify-proof FILE
--policy P` checks it with nothing but the bundle and the policy's keys.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

from carledger.cli._args import micros
from carledger.cli._store import UsageError, add_store_options, exit_status, fail, open_output


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    prove = subparsers.add_parser(
        "prove", help="export a stream's records over a time window with proofs that verify offline",
        description="Write a proof bundle (docs/transparency.md, Portable proofs) of the records of STREAM with "
        "times in [FROM, TO], under the stream's newest signed checkpoint and its kept cosignatures. It holds no "
        "other record of the stream; the stream's own key signs its window. Times: ISO 8601 (UTC unless an offset is given) or POSIX seconds.",
        epilog=exit_status("written", "no checkpoint or no block covers the window, records were dropped, or the "
                           "stream's key is not at hand"),
    )
    add_store_options(prove, positional=True, json_output=False)
    prove.add_argument("--stream", required=True, help="the stream")
    prove.add_argument("--from", dest="t_from", required=True, metavar="T1", help="first time of the window")
    prove.add_argument("--to", dest="t_to", required=True, metavar="T2", help="last time of the window")
    prove.add_argument("-o", "--output", metavar="FILE", help="the bundle file (default: standard output)")
    prove.add_argument("--key", metavar="FILE", help="the vehicle key, where it is not STORE/keys/vehicle.key "
                       "(default: the configuration's [agent] key, with -c)")
    prove.set_defaults(func=run_prove)

    verify = subparsers.add_parser(
        "verify-proof", help="verify a proof bundle offline against a policy (log key, witness keys, quorum)",
        description="Check every signature and proof of a bundle `carledger prove` wrote, with nothing but the "
        "bundle and the policy file: lines `log VKEY` (the stream's log key: `carledger witness logs`), "
        "`witness VKEY` (repeatable) and `quorum N` (default: every witness). Prints the disclosed records.",
        epilog=exit_status("the bundle verifies", "it does not (the line says where)"),
    )
    verify.add_argument("file", metavar="FILE", help="the proof bundle")
    verify.add_argument("--policy", required=True, metavar="P", help="the policy file")
    verify.add_argument("--json", action="store_true", help="print the result as one JSON object")
    verify.set_defaults(func=run_verify)


def run_prove(args: argparse.Namespace) -> int:
    from carledger.ledger import Store
    from carledger.ledger.errors import StoreError
    from carledger.ledger.proofs import ProofError, build_bundle, dumps, stream_signer

    t_from, t_to = micros("--from", args.t_from), micros("--to", args.t_to)
    vehicle = _vehicle_key(args)
    with Store.open_readonly(args.store) as store:
        try:
            bundle = build_bundle(store, args.stream, t_from, t_to, signer=stream_signer(store, args.stream, vehicle))
        except (ProofError, StoreError) as exc:
            return fail(args, f"prove: {exc}", 1)
        except sqlite3.OperationalError as exc:
            return fail(args, f"prove: {args.store}: no checkpoints in this store ({exc}); run the agent on it once", 1)
    out = open_output(args.output)
    try:
        out.write(dumps(bundle))
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _vehicle_key(args: argparse.Namespace):
    """The vehicle key --key names, else the one the configuration's [agent] key names; None: the store's own."""
    from carledger.ledger.errors import KeyFileError
    from carledger.ledger.keys import FileSigner, load_signing_key, signer_from_spec

    try:
        if args.key:
            return FileSigner(load_signing_key(args.key))
        spec = getattr(args.target, "key", None)
        return signer_from_spec(spec, args.store) if spec else None
    except (KeyFileError, OSError) as exc:  # KeyBackendUnavailable is a KeyFileError
        raise UsageError(f"--key {args.key}: {exc}" if args.key else f"[agent] key: {exc}") from None


def run_verify(args: argparse.Namespace) -> int:
    from carledger.ledger.proofs import ProofError, parse_policy, verify_bundle

    try:
        policy = parse_policy(Path(args.policy).read_text(encoding="utf-8"), args.policy)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--policy {args.policy}: cannot read: {exc}") from None
    except ProofError as exc:
        raise UsageError(str(exc)) from None
    try:
        bundle = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return fail(args, f"verify-proof: {args.file}: not a readable JSON bundle: {exc}", 1)
    try:
        got = verify_bundle(bundle, policy)
    except ProofError as exc:
        return fail(args, f"verify-proof: {args.file}: {exc}", 1)
    if args.json:
        print(json.dumps({"ok": True, "stream": got.stream, "checkpoint_size": got.size,
                          "witnesses": list(got.witnesses), "blocks": list(got.blocks), "records": len(got.records)}))
    else:
        print(f"{args.file}: verified: stream {got.stream}, blocks {got.blocks[0]}..{got.blocks[1]} of a checkpoint "
              f"of {got.size}, cosigned by {', '.join(got.witnesses) or 'no witness'}; {len(got.records)} records")
        for record in got.records:
            print(f"  {record}")
    return 0
