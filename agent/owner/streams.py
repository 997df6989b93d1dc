"""Which of the policy's streams collect right now, and the declared event for every change.

`StreamManager.refresh(t)` compares what the owner's state allows at t with
the streams running and starts or stops streams to match. Each change goes
into the stream's own chain as a signed event (docs/owner-state.md), so a
recipient's chain says why it ends, pauses or resumes; a stopping stream's
tail is sealed at once, so nothing collected after the end of its consent is
ever in a block. The manager remembers each stream's status in the owner
state, so an agent that was stopped while a consent expired declares the end
on its next start, dated when it happened.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable

from carledger.ledger import Ledger
from carledger.owner.actions import AUDIT_STREAM
from carledger.owner.disclosure import consent_fields
from carledger.owner.state import OwnerState, StreamStatus, iso, seconds
from carledger.policy import Policy, Stream
from carledger.policy.engine import EngineSettings, StreamRuntime, stream_identity

log = logging.getLogger(__name__)

#: The event that says why a stream starts again, by the reason it had stopped.
_RESTART_KIND = {
    "pause": "resume",
    "stream-paused": "stream-resumed",
    "consent-expired": "consent-granted",
    "consent-revoked": "consent-granted",
    "consent-pending": "consent-granted",
    "no-consent": "consent-granted",
    "stream-removed": "stream-started",
}


class _Sink:
    """Where a probe runtime's taps would write: nowhere (it only answers "would you take this?")."""

    @staticmethod
    def add_sample(*args: Any) -> None:
        return None


def name_the_car(ledger: Ledger, writer: Any, stream: Stream, secret: bytes | None) -> None:
    """The stream's blocks name the car as its recipient knows it, and are signed with that recipient's own key.

    A pseudonymous stream gets the key `Ledger.certify` derives for its
    recipient, so that two recipients cannot link their data through a
    common key; the VIN's and local streams keep the vehicle key.
    """
    writer.vid = stream_identity(stream, ledger.vehicle_id, secret)
    if secret is not None and writer.vid != ledger.vehicle_id and stream.recipient:
        writer.signer = ledger.certify(secret, stream.recipient, writer.vid)
    else:
        writer.signer = None


