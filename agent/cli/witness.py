"""`carledger witness`: run a C2SP tlog-witness that cosigns logs' checkpoints (docs/transparency.md).

- `keygen DIR --name NAME`: the witness's cosigning key, DIR/witness.key
  (a note signer key, 0600) and DIR/witness.vkey (its verifier key, printed).
- `run DIR --log VKEY ... --listen HOST:PORT`: serve `POST /add-checkpoint`
  for the logs whose note verifier keys are given; state in DIR/witness.sqlite.
- `evidence DIR`: the forks the witness has seen, each with both signed checkpoints.

Anyone can run one: the owner on a home server, an insurer, an authority.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import threading
from pathlib import Path

from carledger.cli._args import address, host_port
from carledger.cli._store import UsageError, add_store_options, exit_status, require_dir_with

KEY_FILE = "witness.key"
VKEY_FILE = "witness.vkey"


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "witness", help="a transparency-log witness: cosigns checkpoints while they stay consistent",
        description="A C2SP tlog-witness (docs/transparency.md).",
        epilog=exit_status(),
    )
    sub = parser.add_subparsers(title="witness commands", metavar="ACTION")

    keygen = sub.add_parser(
        "keygen", help="make the witness's cosigning key; prints its verifier key",
        description="Write DIR/witness.key (the cosignature/v1 signer key, 0600) and DIR/witness.vkey, never "
        "overwriting them, and print the verifier key that logs and verifiers configure.",
        epilog=exit_status("written", "a key exists already (nothing written)"),
    )
    keygen.add_argument("dir", metavar="DIR", help="the witness's directory (created 0700 if missing)")
    keygen.add_argument("--name", required=True, help="the witness's key name, a schema-less URL (witness.example/w1)")
    keygen.set_defaults(func=run_keygen)

    run = sub.add_parser(
        "run", help="serve POST /add-checkpoint until stopped",
        description="Serve c2sp.org/tlog-witness add-checkpoint for the given logs; the state of each log is kept "
        "in DIR/witness.sqlite. Prints one line with the address once listening.",
        epilog=exit_status("stopped by SIGTERM or SIGINT", "cannot listen there"),
    )
    run.add_argument("dir", metavar="DIR", help="the witness's directory (holding witness.key)")
    run.add_argument("--log", action="append", default=[], metavar="VKEY",
                     help="a log's note verifier key (name+hash+base64); its name is the log's origin. Repeatable")
    run.add_argument("--logs", metavar="FILE", help="a file of log verifier keys, one a line ('#' starts a comment)")
    run.add_argument("--listen", default="127.0.0.1:7380", metavar="HOST:PORT", type=_listen,
                     help="address to listen on (default 127.0.0.1:7380; port 0: any free port)")
    run.add_argument("--prefix", default="", help="URL path prefix before /add-checkpoint (default none)")
    run.set_defaults(func=run_serve)

    evidence = sub.add_parser(
        "evidence", help="list the forks this witness has seen, with both signed checkpoints",
        description="Each entry holds the request that showed the fork (its signed checkpoint) and the signed "
        "checkpoint the witness had cosigned: both are signed by the log, so together they prove it forked.",
        epilog=exit_status("no evidence", "evidence of a fork is listed"),
    )
    evidence.add_argument("dir", metavar="DIR", help="the witness's directory")
    evidence.add_argument("--json", action="store_true", help="one JSON object per entry, bodies in base64")
    evidence.set_defaults(func=run_evidence)

    submit = sub.add_parser(
        "submit", help="submit a store's newest checkpoints to witnesses and keep their cosignatures",
        description="For each stream's newest signed checkpoint, POST add-checkpoint (old size, consistency proof, "
        "checkpoint) to each witness of the agent configuration's [[witness]] tables (-c) or --to; each "
        "cosignature is verified with the witness's key and kept in the store. Works beside a running agent (delivery marks only). A witness "
        "holding a checkpoint of the car's that the store lacks shows the store is an older copy: the evidence "
        "is kept and the store refuses to write (docs/transparency.md, Recovery).",
        epilog=exit_status("every submission cosigned", "some were not (unreachable, refused, or the store is an "
                           "older copy: the message says which)"),
    )
    add_store_options(submit, positional=True)  # -c FILE: the agent configuration also names the witnesses
    submit.add_argument("--to", nargs=2, action="append", default=[], metavar=("URL", "VKEY"),
                        help="a witness: its URL (POST URL/add-checkpoint) and verifier key. Repeatable")
    submit.add_argument("--stream", action="append", metavar="NAME", help="only this stream (repeatable)")
    submit.set_defaults(func=run_submit)

    logs = sub.add_parser(
        "logs", help="print the note verifier key of each stream's log (what a witness's --logs file holds)",
        description="One line per stream that has a signed checkpoint: its log's verifier key, whose name is the "
        "log's origin. Give a witness only the streams it should see.",
        epilog=exit_status(refused=None),
    )
    add_store_options(logs, positional=True, json_output=False)
    logs.add_argument("--stream", action="append", metavar="NAME", help="only this stream (repeatable)")
    logs.set_defaults(func=run_logs)


def run_keygen(args: argparse.Namespace) -> int:
    from carledger.ledger.files import private_dir, write_private
    from carledger.transparency.cosignature import ALG_COSIGNATURE_V1
    from carledger.transparency.note import KeyFormatError, generate_key

    directory = Path(args.dir)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{args.dir}: not a directory")
    key, vkey_path = directory / KEY_FILE, directory / VKEY_FILE
    for path in (key, vkey_path):
        if path.exists():
            print(f"carledger witness keygen: {path}: exists already; nothing written", file=sys.stderr)
            return 1
    try:
        skey, vkey = generate_key(args.name, ALG_COSIGNATURE_V1)
    except KeyFormatError as exc:
        raise UsageError(f"--name: {exc}") from None
    private_dir(directory)
    write_private(key, (skey + "\n").encode())
    vkey_path.write_text(vkey + "\n")
    print(vkey)
    return 0


def _log_keys(args: argparse.Namespace) -> list:
    from carledger.transparency.note import ALG_ED25519, KeyFormatError, parse_verifier_key

    given = [("--log", k) for k in args.log]
    if args.logs:
        try:
            text = Path(args.logs).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--logs {args.logs}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                given.append((f"{args.logs}:{number}", line))
    if not given:
        raise UsageError("no log keys: give --log VKEY or --logs FILE")
    keys = []
    for where, text in given:
        try:
            key = parse_verifier_key(text)
        except KeyFormatError as exc:
            raise UsageError(f"{where}: {exc}") from None
        if getattr(key, "alg", None) != ALG_ED25519:
            raise UsageError(f"{where}: a log key must be an Ed25519 note key (type 0x01)")
        keys.append(key)
    return keys


def _signer(directory: str):
    from carledger.transparency.cosignature import CosignatureSigner
    from carledger.transparency.note import KeyFormatError, parse_signer_key

    path = Path(directory) / KEY_FILE
    try:
        signer = parse_signer_key(path.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except KeyFormatError as exc:
        raise UsageError(f"{path}: {exc}") from None
    if not isinstance(signer, CosignatureSigner):
        raise UsageError(f"{path}: not a cosignature/v1 key (type 0x04): make one with carledger witness keygen")
    return signer


def _listen(text: str) -> tuple[str, int]:
    """`--listen`: HOST:PORT or [IPv6]:PORT (port 0: the system picks a free one, and the line says which)."""
    try:
        return host_port(text, lowest=0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_serve(args: argparse.Namespace) -> int:
    from carledger.transparency.witness import Witness, serve

    require_dir_with(args.dir, KEY_FILE, "witness directory")
    signer = _signer(args.dir)
    keys = _log_keys(args)
    host, port = args.listen
    if args.prefix and not args.prefix.startswith("/"):
        raise UsageError(f"--prefix {args.prefix!r} must start with /")
    witness = Witness(args.dir, signer, keys)
    try:
        server = serve(witness, host, port, args.prefix)
    except OSError as exc:
        witness.close()
        print(f"carledger witness: cannot listen on {address(host, port)}: {exc.strerror}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    bound_host, bound_port = server.server_address[:2]
    origins = ", ".join(sorted({k.name for k in keys}))
    print(f"witness {signer.name} listening on http://{bound_host}:{bound_port}{server.prefix}/add-checkpoint "
          f"for {origins}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        witness.close()
    return 0


def _indented(raw: bytes) -> str:
    return "\n".join("    " + line for line in raw.decode(errors="replace").rstrip("\n").split("\n"))


def run_evidence(args: argparse.Namespace) -> int:
    import sqlite3

    from carledger.transparency.witness import DB_FILE, read_evidence

    require_dir_with(args.dir, DB_FILE, "witness directory")
    try:
        entries = read_evidence(args.dir)
    except sqlite3.Error as exc:
        print(f"carledger witness evidence: {Path(args.dir) / DB_FILE}: {exc}", file=sys.stderr)
        return 2
    for e in entries:
        if args.json:
            print(json.dumps({**e, "request": base64.b64encode(e["request"]).decode(),
                              "stored": base64.b64encode(e["stored"]).decode()}))
        else:
            print(f"#{e['id']} {e['origin']}: {e['kind']} at {e['received']}")
            print("  offered:\n" + _indented(e["request"]))
            print("  cosigned before:\n" + _indented(e["stored"]))
    if not entries and not args.json:
        print("no evidence of a fork")
    return 1 if entries else 0


def _witnesses(args: argparse.Namespace) -> list:
    from carledger.sync.witnesses import witnesses_from_table

    found: list = []
    if args.config:
        from carledger.config import ConfigError, load_config

        try:
            found += load_config(args.config).witnesses
        except ConfigError as exc:
            raise UsageError(str(exc)) from None

    def error(field: str, why: str) -> UsageError:
        return UsageError(f"--to: {why}")

    found += witnesses_from_table([{"url": url, "key": key} for url, key in args.to], error)
    if not found:
        raise UsageError("no witness: give -c FILE (the agent configuration, with [[witness]] tables) or --to URL VKEY")
    return found


def run_submit(args: argparse.Namespace) -> int:
    from carledger.ledger import Store
    from carledger.ledger.checkpoints import ForkedStore
    from carledger.sync.witnesses import submit

    witnesses = _witnesses(args)
    with Store.open_marks(args.store) as store:
        try:
            results = submit(store, witnesses, args.stream)
        except ForkedStore as exc:
            print(f"carledger witness submit: {exc}", file=sys.stderr)
            return 1
    for r in results:
        if args.json:
            print(json.dumps({"witness": r.witness, "stream": r.stream, "size": r.size, "status": r.status,
                              "cosigned": r.cosigned, "detail": r.detail}))
        else:
            print(f"{r.witness} {r.stream} {r.size}: {r.detail}")
    return 0 if results and all(r.cosigned for r in results) else 1


def run_logs(args: argparse.Namespace) -> int:
    from carledger.ledger import Store
    from carledger.ledger.checkpoints import log_verifier

    with Store.open_readonly(args.store) as store:
        for name in args.stream or store.streams():
            key = store.stream_key(name)
            if key is not None:
                print(log_verifier(key, name).vkey())
    return 0
