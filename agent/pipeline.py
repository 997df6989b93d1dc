"""The composition root: wires sources, decoding, the owner's policy and the ledger from a Config.

Each bus runs in its own thread, reading only the frames some stream of the
policy could need and handing them over in batches, once per wake-up
interval (`[agent] wakeup_interval`) while frames flow; a single bus read
from a socket (SocketCAN, udp_multicast) is read by the pipeline thread
itself, so that one thread wakes per interval (`carledger.rounds`). One pipeline thread
wakes just after the readers, decodes, hands each new value to the consumers
the policy engine attached (taps, location filters, metrics, aggregates),
and seals blocks when they are due (by age or record count), one SQLite
transaction for all streams due at once. Once per round it applies the
owner's requests (queued by the CLI) and starts or stops streams as consents
begin and end. Bus problems arrive
here as health events and go into the `health` stream.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from datetime import datetime, timezone, tzinfo
from typing import Any, Callable
from zoneinfo import ZoneInfo

from carledger import __version__
from carledger.clocksteps import CLOCK_STEP, STEADY_S, ClockStep, ClockSteps, SteadyClock, step_in
from carledger.config import Config
from carledger.decode.dbcfile import check_message_names
from carledger.diagnostics import DiagnosticPolling, known_signals
from carledger.dispatch import BusDispatch
from carledger.edr import CrashRecorder
from carledger.ledger import Ledger, load_or_create_secret
from carledger.ledger.checkpoints import ForkedStore
from carledger.ledger.keys import signer_from_spec
from carledger.notify import Notifier, Watchdog
from carledger.owner import OwnerActions, OwnerError, OwnerState, Spool, StreamManager
from carledger.owner.actions import AUDIT_STREAM
from carledger.owner.configured import ConfiguredPolicyError, Rejected, apply_configured_policy
from carledger.owner.ignition import IgnitionWatch
from carledger.policy.engine import EngineSettings
from carledger.rounds import Rounds
from carledger.routing import SignalRouting
from carledger.run_summary import RunSummary, dbc_matcher, log_counts, not_recorded
from carledger.sources import BusSource, FrameSource, LogSource
from carledger.sources.base import reader_phase
from carledger.sources.bus import unknown_interface
from carledger.sync.link import SyncLink

log = logging.getLogger(__name__)

HEALTH_STREAM = "health"
_OWN_STREAMS = frozenset({HEALTH_STREAM, AUDIT_STREAM})  # the agent's and the owner's: not data streams
_SPOOL_INTERVAL = 0.2  # wall seconds between looks at the owner's queued requests
_RETENTION_INTERVAL = 600.0  # seconds of the data's clock between retention runs
_HOLD = 0.25  # seconds of wall time a fast replay's periodic seals may wait for one commit


class PipelineError(Exception):
    """A problem that stops the agent before it starts (bad DBC, bad mapping)."""


class Pipeline:
    """Sources -> decode -> the owner's policy -> ledger, for one configuration."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None):
        for index, bus in enumerate(config.buses):  # before anything is opened: a retry cannot mend it
            why = None if bus.is_replay else unknown_interface(bus.interface or "")
            if why is not None:
                raise PipelineError(f"{config.path}: bus[{index}].interface ({bus.name}): {why}")
        self.config = config
        self.notifier = notifier or Notifier({})
        self.stop_event = threading.Event()
        self.summary = RunSummary()
        self._events: collections.deque = collections.deque()  # (bus index, kind, detail) from any thread
        self._last_t: float | None = None
        self.clock_steps = ClockSteps()  # where a bus's frames' clock steps back
        self._last_wall = time.monotonic()
        self._check_at = float("-inf")  # pipeline-clock time of the next seal check inside a batch
        self._hold = 0.0  # seconds the store may hold periodic seals for one commit (an inline fast replay only)
        self._edr_state: tuple = (None, None, None)  # what crash capture was last configured from (_configure_edr)
        signer = signer_from_spec(config.key, config.store) if config.key else None  # None: STORE/keys/vehicle.key
        self.ledger = Ledger.open(config.store, vehicle_id=config.vehicle, signer=signer)
        self.ledger.checkpoint_every = config.checkpoint_every
        if self.ledger.store.refusal is not None:  # a copy of the store, or rolled back: it must not sign on
            self.ledger.close(seal=False)
            raise ForkedStore(self.ledger.store.refusal)
        try:
            self._health = self.ledger.writer(HEALTH_STREAM)
            self.buses = [BusDispatch(bus) for bus in config.buses]
            check_message_names([loaded for bus in self.buses for loaded in bus.loaded])  # one name, one message
            for index, bus in enumerate(self.buses):
                bus.transport.on_event = self._event_sink(index)
            self.owner_state = OwnerState.load(config.store)
            known = known_signals(config, self.buses)
            self.actions = OwnerActions(self.ledger, self.owner_state, known_signals=known, clock=self.now)
            self.actions.sync_enabled = config.mqtt is not None
            self.spool = Spool(config.store)
            self._apply_configured_policy()
            settings = EngineSettings(
                min_interval=config.sampling.interval,
                timezone=_timezone(config.timezone),
                pseudonym_secret=load_or_create_secret(config.store),
                on_event=self._health_event,
            )
            self.streams = StreamManager(self.ledger, self.owner_state, settings, seal=self._seal)
            self.edr = CrashRecorder(self.ledger, seal=self._seal, on_event=self._health_event)
            for bus in self.buses:
                bus.recorder = self.edr
            self.ignition = IgnitionWatch(self.owner_state.policy.ignition, self.owner_state.ignition.last_seen)
            self.routing = SignalRouting(config, self.buses, self.streams, self.edr, self.ignition)
            self._configure_edr(time.time())
            self.diagnostics = DiagnosticPolling(config, self.buses, self._event_sink, self.routing.sample_sink)
            self.routing.plan(self.owner_state.policy)
        except BaseException:
            self.ledger.close()
            raise
        self.sources = [self._make_source(i, bus) for i, bus in enumerate(self.buses)]
        for index, source in enumerate(self.sources):
            source.wakeup_phase = reader_phase(index, config.wakeup_interval)
        self.watchdog = Watchdog(self.notifier, self.sources)  # fed only while loop, sources and store are alive
        # started by run(): a syncer when the configuration has [mqtt], a witness thread for its [[witness]]es
        self.sync = SyncLink(config.store, self.ledger.vehicle_id, config.mqtt, config.witnesses, self.ledger.signer,
                             self.owner_state.effective_policy, self._audit_disclosure)
        self._started = False  # streams are started at the first frame's time (a replay's clock)
        self._generation = -1
        self._next_change: float | None = None
        self._next_retention = float("-inf")
        # deleting by age trusts the data's clock only once it has kept pace (a live bus's is the unsigned wall clock)
        self._steady = None if any(bus.is_replay for bus in config.buses) else SteadyClock()
        self._next_spool = 0.0

    # -- building -----------------------------------------------------------------------------

    def _apply_configured_policy(self) -> None:
        """The policy named in the configuration (or made up on the command line) goes in force if newer."""
        try:
            outcome = apply_configured_policy(self.actions, self.config.policy, self.config.policy_streams, time.time())
        except ConfiguredPolicyError as exc:
            raise PipelineError(str(exc)) from None
        if isinstance(outcome, Rejected):  # not newer, or not the enrolled owner's: the health stream says why
            log.warning("%s; keeping the policy in force (version %d)", outcome.error, self.owner_state.policy.version)
            self._health_event("policy-rejected", {"file": outcome.file, "error": outcome.error[:300]})
        elif outcome is not None and outcome.changed:
            log.info("%s", outcome.message)

    # -- sync ---------------------------------------------------------------------------------

    def _audit_disclosure(self, disclosure: Any) -> None:
        """The collector acked blocks of a stream: the audit stream says who got which blocks."""
        self.actions.disclose(disclosure.stream, disclosure.recipient, disclosure.first_seq, disclosure.last_seq,
                              disclosure.records, disclosure.t)

    # -- samples and events from other threads ------------------------------------------------

    def _event_sink(self, index: int | None) -> Callable[[str, dict], None]:
        def on_event(kind: str, detail: dict | None = None) -> None:
            self._events.append((index, kind, dict(detail or {})))

        return on_event

    def _make_source(self, index: int, bus: BusDispatch) -> FrameSource:
        cfg = bus.config

        def on_event(kind: str, detail: dict, index: int = index) -> None:
            self._events.append((index, kind, detail))

        if cfg.is_replay:
            return LogSource(
                cfg.name, cfg.replay or "", bus.frame_filter,
                speed=cfg.speed, channels=cfg.replay_channels, on_event=on_event,
                wakeup_interval=self.config.wakeup_interval,
            )
        return BusSource(
            cfg.name, bus.frame_filter,
            interface=cfg.interface or "", channel=cfg.channel, bitrate=cfg.bitrate,
            fd=cfg.fd, data_bitrate=cfg.data_bitrate, options=cfg.options, on_event=on_event,
            wakeup_interval=self.config.wakeup_interval,
        )

    # -- running ------------------------------------------------------------------

    def now(self) -> float:
        """The pipeline's clock: the newest frame time, advanced by wall time since it arrived."""
        if self._last_t is None:
            return time.time()
        return self._last_t + (time.monotonic() - self._last_wall)

    def stop(self) -> None:
        self.stop_event.set()

    def run(self, duration: float | None = None) -> RunSummary:
        """Run until every source is exhausted, `stop()` is called, or `duration` seconds pass."""
        started = time.monotonic()
        deadline = started + duration if duration else None
        self._health_event("agent-start", {
            "version": __version__, "config": self.config.path, "policy": self.ledger.policy_digest.hex(),
            "policy_version": self.owner_state.policy.version, "buses": [b.config.name for b in self.buses],
        })
        # the sources' batches, read in this thread or by reader threads (carledger.rounds says when)
        rounds = Rounds(self.sources, self.stop_event, self._events, self.config.wakeup_interval)
        threads = rounds.readers() + [
            threading.Thread(target=poller.run, args=(self.stop_event,), name=f"obd-{name}", daemon=True)
            for name, poller in self.diagnostics.pollers
        ]
        for thread in threads:
            thread.start()
        self.edr.recover()
        self.sync.start()
        # A fast replay of a file, with no syncer or witness in this process: its periodic seals may
        # share one fsync (`Store.append(hold=...)`). A kill loses at most that much more of a tail the
        # replay can give again; nothing reaches another connection before it is durable; every other
        # seal (owner actions, crash captures, the last) commits at once. A live bus keeps one per seal.
        if rounds.fast and not self.sync.running:
            self._hold = _HOLD
        self.notifier.ready(f"recording {len(self.sources)} bus(es)")
        active = len(self.sources)
        next_health = time.monotonic() + self.config.health_interval
        try:
            for items in rounds:
                self.summary.rounds += 1
                for index, item in items:
                    if item is None:
                        active -= 1
                    else:
                        self.summary.batches += 1
                        self._process(index, item)
                # once per round (a wake-up), however many batches it brought
                self._bus_events()
                self.routing.route_samples()
                self.sync.audit()
                wall = time.monotonic()
                if wall >= self._next_spool:
                    self._next_spool = wall + _SPOOL_INTERVAL
                    self._owner_requests()
                self._checkpoint(self.now())
                if self.edr.capture is not None:
                    self.edr.poll(self.now())  # a crash may silence the bus: the post-crash window ends on time anyway
                self.watchdog.beat()
                if wall >= next_health:
                    next_health = wall + self.config.health_interval
                    self._health_event("counters", self._counters())
                done = not active and not self.diagnostics.pollers  # pollers run until stopped
                if done or self.stop_event.is_set() or (deadline is not None and wall >= deadline):
                    break
        finally:
            self.stop_event.set()
            self.notifier.stopping()
            rounds.drain(threads, self._process)
            self._bus_events()
            self.routing.route_samples()
            self.sync.stop_sync()
            self._health_event("agent-stop", self._counters())
            if self._started:
                self.edr.close(self._last_t if self._last_t is not None else self.now())
                self.streams.close(self._last_t if self._last_t is not None else self.now())
                self.actions.remember_last_frame(self._last_t)  # the next start tells a restart from a new drive
            self._seal(None)
            try:
                self.ledger.close()
            finally:
                self.sync.stop_witnesses()
            for source in self.sources:
                source.close()
        self._finish_summary(time.monotonic() - started)
        if rounds.unreadable is not None:
            raise rounds.unreadable
        return self.summary

    def _finish_summary(self, seconds: float) -> None:
        """The run's counts: each log's frames, and the streams whose consent missed the data's time."""
        summary = self.summary
        summary.seconds = seconds
        summary.last_t = self._last_t
        summary.replay = all(bus.config.is_replay for bus in self.buses)
        for bus, source in zip(self.buses, self.sources):
            tally = getattr(source, "tally", None)
            if tally is not None:
                log_counts(bus.stats, tally, dbc_matcher(bus.databases, bus.config.j1939))
            summary.buses[bus.config.name] = bus.stats
        summary.frames = sum(b.stats.frames for b in self.buses)
        policy = self.owner_state.effective_policy()
        summary.not_recorded = not_recorded(policy.streams, summary.streams, summary.first_t, summary.last_t)

    def _process(self, index: int, batch: list) -> None:
        """Hand a batch to its bus; where the frames' clock steps back inside it, what that clock drives hears first."""
        step = self.clock_steps.find(index, batch)
        if step is not None:
            if step.position:
                self._process_cycles(index, batch[: step.position])
            self._clock_stepped_back(index, step)
            batch = batch[step.position :]
        self._process_cycles(index, batch)

    def _process_cycles(self, index: int, batch: list) -> None:
        """Hand a batch to its bus; where an ignition cycle begins inside it, the owner's state changes first."""
        start = 0
        for position, cause, detail in self.ignition.starts(index, batch):
            if position > start:
                self._process_part(index, batch[start:position])
            start = position
            t = self._last_t = batch[position][0]  # the pipeline's clock: the cycle's first frame
            self._last_wall = time.monotonic()
            self._owner_action(lambda: self.actions.ignition(t, cause, detail), at=t)
            self._check_at = float("-inf")  # a checkpoint at the cycle's first frame: handlers of the switched streams
        self._process_part(index, batch[start:] if start else batch)

    def _clock_stepped_back(self, index: int, step: ClockStep) -> None:
        """The frames' clock of bus `index` went back (carledger.clocksteps): said, and what it drives follows it.

        The taps go on recording changes (`Tap.offer` counts its interval both ways); the records
        that follow repeat times already recorded before the step, which the signed health stream
        says once per step. What the data's clock closes (aggregate and metric windows, a trip) ends
        where the clock left, with what it had, and the frames after the step open their own: folded
        on into the window open at the later time, they were counted there and left out of its mean.
        """
        bus = self.buses[index].config.name
        log.warning("bus %s: the frames' clock went back %.3f s, from %.6f to %.6f: the records that follow repeat "
                    "times recorded before", bus, step.seconds, step.left, step.to)
        self._health_event("clock-stepped-back",
                           {"bus": bus, "seconds": round(step.seconds, 6), "from": step.left, "to": step.to})
        self.streams.close(step.left)
        self._check_at = float("-inf")  # the next frame checks seals and timers at its own time
        self._next_retention = min(self._next_retention, step.to)  # not only once the clock passes the old time
        self.buses[index].reset_handlers()  # a repeated frame is offered again on its own clock (REPEAT_EVERY)
        if self._started:  # a consent or pause the clock had passed may cover the frames after the step
            self.streams.refresh(step.to, stepped_back=True)
            self._next_change = self.streams.next_change(step.to)

    def _process_part(self, index: int, batch: list) -> None:
        """Hand a batch to its bus, sealing at the right points inside it.

        A fast replay delivers seconds of log time in one batch; checking the
        seals only between batches would make blocks span several seconds.
        So a batch that crosses the next check time is split there.
        """
        if self.summary.first_t is None:
            self.summary.first_t = batch[0][0]
        rest: list | None = batch
        while rest:
            rest = self._process_checked(index, rest)

    def _process_checked(self, index: int, batch: list) -> list | None:
        """`_process_part` up to a clock step back that follows one of its checks; the frames from the step on.

        A check at a time the clock ran ahead to (a consent's end) moved what the data's clock drives there;
        when the clock comes back inside the same batch, `ClockSteps` (two comparisons a batch) does not see it.
        """
        check_at = self._check_at
        found: ClockStep | None = None
        if batch[-1][0] >= check_at:
            step = self.config.seal_max_age / 4
            start = 0
            for i, frame in enumerate(batch):
                t = frame[0]
                if t >= check_at:
                    if i > start:
                        self.buses[index].process(batch[start:i])
                        self._last_t = batch[i - 1][0]
                    start = i
                    self._last_wall = time.monotonic()
                    self._checkpoint(t)
                    check_at = t + step
                    if self._next_change is not None and self._next_change < check_at:
                        check_at = max(self._next_change, t)
            batch = batch[start:]
            self._check_at = check_at
            found = step_in(batch, batch[0][0]) if batch[-1][0] < batch[0][0] - CLOCK_STEP else None
            if found is not None:  # after the frame checked first (batch[0]): position >= 1
                rest, batch = batch[found.position :], batch[: found.position]
        self.buses[index].process(batch)
        self.edr.flush()  # a trigger in this batch starts its capture before the clock below moves on
        self._last_t = batch[-1][0]
        self._last_wall = time.monotonic()
        if found is None:
            return None
        self._clock_stepped_back(index, found)
        return rest

    def _bus_events(self) -> None:
        """The events the buses, sources and pollers queued from their threads, in order."""
        events = self._events
        while events:
            self._bus_event(*events.popleft())

    def _bus_event(self, index: int | None, kind: str, detail: dict) -> None:
        if index is None:  # an ELM327 adapter: no bus of ours
            self._health_event(kind, detail)
            return
        stats = self.buses[index].stats
        if kind == "malformed-input":
            stats.malformed += 1
        elif kind in ("bus-error", "source-failed"):
            stats.errors += 1
        self._health_event(kind, detail)

    def _health_event(self, kind: str, detail: dict) -> None:
        # The agent's own health is about the process, so it runs on wall-clock time,
        # even while the data streams run on a replayed log's clock.
        self._health.add_event(time.time(), kind, detail)

    def _counters(self) -> dict:
        return {
            "frames": {b.config.name: b.stats.frames for b in self.buses},
            "records": self.summary.records,
            "blocks": self.summary.blocks,
            "transport": {b.config.name: b.transport.stats.as_dict() for b in self.buses if b.transport.stats.messages
                          or b.transport.stats.events},
        }

    def _seal_due(self) -> None:
        """Seal every stream whose oldest pending record is old enough by the clock that record carries.

        Data streams carry the data's clock (a replayed log's). The health
        stream and the audit's disclosures carry the wall clock (the
        collector acks in real time); the owner's decisions, on the data's
        clock, are sealed at once by `_owner_action`, so what waits in the
        audit is on the wall clock. Neither clock is signed; a wrong one seals a
        block early or late (late widens the unsealed tail a kill can lose,
        as this rule exists to prevent), and never alters a record.
        """
        wall = time.time()
        max_age = self.config.seal_max_age
        due = self.ledger.due(
            self.now(), max_age, self.config.seal_max_records,
            clocks={HEALTH_STREAM: wall, AUDIT_STREAM: wall},
            along_s=None if self._hold else max_age / 2,  # held seals share a commit already
        )
        if due:
            self._seal(due, hold=self._hold)

    def _seal(self, writers: list | None, *, hold: float = 0.0) -> list:
        # What was recorded, counted before sealing: an encrypted block's header counts its sealed containers.
        pending = {w.name: (w.pending, w.pending_events) for w in (self.ledger.writers if writers is None else writers)}
        blocks = self.ledger.seal(writers, hold=hold)
        self.watchdog.sealed()
        if blocks:
            self.sync.notify()
        self.summary.blocks += len(blocks)
        for block in blocks:
            stream = block.header.stream
            if stream not in _OWN_STREAMS:
                self.summary.count_block(stream, *pending[stream])
        return blocks

    # -- the owner's policy at work ---------------------------------------------------------

    def _checkpoint(self, t: float) -> None:
        """At a point in the data's time: streams that start or stop, timers of metrics, due seals."""
        streams = self.streams
        if not self._started:
            self._started = True
            streams.refresh(t)
            self._next_change = streams.next_change(t)
        while self._next_change is not None and t >= self._next_change:
            at = self._next_change
            streams.refresh(at)
            self._next_change = streams.next_change(at)
        if streams.generation != self._generation:
            self._generation = streams.generation
            self.sync.refresh()
            for bus in self.buses:
                bus.reset_handlers()
            self.routing.forget()
            running = [s for s in self.owner_state.policy.streams if s.name in streams.runtimes]
            self.diagnostics.follow(streams.takes, running, self.config.sampling.interval)
        self._configure_edr(t)
        for bus in self.buses:
            bus.transport.expire(t)  # a diagnostic answer that never completed is an event even on a silent bus
        streams.poll(t)
        if self.edr.capture is not None:  # between captures, the ticks and each batch's end flush the trigger's samples
            self.edr.poll(t)
        if t >= self._next_retention:
            self._next_retention = t + _RETENTION_INTERVAL
            if self._steady_for_retention(t):  # by age: a clock that jumped is not trusted yet
                self._owner_action(lambda: self.actions.retention(now=t))
            if self.config.disk_quota_mb:  # by space: the oldest go first, whatever the clock says
                quota = int(self.config.disk_quota_mb * 1e6)
                self._owner_action(lambda: self.actions.evict(quota, now=t))
        self._seal_due()

    def _steady_for_retention(self, t: float) -> bool:
        """May retention delete by the data's time t? Not within an hour of a jump of a live bus's clock."""
        steady = self._steady
        if steady is None or steady.steady(t):
            return True
        if steady.newly_held:  # said once, however often it jumps again while held
            log.warning("the data's clock jumped %+.0f s: retention deletes nothing until it has kept pace for %.0f s",
                        steady.jumped, STEADY_S)
            self._health_event("retention-held", {"jump_s": round(steady.jumped, 3), "for_s": STEADY_S})
        return False

    def _configure_edr(self, t: float) -> bool:
        """Crash capture as the policy in force and the pause switch say; handlers rebuilt when it turns on or off.

        Called at every checkpoint (a pause ends on the clock), but the recorder hears only a change:
        the same policy object, digest and pause state configure it as they did.
        """
        policy, digest, paused = self.owner_state.policy, self.ledger.policy_digest, self.owner_state.paused(t)
        last = self._edr_state
        if policy is last[0] and digest is last[1] and paused is last[2]:
            return False
        self._edr_state = (policy, digest, paused)
        changed = self.edr.configure(policy.edr, policy.version, digest, paused=paused)
        if changed:
            for bus in self.buses:
                bus.reset_handlers()
            self.routing.forget()
        return changed

    def _owner_requests(self) -> None:
        """Requests the CLI queued while this agent holds the store (consent, pause, a new policy ...)."""
        for request_id, request in self.spool.take():
            now = self.now()
            request["at"] = now  # the agent's clock decides when a stream stops (a replay's clock in tests)
            answer = self._owner_action(lambda: self.actions.execute(request))
            self.spool.answer(request_id, answer)

    def _owner_action(self, action: Callable[[], Any], at: float | None = None) -> dict:
        """Run an owner action, then put the owner's new state in force at once (at `at`, default now)."""
        old_policy = self.owner_state.policy
        try:
            outcome = action()
        except (OwnerError, KeyError, ValueError, TypeError) as exc:
            log.warning("owner request refused: %s", exc)
            return {"ok": False, "error": str(exc)}
        if outcome.changed:
            log.info("%s", outcome.message)
            now = self.now() if at is None else at
            self.streams.reload(self.owner_state)
            self._configure_edr(now)
            if self.owner_state.policy is not old_policy:
                self.routing.plan(self.owner_state.policy, self.sources)  # another policy: other signals may be needed
            if self._started:
                self.streams.refresh(now)
                self._next_change = self.streams.next_change(now)
        self._seal([self.actions.audit])
        return outcome.to_json()


def _timezone(name: str | None) -> tzinfo:
    """The car's local time zone: the configured one, else the system's."""
    if name:
        return ZoneInfo(name)
    local = datetime.now().astimezone().tzinfo
    return local or timezone.utc
