"""`carledger remote`: the car owner's side of remote policy updates (docs/sync.md).

enroll-owner puts the owner's public key in the agent's store; sign-policy signs a
policy file with the owner's key (COSE_Sign1 over the file's bytes);
send-policy publishes the signed update to the vehicle's policy topic and,
with --wait, prints the outcome the vehicle reports on its status topic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from carledger.cli._store import add_store_options, exit_status, open_output
from carledger.cli.collect import add_mqtt_arguments, mqtt_config_from_args

EPILOG = """\
examples:
  carledger keygen owner -o owner.key                    # prints the owner's public key
  carledger remote enroll-owner owner.pub --store /var/lib/carledger    # on the car, once (or -c agent.toml)
  carledger remote sign-policy policy.toml --key owner.key -o policy.cose
  carledger remote send-policy policy.cose --vehicle car-1 --host broker.example --ca ca.crt \\
      --cert owner.crt --key owner-tls.key --wait 60
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
                       epilog=exit_status("enrolled", "the key cannot be read or written"))
    p.add_argument("public_key", metavar="OWNER_PUB", help="64 hex digits, a .pub file, or the owner's .key file")
    add_store_options(p, json_output=False)
    p.set_defaults(func=enroll)

    p = sub.add_parser("sign-policy", help="sign a policy file with the owner's key", epilog=exit_status("signed", "refused"))
    p.add_argument("policy", metavar="POLICY", help="the policy TOML file")
    p.add_argument("--key", required=True, dest="owner_key", metavar="OWNER_KEY", help="the owner's private key file")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the signed update to write")
    p.set_defaults(func=sign)

    p = sub.add_parser("send-policy", help="publish a signed update to carledger/v1/VEHICLE/policy",
                       epilog=exit_status("sent (and, with --wait, applied)", "the vehicle refused it or did not answer in time"))
    p.add_argument("signed", metavar="SIGNED", help="the file sign-policy wrote")
    p.add_argument("--vehicle", required=True)
    p.add_argument("--wait", type=float, default=0, metavar="S", help="wait up to S seconds for the vehicle's outcome")
    add_mqtt_arguments(p)
    p.set_defaults(func=send)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def enroll(args: argparse.Namespace) -> int:
    from carledger.ledger import KeyFileError, kid
    from carledger.sync import enroll_owner, load_owner_key

    try:
        path = enroll_owner(args.store, args.public_key)
        key = load_owner_key(args.store)
    except (KeyFileError, OSError) as exc:
        print(f"carledger remote: {exc}", file=sys.stderr)
        return 1
    print(f"owner key {kid(key).hex()} enrolled in {path}")
    return 0


def sign(args: argparse.Namespace) -> int:
    from carledger.ledger import KeyFileError, load_signing_key
    from carledger.sync import sign_policy

    try:
        key = load_signing_key(args.owner_key)
        with open(args.policy, "rb") as fh:
            document = fh.read()
        signed = sign_policy(document, key)
        with open_output(args.output, "wb") as fh:
            fh.write(signed)
    except (KeyFileError, OSError) as exc:
        print(f"carledger remote: {exc}", file=sys.stderr)
        return 1
    print(f"signed {args.policy} ({len(document)} bytes) -> {args.output}")
    return 0


def send(args: argparse.Namespace) -> int:
    import hashlib

    from carledger.sync import topics
    from carledger.sync.mqtt import ConnectError, close, connect, make_client

    try:
        with open(args.signed, "rb") as fh:
            signed = fh.read()
    except OSError as exc:
        print(f"carledger remote: {exc}", file=sys.stderr)
        return 1
    cfg = mqtt_config_from_args(args)
    digest = hashlib.sha256(signed).hexdigest()
    outcome: dict = {}

    def on_message(_c, _u, msg):
        try:
            policy = json.loads(msg.payload).get("policy") or {}
        except ValueError:
            return
        if policy.get("digest") == digest:
            outcome.update(policy)

    client = make_client(cfg, cfg.client_id or f"carledger-owner-{args.vehicle}-{int(time.time())}")
    client.on_message = on_message
    try:
        connect(client, cfg)
        if args.wait:
            client.subscribe(topics.status(args.vehicle), qos=1)
        info = client.publish(topics.policy(args.vehicle), signed, qos=1)
        deadline = time.monotonic() + max(10.0, args.wait)
        while time.monotonic() < deadline and not (info.is_published() and (not args.wait or outcome)):
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
        print(f"carledger remote: no outcome from {args.vehicle} within {args.wait:g} s (it applies the update when it is online)",
              file=sys.stderr)
        return 1
    print(json.dumps(outcome))
    return 0 if outcome.get("ok") else 1
