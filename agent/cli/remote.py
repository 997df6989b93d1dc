"""`carledger remote`: the car owner's side of remote policy updates (docs/sync.md).

enroll-owner puts the owner's public key in the agent's store; sign-policy signs a
policy file with the owner's key (COSE_Sign1 over the file's bytes);
send-policy publishes the signed update to the vehicle's policy topic and,
with --wait, prints the outcome the vehicle reports on its status topic.
identity prints what a collector enrols (a recipient's pseudonym and own key
with --recipient) and writes the owner's proof that recipients' keys are this
car's (--prove); check-proof checks such a proof offline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from carledger.cli._args import seconds
from carledger.cli._store import UsageError, add_store_options, open_output, target
from carledger.cli.collect import add_mqtt_arguments, mqtt_config_from_args
from carledger.cli.keygen import KINDS

EPILOG = """\
examples:
  carledger keygen owner -o owner.key                    # writes owner.key and owner.pub
  carledger remote enroll-owner owner.pub --store /var/lib/carledger    # on the car, once (or -c agent.toml)
  carledger remote sign-policy policy.toml --key owner.key --previous 3 -o policy.cose   # checked first
  carledger remote send-policy policy.cose --vehicle car-1 --host broker.example --ca ca.crt \\
      --cert owner.crt --key owner-tls.key --wait 60 --vehicle-key vehicle.pub
  carledger remote identity --store /var/lib/carledger --recipient "Acme Insurance"   # what Acme enrols
  carledger remote identity --store /var/lib/carledger --prove "Acme Insurance" "Fleet Ops" -o proof.json
  carledger remote check-proof proof.json --vehicle-key vehicle.pub                   # anyone, offline
