"""Samples back into CAN frames, for tools that speak frames (canplayer, candump, SavvyCAN).

The ledger keeps decoded samples, not frames. `FrameEncoder` turns a stream's
samples into the frames they came from: each sample updates its message's
latest value of that signal, and every (time, message) of the stream becomes
one frame, encoded by cantools with the latest value of each of the message's
signals (a signal the stream never recorded keeps its DBC initial value, or 0
within its range). Decoding such a frame gives back every recorded value;
the signals the stream did not keep are not invented, they are constants.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from carledger.sources.frame import Frame, frame_key

Sample = tuple[float, str, Any]  # (t, "Message.Signal", value)


class FrameEncoder:
    def __init__(self, databases: Iterable[Any]):
        self._messages = {m.name: m for db in databases for m in db.messages}
        self._state: dict[str, dict[str, Any]] = {}
        self.skipped = 0  # samples of no message of these DBCs, or that cantools cannot encode

    def frames(self, samples: Iterable[Sample]) -> Iterator[Frame]:
        """Frames for samples in time order; samples with the same time and message make one frame."""
        pending: tuple[float, str] | None = None
        for t, source, value in samples:
            name, _, signal = source.partition(".")
            message = self._messages.get(name)
            if message is None or signal not in self._state_of(message):
                self.skipped += 1
                continue
            if pending is not None and pending != (t, name):
                frame = self._encode(*pending)
                if frame is not None:
                    yield frame
            self._state[name][signal] = value
            pending = (t, name)
        if pending is not None:
            frame = self._encode(*pending)
            if frame is not None:
                yield frame

    def _state_of(self, message: Any) -> dict[str, Any]:
        state = self._state.get(message.name)
        if state is None:
            state = self._state[message.name] = {s.name: _resting(s) for s in message.signals}
        return state

    def _encode(self, t: float, name: str) -> Frame | None:
        message = self._messages[name]
        try:
            data = message.encode(self._state[name], strict=False)
        except Exception:  # a multiplexed message whose selector the stream did not keep, a text value ...
            self.skipped += 1
            return None
        return t, frame_key(message.frame_id, message.is_extended_frame), bytes(data)


def _resting(signal: Any) -> Any:
    """The value of a signal the stream did not record: its initial value, else 0 within its range."""
    if getattr(signal, "initial", None) is not None:
        return signal.initial
    low, high = signal.minimum, signal.maximum
    if low is not None and low > 0:
        return low
    if high is not None and high < 0:
        return high
    return 0
