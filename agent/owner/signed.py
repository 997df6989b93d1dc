"""Who may change the policy: with an owner key enrolled, only what that key signed, local or remote.

A policy reaches the car three ways: `carledger policy apply` (a shell in
the car), a remote update over MQTT, and the file the agent's configuration
names. Once the owner has enrolled a key (STORE/keys/owner.pub, `carledger
remote enroll-owner`), every one of them must carry the owner's signature: a
COSE_Sign1 policy update (carledger.sync.policy_update, what `carledger remote
sign-policy` writes), verified here, where the change is made (the agent
runs the same code for the CLI's queued requests), so a request written
straight into STORE/owner/requests/ is held to the same rule. Without an
enrolled key a plain TOML file is applied, as before. Why: docs/owner-state.md,
"Who may change the policy".
"""

from __future__ import annotations

from pathlib import Path

from carledger.ledger.errors import KeyFileError
from carledger.owner.actions import OwnerError

COSE_SIGN1_TAG = 0xD2  # CBOR tag 18, the first byte of every tagged COSE_Sign1 message


class UnsignedPolicy(OwnerError):
    """An owner key is enrolled and the policy is not signed by it; the message says how to sign it."""


def is_signed_update(data: bytes) -> bool:
    """Does `data` look like a signed policy update rather than a TOML file? (TOML never starts with byte 0xD2.)"""
    return data[:1] == bytes([COSE_SIGN1_TAG])


def open_signed(store: str | Path, signed: bytes, name: str) -> tuple[str, str]:
    """(the policy text, the signer's key id) of a signed update; UnsignedPolicy when it is not the enrolled owner's."""
    from carledger.ledger import kid
    from carledger.sync.policy_update import PolicyRejected, load_owner_key, open_policy

    try:
        owner = load_owner_key(store)
    except KeyFileError as exc:
        raise UnsignedPolicy(f"{name}: the enrolled owner key cannot be read: {exc}") from None
    if owner is None:
        raise UnsignedPolicy(f"{name}: a signed policy update, but no owner key is enrolled to check it (carledger "
                             "remote enroll-owner owner.pub); or apply the policy's TOML file itself")
    try:
        document = open_policy(signed, owner)
    except PolicyRejected as exc:
        raise UnsignedPolicy(f"{name}: refused: {exc}") from None
    try:
        return document.decode("utf-8"), kid(owner).hex()
    except UnicodeDecodeError:
        raise UnsignedPolicy(f"{name}: the signed policy is not UTF-8 text") from None


def require_signature(store: str | Path, name: str) -> None:
    """UnsignedPolicy when an owner key is enrolled: an unsigned policy may not change what is in force."""
    from carledger.sync.policy_update import load_owner_key

    try:
        enrolled = load_owner_key(store) is not None
    except KeyFileError:
        enrolled = True  # a key file that is there but unreadable still means an owner enrolled one
    if enrolled:
        raise UnsignedPolicy(
            f"{name}: an owner key is enrolled, so a policy needs the owner's signature: carledger policy apply "
            f"{name} --key owner.key (or apply the file `carledger remote sign-policy` wrote)"
        )


__all__ = ["UnsignedPolicy", "is_signed_update", "open_signed", "require_signature"]