"""  # each command's exit status is in its own help


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "remote", help="remote policy updates: enrol the owner's key, sign and send updates",
        description="The owner's key signs policy updates; the agent applies one only if it verifies with the "
        "enrolled owner key and its version is higher.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="remote commands", metavar="COMMAND")

    p = sub.add_parser("enroll-owner", help="enrol the owner's public key in a store (STORE/keys/owner.pub)",
                       epilog="exit status: 0 enrolled, 2 not a store, or an unreadable or wrong kind of key.")
    p.add_argument("public_key", metavar="OWNER_PUB", help="64 hex digits, a .pub file, or the owner's .key file")
    add_store_options(p, json_output=False)
    p.set_defaults(func=enroll)

    p = sub.add_parser(
        "sign-policy", help="check a policy file completely, then sign it with the owner's key",
        description="Runs the whole check of `carledger policy check` first, and signs only a valid policy whose "
        "version is higher than the one the car has (from --store or --previous).",
        epilog="exit status: 0 signed, 2 refused (invalid policy, version not higher, wrong key) or unreadable input.",
    )
    p.add_argument("policy", metavar="POLICY", help="the policy TOML file")
    p.add_argument("--key", required=True, dest="owner_key", metavar="OWNER_KEY", help="the owner's private key file")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the signed update to write")
    p.add_argument("--store", metavar="STORE", help="the car's store: the version must be higher than the policy in "
                   "force there, and the key the owner key enrolled there")
    p.add_argument("--previous", metavar="VERSION|FILE", help="the version in force on the car: a number, or the "
                   "policy file last sent")
    p.add_argument("--dbc", action="append", metavar="FILE", help="check signal names against the car's DBC "
                   "(repeatable; default: the shipped demo car's DBC, as `policy check`)")
    p.add_argument("--no-dbc", action="store_true", help="do not check signal names against any DBC")
    p.set_defaults(func=sign)

    p = sub.add_parser(
        "identity", help="what a collector enrols for this car: its vehicle id and public key (and the handover)",
        description="Print the vehicle id and the vehicle's public key, and the command a collector runs to enrol "
        "them. With --recipient R: what R's collector enrols instead, R's pseudonym and R's own key, which name "
        "nothing else of the car (docs/owner-state.md, Identities). --prove R... -o FILE writes the key statements "
        "the vehicle key signed for those recipients, with which the owner shows whoever they choose that those "
        "keys are this car's (check it with `carledger remote check-proof FILE`). After a change of owner "
        "(carledger wipe), --handover writes the statement the previous key signed, with which a collector that "
        "knew the previous key re-keys the vehicle.",
        epilog="exit status: 0 printed (or written), 2 not a store, no pseudonym secret or key statement yet, "
        "or --handover on a store that was never wiped.",
    )
    add_store_options(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--recipient", metavar="R", help="what recipient R's collector enrols: R's pseudonym and key")
    group.add_argument("--prove", nargs="+", metavar="R", help="write the key statements of these recipients (-o FILE)")
    group.add_argument("--handover", metavar="FILE", help="write the handover (JSON) for the collectors of the previous owner")
    p.add_argument("-o", "--output", metavar="FILE", help="with --prove: the proof (JSON) to write")
    p.set_defaults(func=identity)

    p = sub.add_parser(
        "check-proof", help="check, offline, a proof that recipients' keys are one car's (remote identity --prove)",
        description="Checks every key statement of the proof against the vehicle key: the file's own, or "
        "--vehicle-key (the key you know the car by: pin it, since whoever wrote the file chose the file's).",
        epilog="exit status: 0 every statement verifies, 1 refused (a statement or the key does not verify), "
        "2 unreadable file or key.",
    )
    p.add_argument("proof", metavar="FILE", help="the proof `carledger remote identity --prove` wrote")
    p.add_argument("--vehicle-key", metavar="PUB", help="the vehicle's public key (64 hex digits or vehicle.pub)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=check_proof)

    p = sub.add_parser("send-policy", help="publish a signed update to carledger/v1/VEHICLE/policy",
                       epilog="exit status: 0 sent (with --wait: applied), 1 refused by the vehicle or no outcome "
                       "in time, 2 unreadable file or broker not reached.")
    p.add_argument("signed", metavar="SIGNED", help="the file sign-policy wrote")
    p.add_argument("--vehicle", required=True)
    p.add_argument("--wait", type=seconds, default=0, metavar="S", help="wait up to S seconds for the vehicle's outcome "
                   "(needs --vehicle-key)")
    p.add_argument("--vehicle-key", metavar="PUB", help="the vehicle's public key (64 hex digits or vehicle.pub): "
                   "with --wait, only an outcome it signed counts")
    add_mqtt_arguments(p)
    p.set_defaults(func=send)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


class _Refused(Exception):
    """One line for the user; the command exits 2 (usage or unreadable input)."""


def _fail(message: str) -> int:
    print(f"carledger remote: {message}", file=sys.stderr)
    return 2


def _store_dir(store: str) -> Path:
    """A directory that holds a carledger store; _Refused for anything else (nothing is created)."""
    from carledger.ledger.store import DB_FILE

    if not (Path(store) / DB_FILE).is_file():
        raise _Refused(f"{store}: no carledger store here")
    return Path(store)


def _owner_kind(path: str, want_half: str) -> None:
    """Refuse a key file whose kind line says it is not the owner's (a recipient's X25519 key, the vehicle's)."""
    from carledger.cli.keygen import key_kind
    from carledger.ledger.keys import KEY_FILE, PUB_FILE

    if Path(path).name in (KEY_FILE, PUB_FILE):
        raise _Refused(f"{path}: the vehicle's own key, not the owner's (make one with: carledger keygen owner -o owner.key)")
    kind = key_kind(path) if os.path.isfile(path) else None
    if kind is not None and kind[0] != "owner":
        raise _Refused(f"{path}: a {kind[0]} key ({KINDS[kind[0]]}), not the owner's Ed25519 key "
                       "(make one with: carledger keygen owner -o owner.key)")
    if kind is not None and want_half == "private" and kind[1] != "private":
        raise _Refused(f"{path}: the owner's public key; signing needs the private one (owner.key)")