class StreamManager:
    """The running streams of the policy in force, started and stopped as the owner's state says."""

    def __init__(
        self, ledger: Ledger, state: OwnerState, settings: EngineSettings,
        *, seal: Callable[[list], Any] | None = None,
    ):
        self.ledger = ledger
        self.settings = settings
        if settings.pseudonym_secret is not None:
            ledger.load_certified(settings.pseudonym_secret)
        self._seal = seal or ledger.seal
        self.runtimes: dict[str, StreamRuntime] = {}
        self.generation = 0  # bumps whenever the set of consumers changes: the pipeline rebuilds handlers
        self._probes: list[StreamRuntime] = []
        self.state = state
        self.reload(state)

    # -- the policy ---------------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self.state.policy

    def reload(self, state: OwnerState) -> None:
        """Take a new owner state (a policy applied, a consent changed); `refresh` puts it in force."""
        self.state = state
        digest = state.policy.digest()
        self.ledger.policy_digest = digest
        whole = state.effective_policy()
        # Probes see every class, so what a later allowance switches on is decoded already;
        # the running streams see only the classes on in this ignition cycle.
        self._probes = [StreamRuntime(s, whole, _Sink(), self.settings) for s in whole.streams]  # type: ignore[arg-type]
        self._effective = without_classes(whole, state.classes_off())

    def wants(self, name: str, source: str) -> bool:
        """Could any stream of the policy take this signal (now or once its consent starts)?"""
        return any(p.consumers(name, source) for p in self._probes)

    def takes(self, name: str, source: str) -> bool:
        """Does a running stream take this signal? (Asked of the probes: no tap is made for it.)"""
        return any(p.stream.name in self.runtimes and p.consumers(name, source) for p in self._probes)

    def consumers(self, name: str, source: str, scope: Any = None, *, ieee_float: bool = False) -> list:
        """Every running stream's taps and feeds for a signal; `scope` keeps buses apart (StreamRuntime.consumers)."""
        return [c for rt in self.runtimes.values() for c in rt.consumers(name, source, scope, ieee_float=ieee_float)]

    def next_change(self, t: float) -> float | None:
        return self.state.next_change(t)

    # -- starting and stopping ----------------------------------------------------------------

    def refresh(self, t: float, *, stepped_back: bool = False) -> bool:
        """Start and stop streams to match the owner's state at t; True when the running set changed.

        A stream whose consent expired later than t (a clock ahead of this one saw the
        expiry: before a step back, or in an earlier run) starts again as `consent-restored`:
        its end is the consent's own signed time, still to come.

        `stepped_back`: the frames' clock went back to t. A stream whose consent or pause does
        not cover t stops, keeping what it recorded before the step (at times the owner's state
        allowed it); of those t would start, only a restored one starts. One the owner
        paused or revoked stays stopped, as decided; the next change of the owner's state
        decides the rest.
        """
        state = self.state
        digest = state.policy.digest()
        wanted: dict[str, Stream] = {}
        reasons: dict[str, str] = {}
        for stream in self._effective.streams:
            why = state.why_inactive(stream, t)
            if why is None:
                wanted[stream.name] = stream
            else:
                reasons[stream.name] = why
        changed = False
        for name, runtime in list(self.runtimes.items()):
            new = wanted.get(name)
            if new is None:
                self._stop(runtime, reasons.get(name, "stream-removed"), t, keep_tail=stepped_back)
                changed = True
            elif _definition(new) != _definition(runtime.stream):
                self._stop(runtime, None, t)  # redefined: the same chain goes on under the new rules
                switched = _switched_classes(runtime.stream, new)
                if switched is not None:
                    switched.update(self._cycle_detail(switched["on"]))
                self._start(new, t, "policy" if switched is None else "classes", switched)
                changed = True
            else:
                runtime.stream = new  # a renewed consent: same runtime
                self._declare_policy(runtime, digest, t)
        for name, stream in wanted.items():
            if name in self.runtimes:
                continue
            status = state.status.get(name)
            if status is not None and _ended_ahead(status, t):
                self._restore(stream, status, t)
            elif stepped_back:
                continue
            else:
                self._start_again(stream, status, digest, t)
            changed = True
        # Streams the status says were collecting when the agent last stopped, and no longer may.
        for name, status in list(state.status.items()):
            if status.active and name not in self.runtimes:
                why = reasons.get(name, "stream-removed")
                stream = next((s for s in self._effective.streams if s.name == name), None)
                when = self._stop_time(stream, why, t) if stream is not None else t
                writer = self._writer(stream) if stream is not None else self.ledger.writer(name)
                writer.vid = writer.chain_vid or writer.vid  # the closing event names the car as its chain does
                writer.add_event(max(when, status.since), why, self._detail(stream, digest, why))
                self._seal([writer])
                if why == "consent-expired" and stream is not None:
                    self._audit_consent(why, stream, max(when, status.since), writer)
                state.status[name] = StreamStatus(False, when, why, digest.hex())
                changed = True
        if changed:
            self.generation += 1
            state.save()
        return changed

    def _start_again(self, stream: Stream, status: StreamStatus | None, digest: bytes, t: float) -> None:
        """Start a stream the owner's state allows at t, with the event that says why (none if it ran at the stop)."""
        if status is not None and status.active:
            kind = "policy" if status.policy != digest.hex() else None  # ran when the agent stopped
        else:
            kind = _RESTART_KIND.get(status.reason, "stream-started") if status else "stream-started"
        off, on = self._class_state(stream)
        if kind is None and (off or on):  # ran when the agent stopped; an allowance may have changed since
            self._start(stream, t, "classes", {"off": off, "on": on, **self._cycle_detail(on)})
        else:
            self._start(stream, t, kind)

    def _restore(self, stream: Stream, status: StreamStatus, t: float) -> None:
        """Start a stream whose consent a clock ahead of t saw expire: the consent's own end is still to come."""
        self._start(stream, t, "consent-restored", {"expired": iso(status.since)})
        self._audit_consent("consent-restored", stream, t, self.runtimes[stream.name].writer, expired=status.since)

    def _writer(self, stream: Stream):
        """The stream's writer, naming the vehicle as its recipient knows it, under the policy in force."""
        writer = self.ledger.writer(stream.name)
        writer.policy_digest = self.ledger.policy_digest
        name_the_car(self.ledger, writer, stream, self.settings.pseudonym_secret)
        writer.sealer = _sealer(stream)
        return writer

    def _start(self, stream: Stream, t: float, kind: str | None, switched: dict[str, Any] | None = None) -> None:
        writer = self._writer(stream)
        runtime = StreamRuntime(stream, self._effective, writer, self.settings)
        self.runtimes[stream.name] = runtime
        digest = self.ledger.policy_digest
        if kind is not None:
            writer.add_event(t, kind, {**self._detail(stream, digest, kind), **(switched or {})})
        self.state.status[stream.name] = StreamStatus(True, t, kind or "running", digest.hex())
        log.log(logging.INFO if kind else logging.DEBUG, "stream %s: collecting (%s)", stream.name, kind or "running")
        self.settings.on_event("stream-started", {"stream": stream.name, "why": kind or "running"})

    def _stop(self, runtime: StreamRuntime, reason: str | None, t: float, *, keep_tail: bool = False) -> None:
        """Stop a stream at its true end: nothing at or after it is kept; the tail is sealed now.

        `keep_tail`: the frames' clock stepped back to t, so the records at or after t were
        recorded before the step, each while the owner's state allowed it at its own time;
        they are kept.
        """
        stream = runtime.stream
        name = stream.name
        del self.runtimes[name]
        end = self._stop_time(stream, reason, t) if reason else t
        writer = runtime.writer
        writer.vid = writer.chain_vid or writer.vid  # the closing event names the car as its chain does
        dropped = writer.discard_from(end) if reason and not keep_tail else 0
        runtime.close(end)
        if reason is not None:
            detail = self._detail(stream, self.ledger.policy_digest, reason)
            if dropped:
                detail["discarded"] = dropped
            writer.add_event(end, reason, detail)
            self.state.status[name] = StreamStatus(False, end, reason, self.ledger.policy_digest.hex())
            log.info("stream %s: stopped (%s)", name, reason)
            self.settings.on_event("stream-stopped", {"stream": name, "why": reason})
        self._seal([writer])
        if reason == "consent-expired":
            self._audit_consent(reason, stream, end, writer)

    def _audit_consent(self, kind: str, stream: Stream, t: float, writer: Any, *, expired: float | None = None) -> None:
        """A consent's end, and its restoring, are the owner's record too: an `audit` event names the stream's block.

        `consent-expired` is dated at the expiry (t), and `last_seq` is the block that holds the
        stream's end. `consent-restored` (the frames' clock went back before the expiry it had
        passed, `expired`) is dated where the clock went (t), and `last_seq` is the block before
        the stream's new start. (A revocation is there already: the owner's `consent-revoked`.)
        Sealed at once, on the data's clock, like the owner's decisions.
        """
        if stream.local:
            return
        audit = self.ledger.writer(AUDIT_STREAM)
        head = writer.head
        detail: dict[str, Any] = {"stream": stream.name, "recipient": stream.recipient, "purpose": stream.purpose,
                                  "expired": iso(t if expired is None else expired),
                                  "restored": iso(t) if kind == "consent-restored" else None,
                                  "last_seq": head[0] if head else None,
                                  "policy": {"version": self.policy.version, "digest": self.ledger.policy_digest.hex()},
                                  **consent_fields(stream, stream.consent)}
        audit.add_event(t, kind, {k: v for k, v in detail.items() if v is not None})
        self._seal([audit])

    def _declare_policy(self, runtime: StreamRuntime, digest: bytes, t: float) -> None:
        status = self.state.status.get(runtime.stream.name)
        writer = runtime.writer
        if writer.policy_digest != digest:
            self._seal([writer])  # what was collected under the old version is sealed under it
            writer.policy_digest = digest
        if status is not None and status.policy != digest.hex():
            writer.add_event(t, "policy", self._detail(runtime.stream, digest, "policy"))
            self.state.status[runtime.stream.name] = replace(status, policy=digest.hex())
            self.state.save()

    def _stop_time(self, stream: Stream | None, reason: str, t: float) -> float:
        """When a stream really stopped: its consent's end when that is what stopped it, else t."""
        if stream is not None and reason in ("consent-expired", "consent-revoked") and stream.consent is not None:
            return min(t, seconds(stream.consent.expires))
        return t

    def _detail(self, stream: Stream | None, digest: bytes, kind: str) -> dict[str, Any]:
        detail: dict[str, Any] = {"policy": {"version": self.policy.version, "digest": digest.hex()}}
        if stream is not None and stream.consent is not None and not stream.local:
            detail["consent"] = {"granted": iso(seconds(stream.consent.granted)), "expires": iso(seconds(stream.consent.expires))}
        if stream is not None and kind in ("stream-started", "policy", "consent-granted", "consent-restored"):
            if stream.recipient:
                detail["recipient"] = stream.recipient
            if stream.purpose:
                detail["purpose"] = stream.purpose
        off = self._gated(stream) if stream is not None else []
        if off:
            detail["classes_off"] = off  # switched off for this ignition cycle ([ignition] each_drive)
        if kind == "pause" and self.state.pause is not None and self.state.pause.until is not None:
            detail["until"] = iso(self.state.pause.until)
        return detail

    def _gated(self, stream: Stream) -> list[str]:
        """The classes this stream allows in the policy that are off in this ignition cycle."""
        return self._class_state(stream)[0]

    def _class_state(self, stream: Stream) -> tuple[list[str], list[str]]:
        """Of the classes this stream allows that `[ignition]` marks: those off now, and those on."""
        ignition = self.policy.ignition
        try:
            allow = set(self.policy.stream(stream.name).allow)
        except KeyError:
            return [], []
        marked = allow & set(ignition.each_drive if ignition is not None else ())
        off = self.state.classes_off() & marked
        return sorted(off), sorted(marked - off)

    def _cycle_detail(self, on: list[str]) -> dict[str, Any]:
        """The ignition cycle, and the owner's allowance behind each class switched on."""
        cycles = self.state.ignition
        out: dict[str, Any] = {"cycle": cycles.cycle}
        if on:
            out["allowance"] = {c: cycles.allowance(c) or "policy" for c in on}
        return out

    # -- time ---------------------------------------------------------------------------------

    def poll(self, t: float) -> None:
        for runtime in self.runtimes.values():
            runtime.poll(t)

    def close(self, t: float) -> None:
        """The agent stops: record what is in progress. The streams' status stays active."""
        for runtime in self.runtimes.values():
            runtime.close(t)


