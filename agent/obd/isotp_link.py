"""Requests and answers over a CAN bus through can-isotp (ISO 15765-2), in the caller's thread.

One `isotp.TransportLayerLogic` per ECU does the transport protocol: it
sends the request, answers an ECU's first frame with flow control, checks
sequence numbers and timeouts, and hands back whole payloads. They run
without threads of their own: this link reads the bus, hands each frame to
the layer of the ECU that sent it and lets the layers process, so a poller
costs one thread however many ECUs answer.

Addressing (ISO 15765-4): 11-bit requests go to 0x7DF (functional) or
0x7E0+i, answers come from 0x7E8+i; 29-bit requests go to 0x18DB33F1 or
0x18DAxxF1, answers come from 0x18DAF1xx. The bus gets filters for the
answer identifiers only. Every frame sent goes through `_transmit`, which
counts it (`sent`); nothing but requests and flow control is ever sent.
"""

from __future__ import annotations

import collections
import threading
import time

import can
import isotp

from carledger.obd.passive import is_response
from carledger.obd.session import LinkError, RawAnswer
from carledger.sources.frame import EFF_FLAG

__all__ = ["IsoTpLink"]

_PARAMS = {"tx_padding": 0x00, "stmin": 0, "blocksize": 0, "rx_consecutive_frame_timeout": 1000}
_TESTER = 0xF1
_POLL = 0.05  # longest bus read while waiting, seconds


class _Channel:
    """The ISO-TP layer for one ECU, fed from this link's reads."""

    def __init__(self, key: int, address: isotp.Address, transmit, on_error):
        self.key = key
        self.inbox: collections.deque = collections.deque()
        self.last_t = 0.0
        self.layer = isotp.TransportLayerLogic(rxfn=self._next, txfn=transmit, address=address,
                                               error_handler=on_error, params=dict(_PARAMS))

    def _next(self):
        return self.inbox.popleft() if self.inbox else None

    @property
    def receiving(self) -> bool:
        return self.layer.is_rx_active()