def enroll(args: argparse.Namespace) -> int:
    from carledger.ledger import KeyFileError, kid
    from carledger.sync import enroll_owner, load_owner_key

    try:
        store = _store_dir(args.store)
        _owner_kind(args.public_key, "public")
        path = enroll_owner(store, args.public_key)
        key = load_owner_key(store)
    except (_Refused, KeyFileError, OSError) as exc:
        return _fail(str(exc))
    print(f"owner key {kid(key).hex()} enrolled in {path}")
    return 0


PROOF_TYPE = "carledger/key-proof/v1"


def recipient_identity(store: str | os.PathLike, recipient: str) -> dict:
    """What `recipient`'s collector enrols: its pseudonym and own key (or, for identity = "vin", the vehicle's).

    Derived from the pseudonym secret and the store's vehicle id, exactly as
    the writer derives them (Ledger.certify); _Refused before the car made its secret.
    """
    from carledger.ledger import Store, kid
    from carledger.ledger.identity import derive_signing_key
    from carledger.ledger.keys import load_secret
    from carledger.owner.state import OwnerState
    from carledger.policy import pseudonym

    with Store.open_readonly(store) as s:
        vehicle, public = s.vehicle_id, s.public_key
    streams = [x for x in OwnerState.load(store).policy.streams if x.recipient == recipient and not x.local]
    if streams and all(x.identity == "vin" for x in streams):
        return {"recipient": recipient, "identity": "vin", "vehicle": vehicle, "public_key": public.hex(),
                "kid": kid(public).hex()}
    secret = load_secret(store)
    if secret is None:
        raise _Refused(f"{store}: the car has no pseudonym secret yet (keys/pseudonym.key): run the agent once")
    pub = bytes(derive_signing_key(secret, vehicle, recipient).verify_key)
    name = pseudonym(secret, vehicle, recipient)
    return {"recipient": recipient, "identity": "pseudonym", "vehicle": name, "pseudonym": name,
            "public_key": pub.hex(), "kid": kid(pub).hex()}


def key_proof(vehicle: str, vehicle_key: bytes, statements: list[str]) -> dict:
    """The proof document `check-proof` reads: the vehicle key and key statements it signed (hex)."""
    return {"type": PROOF_TYPE, "vehicle": vehicle, "vehicle_key": bytes(vehicle_key).hex(), "statements": statements}


def _prove(store: Path, recipients: list[str], output: str) -> dict:
    """The proof file: the vehicle key and the key statements it signed for `recipients` (docs/owner-state.md)."""
    from carledger.ledger import Store

    with Store.open_readonly(store) as s:
        ring = s.keyring()
        vehicle, public = s.vehicle_id, s.public_key
    statements = []
    for recipient in recipients:
        name = recipient_identity(store, recipient).get("pseudonym")
        cert = ring.for_pseudonym(name) if name else None
        if cert is None:
            raise _Refused(f"{recipient}: no key statement yet (the car certifies a recipient's key when its "
                           "pseudonymous stream first runs)" if name else f"{recipient}: identified by the VIN; "
                           "its blocks are signed with the vehicle key itself")
        statements.append(cert.statement.hex())
    proof = key_proof(vehicle, public, statements)
    with open_output(output) as fh:
        json.dump(proof, fh, indent=1)
        fh.write("\n")
    return proof