def _ended_ahead(status: StreamStatus, t: float) -> bool:
    """Did a clock ahead of t end this stream at its consent's expiry (in this run before a step back, or in an
    earlier run)? Then the consent, by its own signed end, still covers t.

    `status` is the owner state's file, which nothing signs. Trusting it chooses the name of the start event
    (`consent-restored` or `consent-granted`) and, after a step back, whether a stream starts at the step or at
    the owner's next change: only ever a stream the policy's signed consent covers at t (`why_inactive`, asked
    before), so an edited status can start nothing the owner did not consent to, and stop nothing."""
    return not status.active and status.reason == "consent-expired" and status.since > t


def without_classes(policy: Policy, off: frozenset[str]) -> Policy:
    """The policy with the classes switched off for this ignition cycle taken out of every stream's `allow`."""
    if not off:
        return policy
    return replace(policy, streams=tuple(
        replace(s, allow=tuple(c for c in s.allow if c not in off)) if off & set(s.allow) else s for s in policy.streams
    ))


def _switched_classes(old: Stream, new: Stream) -> dict[str, Any] | None:
    """When only the classes allowed changed (an ignition, an allowance): which went off and on; else None."""
    if replace(_definition(old), allow=()) != replace(_definition(new), allow=()):
        return None
    return {"off": sorted(set(old.allow) - set(new.allow)), "on": sorted(set(new.allow) - set(old.allow))}


def _sealer(stream: Stream) -> Any:
    """Records of a stream with `encrypt_to` are encrypted to the recipient's key before they are signed."""
    if not stream.encrypt_to:
        return None
    from carledger.ledger.encrypt import RecordSealer

    return RecordSealer([stream.encrypt_to])


def _definition(stream: Stream) -> Stream:
    """A stream without its consent: what decides what it records."""
    return replace(stream, consent=None)
