"""The owner's actions on a store: apply a policy, grant or revoke consent, pause, resume, retention.

Whoever holds the store's writer lock runs them: the agent (for requests the
CLI queued while it runs, and remote policy updates) or the CLI itself while
the agent is stopped. Each action changes the owner state (STORE/owner/) and
records a signed event in the `audit` stream, the owner's own local chain:
the ledger itself says what the owner decided and when. Starting and stopping
the affected streams (and their declared events) is `StreamManager.refresh`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from carledger.ledger import Ledger
from carledger.owner.disclosure import consent_id, disclosure_events
from carledger.owner.state import GRANT, REVOKE, ConsentDecision, OwnerState, Pause, iso, seconds, utc
from carledger.policy.document import MAX_CONSENT, MAX_CONSENT_TEXT, KnownSignals, Policy, PolicyError, policy_from_text
from carledger.sync.quota import seq_ranges
from carledger.times import is_time

log = logging.getLogger(__name__)

AUDIT_STREAM = "audit"


class OwnerError(Exception):
    """An action the owner asked for that cannot be done; the message says what to do instead."""


@dataclass
class Outcome:
    """What an action did, for the CLI to print (`message`) and scripts to read (`to_json`)."""

    action: str
    message: str
    changed: bool = True
    detail: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "action": self.action, "changed": self.changed, "message": self.message, **(self.detail or {})}


class OwnerActions:
    """The owner's actions on one open ledger and its owner state."""

    def __init__(
        self,
        ledger: Ledger,
        state: OwnerState,
        *,
        known_signals: KnownSignals | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.ledger = ledger
        self.state = state
        self.known_signals = known_signals
        self.clock = clock
        self.audit = ledger.writer(AUDIT_STREAM)
        self.sync_enabled = False  # the agent syncs: outbound streams are deleted only once acked

    def evict(self, quota_bytes: int, *, now: float | None = None) -> Outcome:
        """Disk quota: drop the oldest acked records first, then the oldest unacked, declared first.

        Crash captures and the audit trail are never evicted (carledger.sync.quota).
        """
        from carledger.sync.quota import plan_eviction

        now = self.clock() if now is None else now
        plan = plan_eviction(self.ledger.store, quota_bytes)
        if not plan:
            return Outcome("evict", "under the disk quota", changed=False)
        for _, detail in plan.events:
            self._audit(now, "eviction", detail)
        self.ledger.seal([self.audit])
        plan.apply(self.ledger.store)
        return Outcome("evict", f"disk quota: records of {len(plan.acked) + len(plan.unacked)} blocks deleted "
                       f"({len(plan.unacked)} not yet acked by their recipient)",
                       detail={"streams": {s: d for s, d in plan.events}})

    def execute(self, request: dict[str, Any]) -> Outcome:
        """Run a request as the CLI queues it: {"action": NAME, ...arguments}."""
        action = request.get("action")
        now = float(request.get("at") or self.clock())
        _require_time("the request's time", now)
        if action == "apply-policy":
            signed = request.get("signed")
            return self.apply_policy(str(request.get("text") or ""), origin=str(request.get("origin", "cli")),
                                     name=str(request.get("name", "policy")), now=now,
                                     signed=None if signed is None else bytes.fromhex(str(signed)))
        if action == "grant":
            return self.grant(str(request["stream"]), float(request["until"]), now=now)
        if action == "revoke":
            return self.revoke(str(request["stream"]), now=now)
        if action == "pause":
            until = request.get("until")
            return self.pause(None if until is None else float(until), now=now)
        if action == "resume":
            return self.resume(now=now)
        if action == "retention":
            return self.retention(now=now)
        if action == "allow-class":
            return self.allow_class(str(request["class"]), standing=bool(request.get("standing")), now=now)
        if action == "withdraw-class":
            return self.withdraw_class(str(request["class"]), now=now)
        raise OwnerError(f"unknown action {action!r}")

    # -- the policy ---------------------------------------------------------------------------

    def apply_policy(self, text: str, *, origin: str = "cli", name: str = "policy", now: float | None = None,
                     signed: bytes | None = None) -> Outcome:
        """Put a new policy version in force (atomically); its version must be higher than the one in force.

        `signed`: the owner's signed update (its payload is the policy, `text` is
        then ignored). With an owner key enrolled, only a signed one may change
        the policy in force (carledger.owner.signed).
        """
        from carledger.owner.signed import open_signed, require_signature

        now = self.clock() if now is None else now
        signer = None
        if signed is not None:
            text, signer = open_signed(self.state.store, signed, name)
        try:
            policy = policy_from_text(name, text, self.known_signals, now=utc(now))
        except PolicyError as exc:
            raise OwnerError(f"the policy is not valid; nothing changed:\n{exc}") from None
        current = self.state.policy
        if current.version and policy.digest() == current.digest():
            return Outcome("apply-policy", f"version {policy.version} is already in force", changed=False,
                           detail={"version": policy.version, "digest": policy.digest().hex()})
        if policy.version <= current.version:
            raise OwnerError(
                f"{name}: version {policy.version} is not higher than the version in force ({current.version}); "
                f"set version = {current.version + 1} or higher"
            )
        _check_recipients(current, policy, name)
        if signer is None:
            require_signature(self.state.store, name)
        data = text.encode("utf-8")
        self.state.install_policy(policy, data)
        digest = policy.digest()
        self.ledger.policy_digest = digest
        self._audit(now, "policy-applied", {
            "version": policy.version, "digest": digest.hex(), "previous": current.version or None,
            "origin": origin, "file": name, "streams": [s.name for s in policy.streams],
            "document": policy.canonical(),
            # The owner's signed update itself: anyone can check later that the owner's key signed this version.
            "signed_by": signer, "update": None if signed is None else signed.hex(),
        })
        self.state.save()
        return Outcome("apply-policy", f"policy version {policy.version} is in force ({digest.hex()[:16]})",
                       detail={"version": policy.version, "digest": digest.hex()})

    # -- consent ------------------------------------------------------------------------------

    def grant(self, stream_name: str, until: float, *, now: float | None = None) -> Outcome:
        now = self.clock() if now is None else now
        _require_time("--until", until)
        stream = self._outbound(stream_name)
        if until <= now:
            raise OwnerError(f"--until {iso(until)} is not in the future")
        if until - now > MAX_CONSENT.total_seconds():
            raise OwnerError(f"consent can last at most {MAX_CONSENT_TEXT}: give --until before {iso(now + MAX_CONSENT.total_seconds())}")
        self.state.consents[stream.name] = ConsentDecision(GRANT, now, until)
        self._audit(now, "consent-granted", {"stream": stream.name, "recipient": stream.recipient,
                                              "purpose": stream.purpose, "granted": iso(now), "expires": iso(until),
                                              "consent_id": consent_id(stream.name, stream.recipient, stream.purpose,
                                                                       iso(now), iso(until))})
        self.state.save()
        return Outcome("grant", f"stream {stream.name}: consent granted until {iso(until)}",
                       detail={"stream": stream.name, "expires": iso(until)})

    def revoke(self, stream_name: str, *, now: float | None = None) -> Outcome:
        now = self.clock() if now is None else now
        stream = self._outbound(stream_name)
        consent, revoked = self.state.consent(stream)
        if consent is None or revoked or seconds(consent.expires) <= now:
            return Outcome("revoke", f"stream {stream.name}: no consent in force; nothing to revoke", changed=False,
                           detail={"stream": stream.name})
        self.state.consents[stream.name] = ConsentDecision(REVOKE, now)
        self._audit(now, "consent-revoked", {"stream": stream.name, "recipient": stream.recipient,
                                              "purpose": stream.purpose, "revoked": iso(now)})
        self.state.save()
        return Outcome("revoke", f"stream {stream.name}: consent revoked; it stops before its next block",
                       detail={"stream": stream.name, "revoked": iso(now)})

    def _outbound(self, name: str):
        try:
            stream = self.state.policy.stream(name)
        except KeyError:
            known = ", ".join(s.name for s in self.state.policy.streams if not s.local) or "none"
            raise OwnerError(f"no stream {name!r} in the policy in force (streams with a recipient: {known})") from None
        if stream.local:
            raise OwnerError(f"stream {name!r} is local (it never leaves the car): it needs no consent")
        return stream

    # -- classes off at each ignition ([ignition] each_drive) ---------------------------------

    def ignition(self, t: float, cause: str, detail: dict[str, Any] | None = None) -> Outcome:
        """A new ignition cycle began at t: allowances for the last drive end, the marked classes go off."""
        cycles = self.state.ignition
        before = self.state.classes_off()
        cycles.cycle += 1
        cycles.since = cycles.last_seen = t
        cycles.this_drive = {c: n for c, n in cycles.this_drive.items() if n >= cycles.cycle}
        off = sorted(self.state.classes_off())
        self._audit(t, "ignition", {"cycle": cycles.cycle, "cause": cause, **(detail or {}), "classes_off": off,
                                    "standing": sorted(cycles.standing) or None})
        self.state.save()
        text = f"ignition cycle {cycles.cycle} ({cause})" + (f": {', '.join(off)} off until allowed" if off else "")
        return Outcome("ignition", text, changed=True,
                       detail={"cycle": cycles.cycle, "classes_off": off, "switched": sorted(set(off) - before)})

    def remember_last_frame(self, t: float | None) -> None:
        """The agent stops: keep its last frame's time, so its next start tells a restart from a new drive."""
        if t is not None and self.state.policy.ignition is not None:
            self.state.ignition.last_seen = max(t, self.state.ignition.last_seen or t)
            self.state.save()

    def allow_class(self, cls: str, *, standing: bool = False, now: float | None = None) -> Outcome:
        """The owner switches a class marked in `[ignition]` on: for this ignition cycle, or for every one."""
        now = self.clock() if now is None else now
        self._marked(cls)
        cycles = self.state.ignition
        if standing:
            if cls in cycles.standing:
                return Outcome("allow-class", f"{cls}: already allowed for every drive", changed=False, detail={"class": cls})
            cycles.standing[cls] = now
        else:
            if cycles.allowance(cls) is not None:
                return Outcome("allow-class", f"{cls}: already allowed ({cycles.allowance(cls)})", changed=False,
                               detail={"class": cls})
            if cycles.cycle == 0:
                raise OwnerError(f"no ignition seen yet: allow {cls} for this drive once the car is on "
                                 "(or give --standing for every drive)")
            cycles.this_drive[cls] = cycles.cycle
        scope = "standing" if standing else "this-drive"
        self._audit(now, "class-allowed", {"class": cls, "scope": scope, "cycle": None if standing else cycles.cycle})
        self.state.save()
        text = "every drive, until withdrawn" if standing else f"this drive (ignition cycle {cycles.cycle})"
        return Outcome("allow-class", f"{cls}: allowed for {text}", detail={"class": cls, "scope": scope, "cycle": cycles.cycle})

    def withdraw_class(self, cls: str, *, now: float | None = None) -> Outcome:
        """End every allowance of a marked class at once: it is off again until allowed."""
        now = self.clock() if now is None else now
        self._marked(cls)
        cycles = self.state.ignition
        if cycles.allowance(cls) is None:
            cycles.this_drive.pop(cls, None)
            return Outcome("withdraw-class", f"{cls}: not allowed; nothing to withdraw", changed=False, detail={"class": cls})
        scope = cycles.allowance(cls)
        cycles.standing.pop(cls, None)
        cycles.this_drive.pop(cls, None)
        self._audit(now, "class-withdrawn", {"class": cls, "scope": scope, "cycle": cycles.cycle})
        self.state.save()
        return Outcome("withdraw-class", f"{cls}: allowance withdrawn; off until allowed again", detail={"class": cls})

    def _marked(self, cls: str) -> None:
        ignition = self.state.policy.ignition
        marked = ignition.each_drive if ignition is not None else ()
        if cls not in marked:
            shown = ", ".join(marked) or "none ([ignition] each_drive is not set)"
            raise OwnerError(f"{cls!r} is not switched off at each ignition by the policy in force (classes marked: {shown})")

    # -- pause --------------------------------------------------------------------------------

    def pause(self, until: float | None = None, *, now: float | None = None) -> Outcome:
        now = self.clock() if now is None else now
        if until is not None:
            _require_time("the end of the pause", until)
            if until <= now:
                raise OwnerError("the pause must end in the future")
        self.state.pause = Pause(now, until)
        self._audit(now, "pause", {"since": iso(now), "until": iso(until)})
        self.state.save()
        text = f"until {iso(until)}" if until else "until `carledger resume`"
        return Outcome("pause", f"all collection paused {text}", detail={"until": iso(until)})

    def resume(self, *, now: float | None = None) -> Outcome:
        now = self.clock() if now is None else now
        pause = self.state.pause
        if pause is None or not pause.covers(now):
            self.state.pause = None
            self.state.save()
            return Outcome("resume", "collection was not paused", changed=False)
        self.state.pause = None
        self._audit(now, "resume", {"paused_since": iso(pause.since)})
        self.state.save()
        return Outcome("resume", "collection resumed")

    # -- retention ----------------------------------------------------------------------------

    def retention(self, *, now: float | None = None) -> Outcome:
        """Drop the records of blocks past their stream's retention, declared in the audit stream.

        The blocks' signed headers stay, so every chain still links and verifies;
        `carledger verify` checks that every dropped block is declared here.
        """
        now = self.clock() if now is None else now
        store = self.ledger.store
        dropped: dict[str, dict[str, Any]] = {}
        for stream in self.state.policy.streams:
            if stream.retention is None:
                continue
            before_us = round((now - stream.retention) * 1e6)
            # A stream for a recipient keeps what has not reached it (the collector's ack) past retention.
            rows = store.expired(stream.name, before_us, acked_only=self.sync_enabled and not stream.local)
            if not rows:
                continue
            records = sum(r[2] for r in rows)
            detail = {"stream": stream.name, "seqs": seq_ranges(r[1] for r in rows), "blocks": len(rows),
                      "records": records, "before": iso(before_us / 1e6), "retention_s": stream.retention}
            # Declared first: the event is durable before any record is gone.
            self._audit(now, "retention", detail)
            self.ledger.seal([self.audit])
            store.drop_records([r[0] for r in rows])
            dropped[stream.name] = detail
        if not dropped:
            return Outcome("retention", "nothing past its retention", changed=False)
        text = ", ".join(f"{n}: {d['records']} records in {d['blocks']} blocks" for n, d in dropped.items())
        return Outcome("retention", f"deleted past retention: {text}", detail={"streams": dropped})

    # -- the audit stream ---------------------------------------------------------------------

    def disclose(self, stream: str, recipient: str | None, first: int, last: int, records: int, t: float) -> None:
        """The recipient acked blocks first..last of a stream: what they held, one event per policy version.

        Each event names the signals, the policy version and the consent id
        (carledger.owner.disclosure), so the audit alone says what was disclosed.
        """
        for detail in disclosure_events(self.ledger.store, self.state, self.known_signals, stream, recipient,
                                        first, last, records):
            self._audit(t, "disclosure", detail)

    def _audit(self, t: float, kind: str, detail: dict[str, Any]) -> None:
        self.audit.add_event(t, kind, {k: v for k, v in detail.items() if v is not None})


def _check_recipients(current: Policy, new: Policy, name: str) -> None:
    """A chain is one recipient's: a stream may not change who receives it, or how it names the car."""
    for stream in new.streams:
        try:
            old = current.stream(stream.name)
        except KeyError:
            continue
        if (old.recipient, old.identity, old.local) != (stream.recipient, stream.identity, stream.local):
            raise OwnerError(
                f"{name}: stream {stream.name!r} changes its recipient or identity; a chain belongs to one "
                "recipient, so give the new recipient a stream of its own (a new name)"
            )


def _require_time(what: str, t: float) -> None:
    """Refuse a time no date can show (nan, inf, past the year 9999) before the owner's state takes it.

    Such a value passes every comparison written to refuse it, and only fails
    when the audit formats it: after the state in memory had changed.
    """
    if not is_time(t):
        raise OwnerError(f"{what}: {t!r} is not a time from 1970 to the year 9999")


__all__ = ["AUDIT_STREAM", "OwnerActions", "OwnerError", "Outcome"]
