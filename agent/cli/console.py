"""`carledger console [pair]`: the owner's console, a local web page; `pair` prints a one-time code for a phone."""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import sys
import threading

from carledger.cli._store import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, UsageError, add_store_options, exit_status, fail

EPILOG = """\
examples:
  carledger console                         http://127.0.0.1:8765/ on the car computer itself
  carledger console --listen 192.168.4.1    https:// on the car's Wi-Fi (self-signed; fingerprint printed)
  carledger console pair                    a one-time code to pair a phone or a browser

Without --listen the console is served on 127.0.0.1 only, over plain HTTP.
With --listen ADDR (any address that is not loopback) it is served over
HTTPS only: a self-signed certificate is made on first start and kept in
STORE/console/; check the printed fingerprint on the phone once. Nothing
is readable or changeable without a paired session (docs/console.md).
""" + exit_status("served until stopped", "the server could not start (address in use, certificate)")


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    from carledger.console import DEFAULT_PORT

    parser = subparsers.add_parser(
        "console", help="the owner's console: a web page for status, consents and what left the car",
        description="Serve the owner's console (status, who gets what, what left the car; grant, revoke, pause).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--listen", metavar="ADDR", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1); any other than loopback is served over HTTPS only")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N", help=f"TCP port (default {DEFAULT_PORT}; 0: any free one)")
    parser.add_argument("--tls", action="store_true", help="HTTPS on a loopback address too (always on for others)")
    add_store_options(parser, json_output=False)
    sub = parser.add_subparsers(title="console commands", metavar="ACTION")
    pair = sub.add_parser("pair", help="print a one-time code that pairs a phone or browser with the console",
                          description="Print a one-time pairing code (8 digits, valid 10 minutes, once). "
                          "It replaces any earlier code; only its hash is stored.",
                          epilog=exit_status("printed", None))
    add_store_options(pair)
    pair.set_defaults(func=pair_code)
    sign = sub.add_parser("sign-pairing", help="sign the pairing page's challenge with the owner's key (on any computer)",
                          description="Pair a browser with the console without a shell on the car: sign the challenge "
                          "its pairing page shows with the owner key enrolled in the car (carledger remote enroll-owner), "
                          "and paste the signature into that page.",
                          epilog=exit_status("printed the signature", None))
    sign.add_argument("challenge", metavar="CHALLENGE", help="the challenge the pairing page shows (32 hex digits)")
    sign.add_argument("--key", required=True, metavar="FILE", help="the owner's private key (carledger keygen owner)")
    sign.set_defaults(func=sign_pairing, store_create=None)
    parser.set_defaults(func=serve)


def pair_code(args: argparse.Namespace) -> int:
    from carledger.console.auth import new_code
    from carledger.owner.state import iso

    try:
        code, expires = new_code(args.store)
    except OSError as exc:
        return fail(args, f"{args.store}: cannot store the pairing code: {exc.strerror}", EXIT_USAGE)
    if args.json:
        print(json.dumps({"code": code, "expires": iso(expires)}))
    else:
        print(f"pairing code: {code} (works once, until {iso(expires)})")
    return EXIT_OK


def sign_pairing(args: argparse.Namespace) -> int:
    from carledger.console.auth import pairing_message
    from carledger.ledger import KeyFileError, load_signing_key

    challenge = args.challenge.strip().lower()
    if len(challenge) != 32 or any(c not in "0123456789abcdef" for c in challenge):
        raise UsageError(f"{args.challenge[:40]!r} is not a challenge (32 hex digits, as the pairing page shows it)")
    try:
        key = load_signing_key(args.key)
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    print(key.sign(pairing_message(challenge)).signature.hex())
    return EXIT_OK


def serve(args: argparse.Namespace) -> int:
    from carledger.cli._store import target
    from carledger.console.app import Console
    from carledger.console.auth import Auth
    from carledger.console.server import ConsoleServer
    from carledger.console.tls import TlsError, certificate, server_context

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: a TCP port is 0-65535")
    try:
        loopback = ipaddress.ip_address(args.listen).is_loopback
    except ValueError:
        raise UsageError(f"--listen {args.listen}: not an IP address (give the address of the car's Wi-Fi or LAN interface)") from None
    tls, fingerprint = None, None
    if args.tls or not loopback:
        try:
            cert, key, fingerprint = certificate(args.store, args.listen)
            tls = (server_context(cert, key), str(cert), str(key))
        except TlsError as exc:
            return fail(args, str(exc), EXIT_REFUSED)
    where = target(args)
    try:
        server = ConsoleServer((args.listen, args.port), Console(where, Auth(where.store), local_only=loopback), tls)
    except OSError as exc:
        return fail(args, f"cannot serve on {args.listen} port {args.port}: {exc.strerror or exc}", EXIT_REFUSED)
    host, port = server.address
    host = f"[{host}]" if ":" in host else host
    print(f"console: {'https' if tls else 'http'}://{host}:{port}/ (pair a device: carledger console pair)", flush=True)
    if fingerprint:
        print(f"certificate SHA-256 fingerprint: {fingerprint}", flush=True)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    print("console: stopped", file=sys.stderr)
    return EXIT_OK