def check_proof(args: argparse.Namespace) -> int:
    """One line: every statement verifies with the vehicle key (0), or why the proof is refused (1, 2)."""
    from carledger.ledger import KeyFileError, MalformedBlock, kid
    from carledger.ledger.identity import open_statement
    from carledger.ledger.keys import enrolment_key

    def refuse(code: int, why: str) -> int:
        if args.json:
            print(json.dumps({"ok": False, "proof": args.proof, "error": why}))
        print(f"carledger remote: {args.proof}: refused: {why}", file=sys.stderr)
        return code

    try:
        with open(args.proof, encoding="utf-8") as fh:
            proof = json.load(fh)
        if not isinstance(proof, dict) or proof.get("type") != PROOF_TYPE:
            return refuse(2, f"not a carledger key proof (type {PROOF_TYPE})")
        statements = [bytes.fromhex(x) for x in proof["statements"]]
        own = enrolment_key(bytes.fromhex(proof["vehicle_key"]))
    except OSError as exc:
        return refuse(2, exc.strerror or str(exc))
    except (ValueError, KeyError, TypeError, KeyFileError) as exc:
        return refuse(2, f"unreadable field ({type(exc).__name__}: {exc})")
    try:
        key = enrolment_key(args.vehicle_key) if args.vehicle_key else own
    except KeyFileError as exc:
        return refuse(2, f"--vehicle-key: {exc}")
    if bytes(key) != bytes(own):
        return refuse(1, f"vehicle_key (key id {kid(own).hex()}) is not the given --vehicle-key ({kid(key).hex()})")
    certs = []
    for i, statement in enumerate(statements):
        try:
            cert = open_statement(statement, key)
        except MalformedBlock as exc:
            return refuse(1, f"statements[{i}]: {exc}")
        if cert.vehicle != proof.get("vehicle"):
            return refuse(1, f"statements[{i}]: signed for vehicle {cert.vehicle!r}, the proof names {proof.get('vehicle')!r}")
        certs.append(cert)
    if not certs:
        return refuse(1, "no statements")
    pinned = "pinned" if args.vehicle_key else "from the file: compare it with the car's"
    if args.json:
        print(json.dumps({"ok": True, "vehicle": certs[0].vehicle, "vehicle_key": bytes(key).hex(), "kid": kid(key).hex(),
                          "pinned": bool(args.vehicle_key), "keys": [c.as_json() for c in certs]}))
        return 0
    from carledger.cli._export import iso

    keys = ", ".join(f"{c.recipient} = {c.pseudonym} (key id {c.key_id.hex()}, certified {iso(c.created, 0)})"
                     for c in certs)
    print(f"proof OK: vehicle {certs[0].vehicle} (key id {kid(key).hex()}, {pinned}) signed the keys of {keys}")
    return 0


def identity(args: argparse.Namespace) -> int:
    """The vehicle id and key as the store records them (or a recipient's pseudonym and key, or the proof).

    Both are read from the store's meta (unsigned): a wrong value printed
    here cannot forge anything, since the collector verifies every block
    against what it enrols and would report each one as a bad signature.
    """
    from carledger.config import ConfigError
    from carledger.ledger import LedgerError, Store, kid
    from carledger.owner.state import OwnerStateError
    from carledger.owner.wipe import handover

    if args.output and not args.prove:
        return _fail("-o goes with --prove")
    try:
        store = _store_dir(target(args).store)
        if args.prove:
            if not args.output:
                raise _Refused("--prove needs -o FILE (the proof to write)")
            proof = _prove(store, args.prove, args.output)
            print(f"wrote {args.output}: {len(proof['statements'])} key statement(s) signed by the vehicle key "
                  f"(key id {kid(bytes.fromhex(proof['vehicle_key'])).hex()}); check it: carledger remote check-proof "
                  f"{args.output}")
            return 0
        if args.recipient is not None:
            return _print_recipient(recipient_identity(store, args.recipient), args.json)
        with Store.open_readonly(store) as s:
            vehicle, public = s.vehicle_id, s.public_key
        detail = handover(store)
        if args.handover and detail is None:
            raise _Refused(f"{store}: never wiped: there is no handover (a first enrolment needs none)")
        if args.handover:
            with open(args.handover, "x", encoding="utf-8") as fh:
                json.dump(detail, fh, indent=1)
    except (ConfigError, LedgerError, _Refused, UsageError, OwnerStateError) as exc:
        return _fail(str(exc))
    except FileExistsError:
        return _fail(f"{args.handover}: exists already; not overwritten")
    except OSError as exc:
        return _fail(f"{exc.filename}: {exc.strerror}")
    out = {"vehicle": vehicle, "public_key": public.hex(), "kid": kid(public).hex()}
    if detail is not None:
        statement = detail["statement"]
        out.update(previous_key=statement["previous_key"], previous_kid=kid(bytes.fromhex(statement["previous_key"])).hex(),
                   wiped_at=statement["at"])
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"vehicle     {vehicle}\npublic key  {out['public_key']}  (key id {out['kid']})")
    print(f"enrol it:   carledger collect enroll COLLECTOR {vehicle} {out['public_key']}")
    if detail is not None:
        print(f"owner changed {out['wiped_at']}: a collector that enrolled the previous key ({out['previous_kid']}) "
              f"re-keys it with the handover: carledger collect enroll COLLECTOR {vehicle} {out['public_key']} "
              f"--handover {args.handover or 'FILE'}" + ("" if args.handover else " (write FILE with --handover FILE)"))
    print(f"(a recipient the policy gives a pseudonym enrols that and its own key instead: carledger remote identity "
          f"--store {store} --recipient RECIPIENT)")
    return 0


