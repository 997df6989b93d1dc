"""What a run did, told to the person who started it: frames, records, blocks, and streams that recorded nothing.

The counts say what happened to the log's frames, step by step: in the log,
on the channels read, matched by the DBC, decoded for a stream. Records are
counted as samples and declared events apart, so "records" never hides the
events. A stream of the policy that recorded nothing because its consent
does not cover the data's time says so with both dates (consents are judged
at the sample's time, so a log from before the consent records nothing).

Nothing here is signed or goes into the ledger: it is a report of the run,
read by a person, so an unsigned count here cannot lose or forge a record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from carledger.sources.tally import FrameTally


@dataclass
class BusStats:
    frames: int = 0  # handed to the decoder (what the policy could need)
    malformed: int = 0
    errors: int = 0
    decoded: int = 0  # of those, decoded for a running stream
    log: str | None = None  # the replayed log; None for a live bus
    channels: tuple[str, ...] = ()  # the log channels read; () = all
    dbc: tuple[str, ...] = ()
    in_log: int | None = None  # frames in the log
    on_channels: int | None = None  # of those, on the channels read
    matched: int | None = None  # of those, of a message the DBC defines


@dataclass
class NotRecorded:
    """A stream recorded nothing because its consent does not cover the data's time."""

    consent_starts: float | None = None  # the consent starts after the data ends
    consent_ended: float | None = None  # the consent ended before the data starts
    data_starts: float = 0.0
    data_ends: float = 0.0


@dataclass
class RunSummary:
    frames: int = 0
    records: int = 0  # samples and declared events of the data streams
    blocks: int = 0  # every stream's, the agent's health and the owner's audit included
    data_blocks: int = 0  # the data streams' (those `records` counts)
    seconds: float = 0.0
    buses: dict[str, BusStats] = field(default_factory=dict)
    streams: dict[str, int] = field(default_factory=dict)  # records sealed per data stream (events included)
    events: dict[str, int] = field(default_factory=dict)  # declared events among those records, per stream
    not_recorded: dict[str, NotRecorded] = field(default_factory=dict)
    first_t: float | None = None  # the data's time span (the log's clock for a replay)
    last_t: float | None = None
    replay: bool = False
    rounds: int = 0  # the pipeline's wake-ups: its per-round work (owner requests, seals due, clock) ran this often
    batches: int = 0  # batches the sources handed over

    def count_block(self, stream: str, records: int, events: int) -> None:
        self.streams[stream] = self.streams.get(stream, 0) + records
        if events:
            self.events[stream] = self.events.get(stream, 0) + events
        self.records += records
        self.data_blocks += 1

    def lines(self, store: str) -> list[str]:
        """The summary as `carledger run` prints it."""
        out = []
        named = len(self.buses) > 1
        for name, bus in self.buses.items():
            out.append((f"bus {name}: " if named else "") + _frames_line(bus))
        events = sum(self.events.values())
        out.append(f"sealed {_records(self.records, events)} in {_count(self.data_blocks, 'block')} into {store}")
        for name in sorted(set(self.streams) | set(self.not_recorded)):
            gap = self.not_recorded.get(name)
            if gap is not None:
                out.append(f"  stream {name}: {_not_recorded_text(gap, self.replay)}")
            else:
                out.append(f"  stream {name}: {_records(self.streams[name], self.events.get(name, 0))}")
        for name, bus in self.buses.items():
            if bus.matched == 0 and bus.on_channels:
                out.append(
                    f"warning: {'bus ' + name + ': ' if named else ''}the DBC ({', '.join(bus.dbc)}) matches not one of "
                    f"the {bus.on_channels:,} frames read: it is probably the wrong DBC for this car"
                )
        frames = sum(bus.in_log if bus.in_log is not None else bus.frames for bus in self.buses.values())
        rate = frames / self.seconds if self.seconds > 0 else 0.0
        out.append(f"took {self.seconds:.1f} s ({rate:,.0f} frames/s)")
        return out

    def to_json(self, store: str) -> dict[str, Any]:
        """The same facts as `lines`, for `carledger run --json`."""
        streams: dict[str, Any] = {}
        for name in sorted(set(self.streams) | set(self.not_recorded)):
            records, events = self.streams.get(name, 0), self.events.get(name, 0)
            entry: dict[str, Any] = {"records": records, "samples": records - events, "events": events}
            gap = self.not_recorded.get(name)
            if gap is not None:
                entry["nothing_recorded"] = {
                    "consent_starts": _day(gap.consent_starts) if gap.consent_starts is not None else None,
                    "consent_ended": _day(gap.consent_ended) if gap.consent_ended is not None else None,
                    "data_starts": _day(gap.data_starts), "data_ends": _day(gap.data_ends),
                }
            streams[name] = entry
        return {
            "store": store,
            "seconds": round(self.seconds, 3),
            "buses": {name: {
                "log": bus.log, "channels": list(bus.channels), "dbc": list(bus.dbc),
                "frames_in_log": bus.in_log, "frames_on_channels": bus.on_channels, "frames_matched_dbc": bus.matched,
                "frames_read": bus.frames, "frames_decoded": bus.decoded,
                "malformed": bus.malformed, "errors": bus.errors,
                "wrong_dbc": bus.matched == 0 and bool(bus.on_channels),
            } for name, bus in self.buses.items()},
            "records": self.records,
            "samples": self.records - sum(self.events.values()),
            "events": sum(self.events.values()),
            "blocks": self.data_blocks,
            "streams": streams,
        }


