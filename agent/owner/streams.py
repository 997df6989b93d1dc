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


class StreamManager:
    """The running streams of the policy in force, started and stopped as the owner's state says."""

    def __init__(
        self, ledger: Ledger, state: OwnerState, settings: EngineSettings,
        *, seal: Callable[[list], Any] | None = None,
    ):
        self.ledger = ledger
        self.settings = settings
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
        self._effective = state.effective_policy()
        self._probes = [StreamRuntime(s, self._effective, _Sink(), self.settings) for s in self._effective.streams]  # type: ignore[arg-type]

    def wants(self, name: str, source: str) -> bool:
        """Could any stream of the policy take this signal (now or once its consent starts)?"""
        return any(p.consumers(name, source) for p in self._probes)

    def takes(self, name: str, source: str) -> bool:
        """Does a running stream take this signal? (Asked of the probes: no tap is made for it.)"""
        return any(p.stream.name in self.runtimes and p.consumers(name, source) for p in self._probes)

    def consumers(self, name: str, source: str, scope: Any = None) -> list:
        """Every running stream's taps and feeds for a signal; `scope` keeps buses apart (StreamRuntime.consumers)."""
        return [c for rt in self.runtimes.values() for c in rt.consumers(name, source, scope)]

    def next_change(self, t: float) -> float | None:
        return self.state.next_change(t)

    # -- starting and stopping ----------------------------------------------------------------

    def refresh(self, t: float) -> bool:
        """Start and stop streams to match the owner's state at t; True when the running set changed."""
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
                self._stop(runtime, reasons.get(name, "stream-removed"), t)
                changed = True
            elif _definition(new) != _definition(runtime.stream):
                self._stop(runtime, None, t)  # redefined: the same chain goes on under the new rules
                self._start(new, t, "policy")
                changed = True
            else:
                runtime.stream = new  # a renewed consent: same runtime
                self._declare_policy(runtime, digest, t)
        for name, stream in wanted.items():
            if name not in self.runtimes:
                status = state.status.get(name)
                if status is not None and status.active:
                    kind = "policy" if status.policy != digest.hex() else None  # ran when the agent stopped
                else:
                    kind = _RESTART_KIND.get(status.reason, "stream-started") if status else "stream-started"
                self._start(stream, t, kind)
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
                state.status[name] = StreamStatus(False, when, why, digest.hex())
                changed = True
        if changed:
            self.generation += 1
            state.save()
        return changed

    def _writer(self, stream: Stream):
        """The stream's writer, naming the vehicle as its recipient knows it, under the policy in force."""
        writer = self.ledger.writer(stream.name)
        writer.policy_digest = self.ledger.policy_digest
        writer.vid = stream_identity(stream, self.ledger.vehicle_id, self.settings.pseudonym_secret)
        writer.sealer = _sealer(stream)
        return writer

    def _start(self, stream: Stream, t: float, kind: str | None) -> None:
        writer = self._writer(stream)
        runtime = StreamRuntime(stream, self._effective, writer, self.settings)
        self.runtimes[stream.name] = runtime
        digest = self.ledger.policy_digest
        if kind is not None:
            writer.add_event(t, kind, self._detail(stream, digest, kind))
        self.state.status[stream.name] = StreamStatus(True, t, kind or "running", digest.hex())
        log.log(logging.INFO if kind else logging.DEBUG, "stream %s: collecting (%s)", stream.name, kind or "running")
        self.settings.on_event("stream-started", {"stream": stream.name, "why": kind or "running"})

    def _stop(self, runtime: StreamRuntime, reason: str | None, t: float) -> None:
        """Stop a stream at its true end: nothing at or after it is kept; the tail is sealed now."""
        stream = runtime.stream
        name = stream.name
        del self.runtimes[name]
        end = self._stop_time(stream, reason, t) if reason else t
        writer = runtime.writer
        writer.vid = writer.chain_vid or writer.vid  # the closing event names the car as its chain does
        dropped = writer.discard_from(end) if reason else 0
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
        if stream is not None and kind in ("stream-started", "policy", "consent-granted"):
            if stream.recipient:
                detail["recipient"] = stream.recipient
            if stream.purpose:
                detail["purpose"] = stream.purpose
        if kind == "pause" and self.state.pause is not None and self.state.pause.until is not None:
            detail["until"] = iso(self.state.pause.until)
        return detail

    # -- time ---------------------------------------------------------------------------------

    def poll(self, t: float) -> None:
        for runtime in self.runtimes.values():
            runtime.poll(t)

    def close(self, t: float) -> None:
        """The agent stops: record what is in progress. The streams' status stays active."""
        for runtime in self.runtimes.values():
            runtime.close(t)


def _sealer(stream: Stream) -> Any:
    """Records of a stream with `encrypt_to` are encrypted to the recipient's key before they are signed."""
    if not stream.encrypt_to:
        return None
    from carledger.ledger.encrypt import RecordSealer

    return RecordSealer([stream.encrypt_to])


def _definition(stream: Stream) -> Stream:
    """A stream without its consent: what decides what it records."""
    return replace(stream, consent=None)