def _print_recipient(doc: dict, as_json: bool) -> int:
    """What R's collector enrols; nothing here names the car (for a pseudonymous recipient)."""
    if as_json:
        print(json.dumps(doc))
        return 0
    known = "its pseudonym of this car" if doc["identity"] == "pseudonym" else "the vehicle id (identity = \"vin\")"
    print(f"recipient   {doc['recipient']}\nvehicle     {doc['vehicle']}  ({known})\n"
          f"public key  {doc['public_key']}  (key id {doc['kid']})")
    print(f"enrol it:   carledger collect enroll COLLECTOR {doc['vehicle']} {doc['public_key']}")
    return 0


def _known_version(args: argparse.Namespace) -> tuple[int, str] | None:
    """(version in force on the car, where that was read), from --store or --previous; None when neither is given."""
    from carledger.owner.state import OwnerState, OwnerStateError
    from carledger.policy.document import PolicyError, load_policy

    try:
        if args.store:
            return OwnerState.load(_store_dir(args.store)).policy.version, args.store
        if args.previous is None:
            return None
        if args.previous.isascii() and args.previous.isdigit():
            return int(args.previous), "--previous"
        return load_policy(args.previous, check_expiry=False).version, args.previous
    except PolicyError as exc:
        raise _Refused(f"{args.store or args.previous}: cannot read the version in force: {exc.problems[0]}") from None
    except OwnerStateError as exc:
        raise _Refused(str(exc)) from None


def _check_policy(args: argparse.Namespace, document: bytes):
    """The policy `document`, checked as `carledger policy check` checks it; _Refused with its first problem."""
    from carledger.cli.policy import _known, _Usage
    from carledger.policy.document import PolicyError, policy_from_text

    try:
        text = document.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(f"{args.policy}: not UTF-8 text; not signed") from None
    try:
        return policy_from_text(args.policy, text, _known(args, True))
    except _Usage as exc:
        raise _Refused(str(exc)) from None
    except PolicyError as exc:
        more = f" (and {len(exc.problems) - 1} more: carledger policy check {args.policy})" if len(exc.problems) > 1 else ""
        raise _Refused(f"not signed: {exc.problems[0]}{more}") from None