def log_counts(bus: BusStats, tally: FrameTally, matches: Callable[[int], bool]) -> None:
    """A replayed log's counts into `bus`: in the log, on the channels read, matched by the DBC (`matches(key)`)."""
    bus.in_log, bus.on_channels = tally.in_log, tally.on_channels
    bus.matched = sum(n for key, n in tally.by_key.items() if matches(key))


def not_recorded(streams: Iterable[Any], recorded: dict[str, int], first_t: float | None, last_t: float | None) -> dict[str, NotRecorded]:
    """The policy's streams with a consent that recorded nothing because that consent does not cover the data's time."""
    out: dict[str, NotRecorded] = {}
    if first_t is None or last_t is None:
        return out
    for stream in streams:
        consent = getattr(stream, "consent", None)
        if stream.local or consent is None or recorded.get(stream.name):
            continue
        starts, ends = consent.granted.timestamp(), consent.expires.timestamp()
        if starts > last_t:
            out[stream.name] = NotRecorded(consent_starts=starts, data_starts=first_t, data_ends=last_t)
        elif ends <= first_t:
            out[stream.name] = NotRecorded(consent_ended=ends, data_starts=first_t, data_ends=last_t)
    return out


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _records(records: int, events: int) -> str:
    """Records with the declared events they include, so a count never passes events off as data."""
    return f"{_count(records, 'record')} ({_count(records - events, 'sample')}, {_count(events, 'declared event')})"


def _frames_line(bus: BusStats) -> str:
    read = bus.in_log if bus.in_log is not None else bus.frames
    parts = [f"read {read:,} frames"]
    if bus.channels and bus.on_channels is not None:
        parts.append(f"{bus.on_channels:,} on channel{'s' if len(bus.channels) > 1 else ''} {', '.join(bus.channels)}")
    if bus.matched is not None:
        parts.append(f"{bus.matched:,} matched the DBC")
    parts.append(f"{bus.decoded:,} decoded for a stream")
    return ", ".join(parts)


def _not_recorded_text(gap: NotRecorded, replay: bool) -> str:
    data = "the log" if replay else "the data"
    if gap.consent_starts is not None:
        return f"nothing recorded, its consent starts {_day(gap.consent_starts)} and {data} ends {_day(gap.data_ends)}"
    return f"nothing recorded, its consent ended {_day(gap.consent_ended or 0.0)} and {data} starts {_day(gap.data_starts)}"


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


def dbc_matcher(databases: Sequence[Any], j1939: bool | None) -> Callable[[int], bool]:
    """key -> whether a message of these DBCs has that frame id (by PGN where J1939 applies), as the decoder matches."""
    from carledger.decode import DecodeTable

    first_signals = {f"{m.name}.{m.signals[0].name}" for db in databases for m in db.messages if m.signals}
    quiet = logging.getLogger(DecodeTable.__module__)  # its warnings were given when the DBC was loaded
    was, quiet.disabled = quiet.disabled, True
    try:
        table = DecodeTable(databases, first_signals.__contains__, j1939=j1939)
    finally:
        quiet.disabled = was
    return lambda key: table.lookup(key) is not None
