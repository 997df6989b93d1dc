"""Owner-signed policy documents arriving over MQTT (docs/sync.md, "Remote policy updates").

A policy update is a COSE_Sign1 message (the same profile as blocks: EdDSA,
deterministic CBOR) whose payload is the policy TOML file's bytes, signed with
the owner's Ed25519 key; the protected header is {1: -8, 3: "application/toml",
4: kid}. The agent accepts it only when it verifies with the owner key
enrolled at STORE/keys/owner.pub, then hands the TOML to the policy code,
which applies it only if its version is higher. The outcome goes out on the
status topic: `digest` is the update's SHA-256 (what the sender waits for),
`policy_digest` the digest of the policy put in force. The vehicle key signs
each outcome (`signed`, see `sign_outcome`): the status topic is open to
anyone the broker lets publish there, so the sender believes only that.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

from carledger.ledger import cose
from carledger.ledger.errors import KeyFileError, MalformedBlock
from carledger.ledger.files import private_dir, write_private
from carledger.ledger.keys import KEY_DIR, Signer, SigningKey, VerifyKey, kid, load_verify_key

__all__ = [
    "OWNER_PUB",
    "CONTENT_TYPE",
    "PolicyRejected",
    "sign_policy",
    "open_policy",
    "sign_outcome",
    "open_outcome",
    "enroll_owner",
    "load_owner_key",
    "submit_policy",
    "PolicyHandler",
]

log = logging.getLogger(__name__)

OWNER_PUB = "owner.pub"
CONTENT_TYPE = "application/toml"
OUTCOME_TYPE = "application/vnd.carledger.policy-outcome+json"  # apart from blocks and updates by its content type
HDR_CONTENT_TYPE = 3
MAX_POLICY = 1 << 20


_SEEN = 64  # updates remembered as handled (the retained one, and the latest few besides)


class PolicyRejected(ValueError):
    """A policy document that is not the enrolled owner's (or not one at all); the message says why."""


def sign_policy(document: bytes, owner_key: SigningKey) -> bytes:
    """The COSE_Sign1 policy update for `document` (the policy file's bytes)."""
    protected = {cose.HDR_ALG: cose.ALG_EDDSA, HDR_CONTENT_TYPE: CONTENT_TYPE, cose.HDR_KID: kid(owner_key.verify_key)}
    return cose.sign1(bytes(document), owner_key, protected, {})


def open_policy(message: bytes, owner_key: VerifyKey) -> bytes:
    """The policy file's bytes, if `message` is a policy update signed by `owner_key`; else PolicyRejected."""
    if len(message) > MAX_POLICY:
        raise PolicyRejected(f"{len(message)} bytes, more than {MAX_POLICY}")
    try:
        msg = cose.decode_sign1(message)
    except MalformedBlock as exc:
        raise PolicyRejected(f"not a COSE_Sign1 policy update: {exc}") from None
    if msg.protected.get(HDR_CONTENT_TYPE) != CONTENT_TYPE:
        raise PolicyRejected(f"content type {msg.protected.get(HDR_CONTENT_TYPE)!r}, expected {CONTENT_TYPE!r}")
    if msg.protected.get(cose.HDR_KID) != kid(owner_key):
        raise PolicyRejected("signed by another key than the enrolled owner's")
    if not cose.verify_sign1(msg, owner_key):
        raise PolicyRejected("the owner's signature does not verify")
    return msg.payload


def sign_outcome(vehicle: str, outcome: dict, signer: Signer) -> str:
    """An update's outcome as the vehicle signs it: base64 of a COSE_Sign1 of {"vehicle", **outcome} as JSON.

    The vehicle id and the update's digest inside the payload bind it to one car and one update, so a
    signed outcome cannot be replayed as another car's or another update's.
    """
    payload = json.dumps({"vehicle": vehicle, **outcome}, sort_keys=True, separators=(",", ":")).encode()
    protected = {cose.HDR_ALG: cose.ALG_EDDSA, HDR_CONTENT_TYPE: OUTCOME_TYPE, cose.HDR_KID: signer.key_id}
    return base64.b64encode(cose.sign1(payload, signer, protected, {})).decode()