def sign(args: argparse.Namespace) -> int:
    """Sign only what the car would apply: a valid policy, a higher version, the enrolled owner's key."""
    from carledger.ledger import KeyFileError, kid, load_signing_key
    from carledger.sync import load_owner_key, sign_policy

    try:
        _owner_kind(args.owner_key, "private")
        key = load_signing_key(args.owner_key)
        with open(args.policy, "rb") as fh:
            document = fh.read()
        policy = _check_policy(args, document)
        known = _known_version(args)
        if known is not None and policy.version <= known[0]:
            raise _Refused(f"{args.policy}: version {policy.version} is not higher than the version in force "
                           f"({known[0]}, from {known[1]}); set version = {known[0] + 1} or higher")
        if args.store:
            enrolled = load_owner_key(args.store)
            if enrolled is not None and bytes(enrolled) != bytes(key.verify_key):
                raise _Refused(f"{args.owner_key}: not the owner key enrolled in {args.store} (key id "
                               f"{kid(enrolled).hex()}); the car would refuse the update")
        signed = sign_policy(document, key)
        with open_output(args.output, "wb") as fh:
            fh.write(signed)
    except (_Refused, KeyFileError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename}: {exc.strerror}")
    print(f"signed {args.policy} (version {policy.version}, {len(document)} bytes) -> {args.output}")
    return 0


def send(args: argparse.Namespace) -> int:
    import hashlib

    from carledger.ledger import KeyFileError
    from carledger.ledger.keys import load_verify_key
    from carledger.sync import topics
    from carledger.sync.policy_update import PolicyRejected, open_outcome
    from carledger.sync.mqtt import ConnectError, close, connect, make_client

    try:
        with open(args.signed, "rb") as fh:
            signed = fh.read()
    except OSError as exc:
        return _fail(f"{args.signed}: {exc.strerror}")
    vehicle_key = None
    if args.wait:
        if not args.vehicle_key:
            return _fail("--wait needs --vehicle-key: anyone the broker lets publish on the status topic could "
                         "answer, so only an outcome the vehicle signed is believed")
        try:
            vehicle_key = load_verify_key(args.vehicle_key)
        except (KeyFileError, OSError, ValueError) as exc:
            return _fail(f"--vehicle-key: {exc}")
    cfg = mqtt_config_from_args(args)
    digest = hashlib.sha256(signed).hexdigest()
    outcome: dict = {}
    ignored: list[str] = []

    def on_message(_c, _u, msg):  # anyone allowed to publish the status can send anything: only a signed outcome counts
        try:
            status = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        policy = status.get("policy") if isinstance(status, dict) else None
        if not isinstance(policy, dict) or policy.get("digest") != digest:
            return
        try:
            outcome.update(open_outcome(policy.get("signed"), vehicle_key, args.vehicle, digest))
        except PolicyRejected as exc:
            ignored.append(str(exc))

    client = make_client(cfg, cfg.client_id or f"carledger-owner-{args.vehicle}-{int(time.time())}")
    client.on_message = on_message
    try:
        connect(client, cfg)
        if args.wait:
            client.subscribe(topics.status(args.vehicle), qos=1)
        info = client.publish(topics.policy(args.vehicle), signed, qos=1)
        start = time.monotonic()
        while not (info.is_published() and (not args.wait or outcome)):
            # the broker has 10 s to take the update; the car has --wait seconds (from now) to answer
            waited = time.monotonic() - start
            if waited >= (args.wait if info.is_published() else max(10.0, args.wait)):
                break
            client.loop(timeout=0.1)
    except ConnectError as exc:
        print(f"carledger remote: {exc}", file=sys.stderr)
        return 2
    finally:
        close(client)
    if not info.is_published():
        print("carledger remote: the broker did not acknowledge the update", file=sys.stderr)
        return 2
    if not args.wait:
        print(f"sent policy update {digest[:16]} to {args.vehicle}")
        return 0
    if not outcome:
        why = f"; ignored an outcome: {ignored[-1]}" if ignored else ""
        print(f"carledger remote: no outcome from {args.vehicle} within {args.wait:g} s (it applies the update when it is online)"
              f"{why}", file=sys.stderr)
        return 1
    outcome.pop("vehicle", None)
    print(json.dumps(outcome))
    return 0 if outcome.get("ok") else 1
