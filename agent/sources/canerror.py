"""SocketCAN error frames (CAN_ERR_FLAG) decoded into bus-health events, floods summarised.

A CAN controller reports bus trouble as error frames: the class bits are in
the identifier, the details in the payload (linux/can/error.h). A badly
terminated bus can raise thousands a second, so `ErrorFrameLog` reports the
first one of a burst at once, any change of the controller's state at once,
and otherwise one summary (with a count) per interval.
"""

from __future__ import annotations

from typing import Any

CAN_ERR_FLAG = 0x20000000
CAN_ERR_MASK = 0x1FFFFFFF

# error classes, in can_id (linux/can/error.h)
_CLASSES = (
    (0x001, "tx-timeout"),
    (0x002, "lost-arbitration"),
    (0x004, "controller"),
    (0x008, "protocol"),
    (0x010, "transceiver"),
    (0x020, "no-ack"),
    (0x040, "bus-off"),
    (0x080, "bus-error"),
    (0x100, "restarted"),
    (0x200, "error-counters"),
)
_CTRL = 0x004
_PROT = 0x008
_BUSOFF = 0x040
_RESTARTED = 0x100
_CNT = 0x200

# data[1]: controller status
_CONTROLLER = (
    (0x01, "rx-overflow"),
    (0x02, "tx-overflow"),
    (0x04, "rx-warning"),
    (0x08, "tx-warning"),
    (0x10, "rx-passive"),
    (0x20, "tx-passive"),
    (0x40, "active"),
)
# data[2]: protocol violation type
_PROTOCOL = (
    (0x01, "bit"),
    (0x02, "form"),
    (0x04, "stuff"),
    (0x08, "bit0"),
    (0x10, "bit1"),
    (0x20, "overload"),
    (0x40, "active-announcement"),
    (0x80, "on-transmission"),
)


def _names(bits: int, table: tuple[tuple[int, str], ...]) -> list[str]:
    return [name for bit, name in table if bits & bit]


def error_state(can_id: int, data: bytes) -> str | None:
    """The controller state an error frame tells of: bus-off, error-passive, error-warning, error-active, or None."""
    if can_id & _BUSOFF:
        return "bus-off"
    status = data[1] if can_id & _CTRL and len(data) > 1 else 0
    if status & 0x30:
        return "error-passive"
    if status & 0x0C:
        return "error-warning"
    if status & 0x40 or can_id & _RESTARTED:
        return "error-active"
    return None


def decode_error_frame(can_id: int, data: bytes) -> dict[str, Any]:
    """What an error frame says, as JSON-friendly fields (classes, state, details, counters)."""
    bits = can_id & CAN_ERR_MASK
    decoded: dict[str, Any] = {"classes": _names(bits, _CLASSES) or ["unspecified"]}
    state = error_state(bits, data)
    if state:
        decoded["state"] = state
    if bits & _CTRL and len(data) > 1 and data[1]:
        decoded["controller"] = _names(data[1], _CONTROLLER)
    if bits & _PROT and len(data) > 3:
        decoded["protocol"] = _names(data[2], _PROTOCOL) or ["unspecified"]
        decoded["location"] = data[3]
    if bits & _CNT and len(data) > 7:
        decoded["tx_errors"], decoded["rx_errors"] = data[6], data[7]
    decoded["data"] = data.hex()
    return decoded


class ErrorFrameLog:
    """Rate-limits error frames into events: first of a burst and state changes at once, then a summary per interval."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.total = 0
        self.state: str | None = None  # the last controller state an error frame told of
        self._window_end: float | None = None
        self._pending = 0
        self._pending_classes: dict[str, None] = {}
        self._last: dict[str, Any] | None = None

    def add(self, now: float, can_id: int, data: bytes) -> list[dict[str, Any]]:
        """Count one error frame; returns the event details to report now (usually none or one).

        A state change is reported as its own event, after a summary of the
        frames held back before it, so the order of events is the order on the bus.
        """
        self.total += 1
        decoded = decode_error_frame(can_id, data)
        state = decoded.get("state")
        changed = state is not None and state != self.state
        if state is not None:
            self.state = state
        if self._window_end is None or changed or now >= self._window_end:
            held = self._take_pending()
            self._window_end = now + self.interval
            return [held, dict(decoded, count=1)] if held else [dict(decoded, count=1)]
        self._pending += 1
        self._pending_classes.update(dict.fromkeys(decoded["classes"]))
        self._last = decoded
        return []

    def flush(self, now: float) -> dict[str, Any] | None:
        """The summary of the frames held back, once their interval is over (call it when idle)."""
        if self._window_end is None or now < self._window_end:
            return None
        if not self._pending:
            self._window_end = None
            return None
        self._window_end = now + self.interval
        return self._take_pending()

    def _take_pending(self) -> dict[str, Any]:
        if not self._pending:
            return {}
        detail = dict(self._last or {}, count=self._pending, classes=list(self._pending_classes))
        self._pending, self._pending_classes, self._last = 0, {}, None
        return detail
