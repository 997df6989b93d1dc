"""Diagnostics on the configured buses: OBD-II and UDS pollers, passive OBD-II decoding, and what they offer a policy.

Polling transmits, so it follows the policy exactly: `DiagnosticPolling.follow`
asks each poller for the PIDs and DIDs that a running stream takes, and for
nothing else (no stream, no request on the bus). Answers come back as samples
(`sample_sink(scope)`), routed by the pipeline like any other; problems as
events (`event_sink(bus index)`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

from carledger.config import BusConfig, Config
from carledger.dispatch import BusDispatch

EventSinkFor = Callable[[int | None], Callable[[str, dict], None]]  # bus index (None: no bus of ours) -> sink
SampleSinkFor = Callable[[str], Callable[..., None]]  # scope -> sink(t, name, value, source)


@functools.lru_cache(maxsize=1)
def obd_signals() -> tuple[tuple[str, str, int], ...]:
    """(sample name, source, PID) of every OBD-II signal carledger decodes: service 01 PIDs, DTCs, the VIN."""
    from carledger.obd.messages import DTC_SERVICES, FREEZE_DTC_PID, FREEZE_PREFIX, VIN
    from carledger.obd.pids import PIDS
    from carledger.obd.session import FREEZE_PIDS

    pids = tuple((sig.sample_name, pid.source, pid.pid) for pid in PIDS.values() for sig in pid.signals)
    freeze = ((FREEZE_PREFIX + "DTC", f"OBD.02.{FREEZE_DTC_PID:02X}"),) + tuple(
        (FREEZE_PREFIX + sig.name, f"OBD.02.{pid:02X}") for pid in FREEZE_PIDS for sig in PIDS[pid].signals)
    return pids + tuple((name, source, -1) for name, source in (*DTC_SERVICES.values(), VIN, *freeze))


def known_signals(config: Config, buses: Iterable[BusDispatch]) -> list[tuple[str, str]]:
    """What a policy may name on this car: (name, source) of the DBCs' signals and, with OBD-II, the PIDs'."""
    known = [pair for bus in buses for pair in bus.signals()]
    if config.elm327 or any(b.obd or b.obd_listen for b in config.buses):
        known += [(name, source) for name, source, _ in obd_signals()]
    return known


def bus_opener(cfg: BusConfig) -> Callable[[], Any]:
    """A second handle on the bus for requests: polling transmits, the BusSource only listens."""
    def open_bus() -> Any:
        import can

        kwargs = dict(cfg.options)
        if cfg.bitrate is not None:
            kwargs["bitrate"] = cfg.bitrate
        if cfg.fd:
            kwargs["fd"] = True
        return can.Bus(interface=cfg.interface, channel=cfg.channel, **kwargs)

    return open_bus


class DiagnosticPolling:
    """The OBD-II pollers (`[bus.obd]`, ELM327 adapters) and UDS pollers (`[bus.uds] poll`) of a configuration.

    Made with the buses: an `obd_listen` bus gets its passive decoder here, a
    polled UDS bus its DID table. The pollers run in threads of their own
    (`pollers`, each with `run(stop_event)`) until the agent stops.
    """

    def __init__(self, config: Config, buses: list[BusDispatch], event_sink: EventSinkFor, sample_sink: SampleSinkFor):
        self.obd_pollers = self._obd(config, buses, event_sink, sample_sink)
        self.uds_pollers: list[tuple[str, Any]] = []
        self._uds_buses: dict[int, BusDispatch] = {}  # id(poller) -> the bus whose DIDs it reads
        for index, bus in enumerate(buses):
            cfg = bus.config
            if cfg.uds is not None and cfg.uds.poll:
                from carledger.obd.uds import UdsPoller, did_table

                bus.dids = did_table(bus.databases)
                poller = UdsPoller(bus_opener(cfg), cfg.uds, event_sink(index))
                self._uds_buses[id(poller)] = bus
                self.uds_pollers.append((f"{cfg.name}-uds", poller))

    @staticmethod
    def _obd(config: Config, buses: list[BusDispatch], event_sink: EventSinkFor,
             sample_sink: SampleSinkFor) -> list[tuple[str, Any]]:
        """Pollers for buses with [bus.obd] and ELM327 adapters; passive decoders for obd_listen buses."""
        out: list[tuple[str, Any]] = []
        if not config.elm327 and not any(b.config.obd or b.config.obd_listen for b in buses):
            return out
        from carledger.obd import Elm327Source, ObdPoller, PassiveDecoder

        for index, bus in enumerate(buses):
            cfg = bus.config
            events = event_sink(index)
            if cfg.obd_listen:
                bus.listen_obd(PassiveDecoder(events), sample_sink(f"{cfg.name}/obd"))
            if cfg.obd is not None:
                out.append((cfg.name, ObdPoller(bus_opener(cfg), cfg.obd, sample_sink(f"{cfg.name}/obd"), events)))
        for index, adapter in enumerate(config.elm327):
            name = f"elm327-{index}"
            out.append((name, Elm327Source(adapter, sample_sink(name), event_sink(None))))
        return out

    @property
    def pollers(self) -> list[tuple[str, Any]]:
        """(name, poller) of every poller: each runs in its own thread until the agent stops."""
        return self.obd_pollers + self.uds_pollers

    def follow(self, takes: Callable[[str, str], bool], running: list[Any],
               min_interval: Callable[[Any, str, str], float | None]) -> None:
        """Poll what the running streams take, nothing else.

        `takes(name, source)`: a running stream takes the signal; `running`:
        their policy entries; `min_interval(stream, name, source)`: the
        stream's sampling interval for it.
        """
        self._follow_obd(takes)
        self._follow_uds(takes, running, min_interval)

    def _follow_obd(self, takes: Callable[[str, str], bool]) -> None:
        """The PIDs a running stream takes, at the configured interval, else 1 s."""
        if not self.obd_pollers:
            return
        from carledger.obd.session import pid_intervals

        taken = [(name, source) for name, source, pid in obd_signals() if pid >= 0 and takes(name, source)]
        for _, poller in self.obd_pollers:
            configured = dict(poller.config.pids)
            pids = pid_intervals((name, 1.0) for name, _ in taken)
            poller.set_pids({pid: configured.get(pid, interval) for pid, interval in pids.items()})

    def _follow_uds(self, takes: Callable[[str, str], bool], running: list[Any],
                    min_interval: Callable[[Any, str, str], float | None]) -> None:
        """The DIDs whose signals a running stream takes, at that stream's interval (else [bus.uds] interval)."""
        if not self.uds_pollers:
            return  # no UDS polling: its module (and can-isotp) stays unimported
        from carledger.obd.uds import dids_to_poll

        for _, poller in self.uds_pollers:
            bus = self._uds_buses[id(poller)]

            def interval(source: str, bus: BusDispatch = bus, default: float = poller.config.interval) -> float | None:
                name = bus.mapping.name(source)
                takers = [s for s in running if s.selects(name, source) and takes(name, source)]
                if not takers:
                    return None
                return min(min_interval(s, name, source) or default for s in takers)

            poller.set_dids(dids_to_poll(bus.dids, interval))
