"""Signal routing: where each decoded signal goes under the policy in force.

A bus message's signals go to its `MessageHandler` (the running streams'
taps and feeds, the crash recorder's inputs), made on the message's first
frame; an OBD-II sample, which poller threads and passive decoders hand over
one by one, goes to the consumers of its (scope, name, source), looked up
once. The pipeline asks for a new plan when the policy changes (other
signals may be needed) and forgets the consumers when the running streams
or crash capture change.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Callable, Sequence

from carledger.config import Config
from carledger.decode import VssMapping
from carledger.diagnostics import known_signals
from carledger.dispatch import BusDispatch
from carledger.edr import CrashRecorder
from carledger.owner import StreamManager
from carledger.owner.ignition import IgnitionWatch
from carledger.policy.document import Policy
from carledger.sampling import MessageHandler, SampleSink

log = logging.getLogger(__name__)


class SignalRouting:
    """Handlers for the buses' messages and consumers for OBD-II samples, from the streams, the recorder and the ignition watch."""

    def __init__(self, config: Config, buses: Sequence[BusDispatch], streams: StreamManager, edr: CrashRecorder,
                 ignition: IgnitionWatch):
        self.config, self.buses, self.streams, self.edr, self.ignition = config, buses, streams, edr, ignition
        self._samples: collections.deque = collections.deque()  # (scope, t, name, value, source) from OBD threads
        self._consumers: dict[tuple, list] = {}

    def plan(self, policy: Policy, sources: Sequence[Any] = ()) -> None:
        """Decode tables for what any stream of `policy` (or its crash capture, or the ignition watch) could take.

        Handlers follow on each message's first frame, for the streams running then. `sources`: the
        buses' readers once they exist, whose frame filters follow the tables.
        """
        streams, edr, ignition = self.streams, self.edr, self.ignition
        ignition.configure(policy.ignition)
        for index, bus in enumerate(self.buses):
            mapping = bus.mapping

            def wanted(source: str, mapping: VssMapping = mapping) -> bool:
                name = mapping.name(source)
                return streams.wants(name, source) or edr.wants(name, source) or ignition.wants(name, source)

            bus.plan(wanted, self._handler_maker(mapping, bus.config.name))
            ignition.watch_bus(index, bus.table, mapping.name)
            log.info(
                "bus %s: %d messages, %d signals the policy could need from %s",
                bus.config.name, len(bus.table.keys()), len(bus.table.signals()), ", ".join(bus.config.dbc),
            )
            setter = getattr(sources[index], "set_filter", None) if sources else None
            if setter is not None:
                setter(bus.frame_filter)
        self._warn_unmatched(policy)

    def _handler_maker(self, mapping: VssMapping, bus: str) -> Callable[[Any], MessageHandler | None]:
        streams, edr = self.streams, self.edr

        def make_handler(extractor: Any) -> MessageHandler | None:
            consumers = []
            held = []  # crash capture signals the ring reads from the newest frame at each tick
            floats = {s.name for s in extractor.message.signals if s.is_float}  # can carry NaN and infinity
            for index, signal in enumerate(extractor.names):
                source = f"{extractor.message.name}.{signal}"
                name = mapping.name(source)
                inputs, per_tick = edr.frame_consumers(name, source)
                consumers.append(streams.consumers(name, source, bus, ieee_float=signal in floats) + inputs)
                if per_tick:
                    held.append((index, name, source))
            if held:
                message = extractor.message
                handler = edr.handler((bus, message.name), extractor.extract, consumers, held,
                                      length=message.length, multiplexed=message.is_multiplexed())
            elif not any(consumers):
                return None  # no running stream takes anything from this message now
            else:
                handler = MessageHandler(extractor.extract, consumers)
            adopted: set[int] = set()
            for taps in consumers:
                for tap in taps:
                    for each in (tap, *getattr(tap, "dependents", {}).values()):
                        if id(each) not in adopted:
                            adopted.add(id(each))
                            each.owner = handler
                            if getattr(each, "pending", False):
                                handler.pending += 1
            return handler

        return make_handler

    def _warn_unmatched(self, policy: Policy) -> None:
        signals = known_signals(self.config, self.buses)
        for stream in policy.streams:
            if stream.raw and stream.signals and not any(stream.selects(n, s) for n, s in signals):
                log.warning("stream %s: its patterns match no signal of the configured DBCs", stream.name)

    # -- OBD-II samples -----------------------------------------------------------------------

    def sample_sink(self, scope: str) -> SampleSink:
        """What a poller or passive decoder of `scope` calls with each sample, from any thread."""
        samples = self._samples

        def on_sample(t: float, name: str, value: Any, source: str | None = None) -> None:
            samples.append((scope, t, name, value, source or name))

        return on_sample

    def route_samples(self) -> None:
        """The samples handed over since the last call: to the running streams' consumers, in the pipeline thread."""
        samples = self._samples
        cache = self._consumers
        while samples:
            scope, t, name, value, source = samples.popleft()
            key = (scope, name, source)
            consumers = cache.get(key)
            if consumers is None:
                consumers = cache[key] = self.streams.consumers(name, source, scope) + self.edr.consumers(name, source)
            for consumer in consumers:
                consumer.offer(t, value)

    def forget(self) -> None:
        """The running streams or crash capture changed: look the samples' consumers up again."""
        self._consumers = {}
