"""What may leave the car: the one check every path that publishes blocks goes through (docs/sync.md, "What leaves").

A block of a stream is published only when the policy in force (the owner
state in the store, carledger.owner) gives that stream a recipient and a
consent, with the owner's CLI decisions (revocations) folded in; crash
captures only when the policy's `[edr]` does. Local streams, `audit` and
`health` never leave. The Syncer asks this gate for every stream it sends,
whoever asked it to send them (the agent, `carledger sync`, anything added
later): a caller can narrow what leaves, never widen it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from carledger.policy import Policy

__all__ = ["OutboundStream", "OutboundGate", "outbound_streams", "refusal"]

CRASH_STREAM = "crash"  # carledger.edr.CRASH_STREAM (not imported: the edr package pulls in the ledger's readers)


@dataclass(frozen=True)
class OutboundStream:
    """A stream the policy sends: to whom, and until when (epoch seconds; blocks ending later never leave)."""

    recipient: str
    until: float | None = None


def outbound_streams(policy: Policy) -> dict[str, OutboundStream]:
    """The streams of `policy` (consent decisions folded in) that may leave: each with a recipient and a consent."""
    out = {}
    for stream in policy.streams:
        if stream.local or not stream.recipient or stream.consent is None:
            continue
        out[stream.name] = OutboundStream(stream.recipient, until=stream.consent.expires.timestamp())
    edr = policy.edr
    if edr is not None and edr.recipient is not None and edr.consent is not None:  # crash captures leave only so
        out[CRASH_STREAM] = OutboundStream(edr.recipient, until=edr.consent.expires.timestamp())
    return out


def refusal(policy: Policy, name: str) -> str | None:
    """Why stream `name` may not leave under `policy` (consent decisions folded in); None when it may."""
    if name == CRASH_STREAM:
        edr = policy.edr
        if edr is None or edr.recipient is None:
            return "the policy's [edr] names no recipient: crash captures stay in the car"
        return None if edr.consent is not None else "the policy's [edr] gives no consent"
    for stream in policy.streams:
        if stream.name == name:
            if stream.local:
                return "the policy marks it local = true: it never leaves the car"
            if not stream.recipient:
                return "the policy gives it no recipient"
            return None if stream.consent is not None else "it has no consent (none given, or revoked)"
    if name in ("audit", "health"):
        return "it is the car's own record: it never leaves the car"
    return f"the policy in force (version {policy.version}) has no such stream"


class OutboundGate:
    """The policy in force in a store, as far as sending goes; read again whenever the owner's files change."""

    def __init__(self, store_dir: str | os.PathLike):
        self.store_dir = Path(store_dir)
        self._stamp: tuple | None = None
        self._policy: Policy | None = None

    def _files(self) -> tuple:
        from carledger.owner.state import OWNER_DIR, POLICY_FILE, STATE_FILE

        return tuple(_stat(self.store_dir / OWNER_DIR / name) for name in (POLICY_FILE, STATE_FILE))

    def changed(self) -> bool:
        """Did the owner's files change since the policy was last read? (Two stat calls: cheap enough per send turn.)"""
        return self._files() != self._stamp

    def policy(self) -> Policy:
        """The effective policy (consent decisions folded in); an owner state that cannot be read sends nothing."""
        from carledger.owner.state import OwnerState

        stamp = self._files()
        if stamp != self._stamp or self._policy is None:
            self._policy = OwnerState.load(self.store_dir).effective_policy()
            self._stamp = stamp
        return self._policy

    def allowed(self) -> dict[str, OutboundStream]:
        return outbound_streams(self.policy())

    def recipient(self, name: str) -> str | None:
        """Whom the policy in force names for stream `name` (even with its consent revoked): whose key signs its acks."""
        policy = self.policy()
        if name == CRASH_STREAM:
            return None if policy.edr is None else policy.edr.recipient
        for stream in policy.streams:
            if stream.name == name:
                return None if stream.local else stream.recipient
        return None

    def narrow(self, wanted: Mapping[str, OutboundStream]) -> tuple[dict[str, OutboundStream], dict[str, str]]:
        """(what of `wanted` may leave, with the policy's recipient and the earlier end; {name: why not} for the rest)."""
        policy = self.policy()
        allowed = outbound_streams(policy)
        out, refused = {}, {}
        for name, spec in wanted.items():
            mine = allowed.get(name)
            if mine is None:
                refused[name] = refusal(policy, name) or "not allowed"
                continue
            if spec.recipient != mine.recipient:
                refused[name] = f"the policy sends it to {mine.recipient!r}, not to {spec.recipient!r}"
                continue
            ends = [t for t in (spec.until, mine.until) if t is not None]
            out[name] = OutboundStream(mine.recipient, min(ends) if ends else None)
        return out, refused


def _stat(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