class IsoTpLink:
    """A `Link` over `bus` (which it filters for OBD answers and then owns for reading).

    `pairs`: further (request, response) keys of ECUs outside the OBD ranges
    (UDS diagnostics, docs/uds.md), bit 31 set for 29-bit; exchanges address
    them by their response key like the OBD ECUs.
    """

    def __init__(self, bus: can.BusABC, id_bits: int = 11, pairs: tuple[tuple[int, int], ...] = ()):
        if id_bits not in (11, 29):
            raise ValueError("id_bits is 11 or 29")
        self.bus, self.id_bits = bus, id_bits
        self.sent = 0
        self.isotp_errors = 0
        self._channels: dict[int, _Channel] = {}
        self._pairs = {response: request for request, response in pairs}
        extra = [{"can_id": k & 0x1FFFFFFF, "can_mask": 0x1FFFFFFF if k & EFF_FLAG else 0x7FF,
                  "extended": bool(k & EFF_FLAG)} for k in self._pairs]
        if id_bits == 11:
            bus.set_filters([{"can_id": 0x7E8, "can_mask": 0x7F8, "extended": False}, *extra])
            functional = isotp.AsymmetricAddress(
                isotp.Address(isotp.AddressingMode.Normal_11bits, txid=0x7DF, tx_only=True),
                isotp.Address(isotp.AddressingMode.Normal_11bits, rxid=0x7E8, rx_only=True))
            for key in range(0x7E8, 0x7F0):
                self._channel(key)
        else:
            bus.set_filters([{"can_id": 0x18DAF100, "can_mask": 0x1FFFFF00, "extended": True}, *extra])
            functional = isotp.AsymmetricAddress(  # send-only: answers come in on the ECUs' channels
                isotp.Address(isotp.AddressingMode.NormalFixed_29bits, target_address=0x33,
                              source_address=_TESTER, tx_only=True),
                isotp.Address(isotp.AddressingMode.NormalFixed_29bits, target_address=_TESTER,
                              source_address=0x33, rx_only=True))
        self._functional = isotp.TransportLayerLogic(rxfn=lambda: None, txfn=self._transmit,
                                                     address=functional, params=dict(_PARAMS))

    def _channel(self, key: int) -> _Channel:
        channel = self._channels.get(key)
        if channel is None:
            if key in self._pairs:
                request = self._pairs[key]
                mode = isotp.AddressingMode.Normal_29bits if key & EFF_FLAG else isotp.AddressingMode.Normal_11bits
                address = isotp.Address(mode, txid=request & 0x1FFFFFFF, rxid=key & 0x1FFFFFFF)
            elif key & EFF_FLAG:
                address = isotp.Address(isotp.AddressingMode.NormalFixed_29bits,
                                        target_address=key & 0xFF, source_address=_TESTER)
            else:
                address = isotp.Address(isotp.AddressingMode.Normal_11bits, txid=key - 8, rxid=key)
            channel = self._channels[key] = _Channel(key, address, self._transmit, self._isotp_error)
        return channel

    def _transmit(self, frame: isotp.CanMessage) -> None:
        try:
            self.bus.send(can.Message(arbitration_id=frame.arbitration_id, data=frame.data,
                                      is_extended_id=frame.is_extended_id))
        except (can.CanError, OSError) as exc:
            raise LinkError(f"cannot send on the bus: {exc}") from exc
        self.sent += 1

    def _isotp_error(self, error: Exception) -> None:
        self.isotp_errors += 1

    # -- the Link protocol -----------------------------------------------------------------

    def exchange(self, payload: bytes, ecu: int | None, expect: set[int] | None,
                 timeout: float, pending_timeout: float, stop: threading.Event) -> list[RawAnswer]:
        for channel in self._channels.values():  # a fresh start: nothing half-received from before
            channel.layer.stop_receiving()
            channel.inbox.clear()
        if ecu is None:
            self._functional.send(payload, target_address_type=isotp.TargetAddressType.Functional)
            self._functional.process(do_rx=False)
        else:
            layer = self._channel(ecu).layer
            layer.send(payload)
            layer.process()
        end = time.monotonic() + timeout
        extended: dict[int, float] = {}
        final: set[int] = set()
        answers: list[RawAnswer] = []
        while True:
            now = time.monotonic()
            receiving = any(c.receiving for c in self._channels.values())
            deadline = max(end, *extended.values()) if extended else end
            if not receiving and (now >= deadline or (expect and expect <= final and not extended)):
                return answers
            if now >= deadline + 1.0 or stop.is_set():  # stalled past ISO-TP's own timeout, or stopping
                return answers
            for key, data in self._read(max(0.0, min(deadline - now, _POLL))):
                if data[:1] == b"\x7f" and data[2:3] == b"\x78":
                    extended[key] = time.monotonic() + pending_timeout
                    final.discard(key)
                else:
                    final.add(key)
                    extended.pop(key, None)
                answers.append((self._channels[key].last_t, key, data))

    def idle(self, seconds: float, stop: threading.Event) -> bool:
        end = time.monotonic() + seconds
        while not stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._read(min(left, _POLL))  # late answers: read and dropped
        return True

    # -- reading ----------------------------------------------------------------------------

    def _read(self, timeout: float) -> list[tuple[int, bytes]]:
        """Frames from the bus into their channels; the payloads that completed."""
        try:
            msg = self.bus.recv(timeout)
        except (can.CanError, OSError) as exc:
            raise LinkError(f"cannot read the bus: {exc}") from exc
        touched: set[int] = set()
        while msg is not None:
            key = msg.arbitration_id | EFF_FLAG if msg.is_extended_id else msg.arbitration_id
            if not msg.is_error_frame and not msg.is_remote_frame and (is_response(key) or key in self._pairs):
                channel = self._channel(key)
                channel.inbox.append(isotp.CanMessage(msg.arbitration_id, msg.dlc, bytes(msg.data), msg.is_extended_id))
                channel.last_t = msg.timestamp
                touched.add(key)
            try:
                msg = self.bus.recv(0)
            except (can.CanError, OSError) as exc:
                raise LinkError(f"cannot read the bus: {exc}") from exc
        done = []
        for key in touched:
            layer = self._channels[key].layer
            layer.process()
            payload = layer.recv()
            while payload is not None:
                done.append((key, bytes(payload)))
                payload = layer.recv()
        return done