def open_outcome(signed: object, vehicle_key: VerifyKey, vehicle: str, digest: str) -> dict:
    """The outcome `vehicle` signed with `vehicle_key` for the update `digest`; PolicyRejected otherwise."""
    if not isinstance(signed, str) or len(signed) > 2 * MAX_POLICY:
        raise PolicyRejected("no signed outcome")
    try:
        msg = cose.decode_sign1(base64.b64decode(signed, validate=True))
    except (ValueError, MalformedBlock) as exc:
        raise PolicyRejected(f"not a signed outcome: {exc}") from None
    if msg.protected.get(HDR_CONTENT_TYPE) != OUTCOME_TYPE:
        raise PolicyRejected(f"content type {msg.protected.get(HDR_CONTENT_TYPE)!r}, expected {OUTCOME_TYPE!r}")
    if msg.protected.get(cose.HDR_KID) != kid(vehicle_key) or not cose.verify_sign1(msg, vehicle_key):
        raise PolicyRejected("not signed by the vehicle key")
    try:
        outcome = json.loads(msg.payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PolicyRejected(f"signed outcome is not JSON: {exc}") from None
    if not isinstance(outcome, dict) or outcome.get("vehicle") != vehicle or outcome.get("digest") != digest:
        raise PolicyRejected("signed for another vehicle or another update")
    return outcome


def enroll_owner(store_dir: str | os.PathLike, public_key: str | bytes | VerifyKey) -> Path:
    """Write the owner's public key to STORE/keys/owner.pub (hex): the only key policy updates are taken from."""
    key = load_verify_key(public_key)
    path = private_dir(Path(store_dir) / KEY_DIR) / OWNER_PUB
    write_private(path, (bytes(key).hex() + "\n").encode("ascii"))
    return path


def load_owner_key(store_dir: str | os.PathLike) -> VerifyKey | None:
    """The enrolled owner key, None when no owner is enrolled (remote updates are then refused)."""
    path = Path(store_dir) / KEY_DIR / OWNER_PUB
    if not path.exists():
        return None
    return load_verify_key(path)


def submit_policy(store_dir: str | os.PathLike, document: bytes, origin: str = "mqtt", signed: bytes | None = None) -> dict:
    """Hand a verified policy to the owner's actions, which check and apply it (the version must be higher).

    The one place the sync calls into the policy code: an `apply-policy`
    request through carledger.owner (the running agent takes it from its
    request spool within a fraction of a second; with no agent running, it
    is applied here). `signed`, the owner's update as it arrived, goes
    with it: the owner's actions check it again and keep it in the audit
    (carledger.owner.signed).
    """
    from carledger.owner import OwnerError
    from carledger.owner.client import submit as owner_submit

    try:
        text = document.decode("utf-8")
    except UnicodeDecodeError:
        return {"ok": False, "error": "the policy is not UTF-8 text"}
    try:
        request = {"action": "apply-policy", "text": text, "origin": origin, "name": "remote"}
        if signed is not None:
            request["signed"] = signed.hex()
        return dict(owner_submit(store_dir, request))
    except OwnerError as exc:
        return {"ok": False, "error": str(exc)}


class PolicyHandler:
    """Verifies each policy update, submits the good ones once, and remembers the last outcome for the status."""

    def __init__(self, store_dir: Path, submit: Callable[[bytes], dict] | None = None, *,
                 vehicle: str | None = None, signer: Signer | None = None):
        self.store_dir = store_dir
        self.submit = submit
        self.vehicle, self.signer = vehicle, signer  # signs each outcome when both are given
        self.last: dict | None = None
        # digests of the updates handled: a retained update comes again at each reconnect. Bounded: anyone who
        # may publish on the topic could otherwise grow it by one entry per junk message, for ever.
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    def receive(self, message: bytes) -> dict | None:
        """The outcome published on the status topic; None for a document already handled."""
        digest = hashlib.sha256(message).hexdigest()
        if digest in self._seen:
            self._seen.move_to_end(digest)
            return None
        self._seen[digest] = None
        if len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        outcome: dict = {"t": round(time.time(), 3), "digest": digest}
        try:
            owner = load_owner_key(self.store_dir)
            if owner is None:
                raise PolicyRejected(f"no owner key enrolled ({KEY_DIR}/{OWNER_PUB})")
            document = open_policy(message, owner)
        except (PolicyRejected, KeyFileError) as exc:
            outcome.update(ok=False, error=str(exc))
            log.warning("sync: policy update rejected: %s", exc)
        else:
            try:
                if self.submit is None:
                    result = submit_policy(self.store_dir, document, origin="mqtt", signed=message)
                else:
                    result = self.submit(document)
            except Exception as exc:  # the policy code's failure is an outcome, never a dead sync thread
                log.exception("sync: applying the policy update failed")
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            # The policy code names the applied policy's digest `digest` too; the outcome's
            # `digest` is the update's (what `send-policy --wait` matches), so that one is renamed.
            applied = {("policy_digest" if k == "digest" else k): v for k, v in result.items() if k != "t"}
            outcome = {"ok": False, **applied, **outcome}
            log.info("sync: policy update %s: %s", digest[:16], result)
        if self.signer is not None and self.vehicle is not None:
            try:
                outcome["signed"] = sign_outcome(self.vehicle, outcome, self.signer)
            except Exception as exc:  # a key backend that fails: the outcome goes out unsigned, and is not believed
                log.warning("sync: cannot sign the policy outcome: %s", exc)
        self.last = outcome
        return outcome
