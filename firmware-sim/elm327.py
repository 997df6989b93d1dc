"""An ELM327 adapter on a pseudo-terminal: what a car computer with a USB or Bluetooth OBD dongle sees.

    with Elm327Emulator(can.Bus(interface="virtual", channel="car")) as elm:
        connection = obd.OBD(elm.port)          # python-OBD, as with a real adapter

The emulator is the adapter, not the car: it turns the text commands it reads
on the terminal into CAN frames on a python-can bus (where `ObdResponder` or
a recorded car answers) and prints the frames that come back, as an ELM327
v1.5 does with CAN auto-formatting on:

- AT commands: Z (reset), WS, D, I, @1, E0/E1 (echo), H0/H1 (headers),
  L0/L1 (linefeeds), S0/S1 (spaces), SP/TP (protocol, 0 = automatic, 6-9 =
  ISO 15765-4), DP, DPN, RV (battery voltage), SH (header), ST (timeout,
  4 ms units), AT0-2, CAF0/1, M0, LP, PC; anything else prints ``?``;
- OBD requests as hex digits (``010D``, ``01 0D``), optionally followed by
  one digit: how many answer frames to wait for (``010D1``); an empty line
  repeats the last request;
- headers on: one line per CAN frame, identifier then the bytes with the
  protocol control byte (``7E8 03 41 0D 32``; single frames without their
  padding); headers off: single frames as data bytes only, multi-frame
  answers as the length line (``014``) and numbered lines (``0: 49 02 ...``);
- the ELM's flow control to an ECU's first frame (to 0x7E0+i, or
  0x18DAxxF1), answers collected until ST passes without another frame,
  "response pending" (7F xx 78) swallowed and waited out, ``NO DATA`` when
  nothing answers, ``SEARCHING...`` and ``UNABLE TO CONNECT`` in automatic mode.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections.abc import Callable

import can

from .obd_responder import Background

VERSION = "ELM327 v1.5"
_PROTOCOL_NAMES = {
    "6": "ISO 15765-4 (CAN 11/500)", "7": "ISO 15765-4 (CAN 29/500)",
    "8": "ISO 15765-4 (CAN 11/250)", "9": "ISO 15765-4 (CAN 29/250)",
}
_PENDING_WAIT = 5.0


class Elm327Emulator(Background):
    """An ELM327 on a pty (`port`), bridging to `bus`. `voltage()` answers ATRV (default 12.6 V)."""

    thread_name = "elm327-emulator"

    def __init__(self, bus: can.BusABC, voltage: Callable[[], float] | None = None):
        self.bus = bus
        self.voltage = voltage or (lambda: 12.6)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.frames_sent: list[can.Message] = []
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._reset()

    def _reset(self) -> None:
        self.echo, self.headers, self.linefeeds, self.spaces = True, False, False, True
        self.protocol, self.connected = "0", None  # "0" automatic; connected: the protocol found
        self.header: int | None = None
        self.timeout = 0x32 * 0.004
        self._last = ""

    # -- life cycle -----------------------------------------------------------------------

    def _closed(self) -> None:
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self._master, 1024)
            except OSError:
                return
            buffer += chunk
            while b"\r" in buffer:
                line, _, buffer = buffer.partition(b"\r")
                self._write(self.handle(line.decode("ascii", "replace").replace("\n", "")))

    def _write(self, text: str) -> None:
        try:
            os.write(self._master, text.encode("ascii"))
        except OSError:
            pass

    # -- commands -------------------------------------------------------------------------

    def handle(self, raw: str) -> str:
        """The adapter's whole printout for one command line, prompt included."""
        self.commands.append(raw)
        command = raw.replace(" ", "").upper()
        eol = "\r\n" if self.linefeeds else "\r"
        echo = raw + eol if self.echo else ""
        if command == "ATZ":
            self._reset()
            return f"{echo}{eol}{VERSION}{eol}{eol}>"
        lines = self._at(command[2:]) if command.startswith("AT") else self._request(command)
        return echo + "".join(line + eol for line in lines) + eol + ">"

    def _at(self, cmd: str) -> list[str]:
        flags = {"E": "echo", "H": "headers", "L": "linefeeds", "S": "spaces"}
        if len(cmd) == 2 and cmd[0] in flags and cmd[1] in "01":
            setattr(self, flags[cmd[0]], cmd[1] == "1")
            return ["OK"]
        if cmd in ("I", "WS"):
            if cmd == "WS":
                self._reset()
            return [VERSION]
        if cmd == "@1":
            return ["OBDII to RS232 Interpreter"]
        if cmd == "RV":
            return [f"{self.voltage():.1f}V"]
        if cmd == "DPN":
            return [("A" if self.protocol == "0" else "") + (self.connected or "6")]
        if cmd == "DP":
            name = _PROTOCOL_NAMES.get(self.connected or self.protocol, "ISO 15765-4 (CAN 11/500)")
            return [f"AUTO, {name}" if self.protocol == "0" else name]
        if cmd[:2] in ("SP", "TP") and len(cmd) == 3:
            number = cmd[2].replace("A", "0")
            if number != "0" and number not in _PROTOCOL_NAMES:
                return ["?"]  # J1850, ISO 9141, KWP, J1939: not on a CAN-only car
            self.protocol, self.connected = number, None if number == "0" else number
            return ["OK"]
        if cmd.startswith("SH") and len(cmd) in (5, 8, 10):
            try:
                value = int(cmd[2:], 16)
            except ValueError:
                return ["?"]
            self.header = value | 0x18000000 if len(cmd) == 8 else value
            return ["OK"]
        if cmd.startswith("ST") and len(cmd) == 4:
            try:
                self.timeout = max(1, int(cmd[2:], 16)) * 0.004
            except ValueError:
                return ["?"]
            return ["OK"]
        if cmd == "D":
            self._reset()
            return ["OK"]
        if cmd in ("AT0", "AT1", "AT2", "CAF0", "CAF1", "M0", "LP", "PC"):
            return ["OK"]
        return ["?"]

    def _request(self, command: str) -> list[str]:
        if not command:
            command = self._last
        if not command or any(c not in "0123456789ABCDEF" for c in command):
            return ["?"]
        self._last = command
        expect = None
        if len(command) % 2:
            command, expect = command[:-1], int(command[-1], 16)
        payload = bytes.fromhex(command)
        if not 1 <= len(payload) <= 7:
            return ["?"]
        if self.connected:
            return self._exchange(payload, self.connected, expect) or ["NO DATA"]
        for protocol in ("6", "7"):  # automatic: 11-bit first, as an ELM327 searches
            lines = self._exchange(payload, protocol, expect)
            if lines:
                self.connected = protocol
                return ["SEARCHING...", *lines]
        return ["SEARCHING...", "UNABLE TO CONNECT"]

    # -- the CAN side -----------------------------------------------------------------------

    def _exchange(self, payload: bytes, protocol: str, expect: int | None) -> list[str]:
        extended = protocol in ("7", "9")
        if self.header is not None and (self.header > 0x7FF) == extended:
            target = self.header
        else:
            target = 0x18DB33F1 if extended else 0x7DF
        while self.bus.recv(0) is not None:
            pass  # whatever came in since the last request is not an answer to this one
        self._send(target, bytes((len(payload),)) + payload, extended)
        lines: list[str] = []
        frames = 0
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and (expect is None or frames < expect):
            msg = self.bus.recv(max(0.0, deadline - time.monotonic()))
            if msg is None or msg.is_extended_id != extended or not self._is_answer(msg.arbitration_id, extended):
                continue
            data = bytes(msg.data)
            if not data:
                continue
            kind = data[0] >> 4
            if kind == 0 and data[1:2] == b"\x7f" and data[3:4] == b"\x78":
                deadline = time.monotonic() + _PENDING_WAIT  # response pending: wait for the real answer
                continue
            if kind == 1:  # first frame: let the ECU send the rest
                flow = 0x18DA00F1 | (msg.arbitration_id & 0xFF) << 8 if extended else msg.arbitration_id - 8
                self._send(flow, b"\x30\x00\x00", extended)
            lines.extend(self._format(msg.arbitration_id, data, extended))
            frames += 1
            deadline = time.monotonic() + self.timeout
        return lines

    @staticmethod
    def _is_answer(can_id: int, extended: bool) -> bool:
        return (can_id & 0x1FFFFF00) == 0x18DAF100 if extended else 0x7E8 <= can_id <= 0x7EF

    def _send(self, can_id: int, data: bytes, extended: bool) -> None:
        msg = can.Message(arbitration_id=can_id, data=data.ljust(8, b"\x00"), is_extended_id=extended)
        self.frames_sent.append(msg)
        self.bus.send(msg)

    def _format(self, can_id: int, data: bytes, extended: bool) -> list[str]:
        kind = data[0] >> 4
        sep = " " if self.spaces else ""

        def text(chunk: bytes) -> str:
            return sep.join(f"{b:02X}" for b in chunk)

        if kind == 0:
            data = data[:1 + (data[0] & 0x0F)]
        if self.headers:
            ident = text(can_id.to_bytes(4, "big")) if extended else f"{can_id:03X}"
            return [ident + sep + text(data)]
        if kind == 0:
            return [text(data[1:])]
        if kind == 1:
            length = ((data[0] & 0x0F) << 8) | data[1]
            return [f"{length:03X}", "0:" + sep + text(data[2:])]
        return [f"{data[0] & 0x0F:X}:" + sep + text(data[1:])]
