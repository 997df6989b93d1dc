"""Where ignition cycles begin, read from the bus: for `[ignition]` (classes off at each drive).

A new cycle begins at the first frame after the buses were silent for the
policy's `silence`, or where the ignition signal (`[ignition] signal`, e.g.
the demo car's `Vehicle.LowVoltageSystemState`) turns on again after the
agent saw it off. The very first frame a store ever records starts cycle 1;
an agent restarted within a drive (less than `silence` after the last frame
it recorded) stays in that drive's cycle.

Trust: frames are not signed, and neither is `last_seen` in the owner state.
Whoever can forge frames or edit the state can at most start a cycle (the
classes go off: less is recorded, never more) or hide one (the allowance the
owner gave for the current drive lasts longer). Neither forges or loses a
signed record; every cycle and allowance is a signed event in the audit.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Callable

from carledger.policy.document import Ignition

#: (position in the batch, cause, detail) of a cycle's first frame.
CycleStart = tuple[int, str, dict[str, Any]]


class _Watched:
    """One message that carries the ignition signal: how to read it from a payload."""

    __slots__ = ("extract", "index", "choices", "name")

    def __init__(self, extract: Callable[[bytes], list], index: int, choices: dict[Any, Any], name: str):
        self.extract, self.index, self.choices, self.name = extract, index, choices, name

    def value(self, data: bytes) -> Any:
        return self.extract(data)[self.index]  # None when the payload lacks it, as for the streams


class IgnitionWatch:
    """Finds the first frame of each ignition cycle in the batches the pipeline reads."""

    def __init__(self, ignition: Ignition | None, last_seen: float | None):
        self.ignition = ignition
        self.last_seen = last_seen
        self._watched: dict[int, dict[int, _Watched]] = {}  # bus index -> frame key -> message
        self._on: bool | None = None  # the ignition signal's state since the cycle began (None: not seen)

    def configure(self, ignition: Ignition | None) -> None:
        """The policy in force changed: watch what its `[ignition]` names (buses are watched again by `watch_bus`)."""
        self.ignition = ignition
        self._watched = {}

    def wants(self, name: str, source: str) -> bool:
        """Must this signal be decoded for the watch?"""
        signal = self.ignition.signal if self.ignition is not None else None
        return signal is not None and (fnmatchcase(name, signal) or fnmatchcase(source, signal))

    def watch_bus(self, index: int, table: Any, name_of: Callable[[str], str]) -> None:
        """Find the ignition signal among a bus's decoded messages (`table`: its DecodeTable)."""
        watched: dict[int, _Watched] = {}
        for key in table.keys():
            extractor = table.lookup(key)
            for i, signal in enumerate(extractor.names):
                source = f"{extractor.message.name}.{signal}"
                if self.wants(name_of(source), source):
                    choices = extractor.message.get_signal_by_name(signal).choices or {}
                    watched[key] = _Watched(extractor.extract, i, {int(k): str(v) for k, v in choices.items()}, source)
                    break
        self._watched[index] = watched

    def _is_on(self, watched: _Watched, value: Any) -> bool:
        assert self.ignition is not None
        named = watched.choices.get(int(value)) if isinstance(value, (int, float)) and value == int(value) else None
        return any(v == named if isinstance(v, str) else v == value for v in self.ignition.on)

    def starts(self, index: int, batch: list) -> list[CycleStart]:
        """Every frame of `batch` (from bus `index`) that begins an ignition cycle, in order."""
        if self.ignition is None or not batch:
            return []
        silence = self.ignition.silence
        out: dict[int, tuple[str, dict[str, Any]]] = {}
        last = self.last_seen
        if last is None:
            out[0] = ("first-frame", {})
        elif batch[0][0] - last >= silence:
            out[0] = ("bus-woke", {"silent_s": round(batch[0][0] - last, 3)})
        if batch[-1][0] - batch[0][0] >= silence:  # only then can a gap of `silence` hide inside it
            previous = batch[0][0]
            for i, frame in enumerate(batch):
                if frame[0] - previous >= silence:
                    out[i] = ("bus-woke", {"silent_s": round(frame[0] - previous, 3)})
                previous = frame[0]
        watched = self._watched.get(index)
        silent_starts = sorted(out)
        if watched:
            for i in [i for i, frame in enumerate(batch) if frame[1] in watched]:
                if silent_starts and silent_starts[0] <= i:
                    while silent_starts and silent_starts[0] <= i:
                        silent_starts.pop(0)
                    self._on = None  # a new cycle by silence: the signal's first "on" is that same cycle
                item = watched[batch[i][1]]
                value = item.value(batch[i][2])
                if value is None:
                    continue
                on = self._is_on(item, value)
                if on and self._on is False and i not in out:
                    out[i] = ("ignition-signal", {"signal": item.name, "value": item.choices.get(int(value), value)})
                self._on = on
        elif silent_starts:
            self._on = None
        self.last_seen = batch[-1][0] if last is None else max(last, batch[-1][0])
        return [(i, *out[i]) for i in sorted(out)]


__all__ = ["CycleStart", "IgnitionWatch"]
