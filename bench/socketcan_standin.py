"""A SocketCAN bus where the kernel has no CAN: `struct can_frame` in loopback UDP datagrams, filtered in the kernel.

The car reads its buses through SocketCAN. This machine's kernel has no CAN
(`socket(AF_CAN, ...)` fails with errno 97, and no vcan), and the SocketCAN
tier of the tests runs inside user-mode-linux, too slow to time. So for
timing at the car's pace (bench_realtime.py) this stand-in keeps what the
car's path is made of, on the machine's own kernel:

- one datagram per frame, a 16-byte `struct can_frame` as a CAN_RAW socket
  delivers it, stamped by the kernel on receipt (SO_TIMESTAMPNS, or
  SO_TIMESTAMPING where the reader asks for it);
- the filters in the kernel: a frame no filter takes never reaches the
  process's socket, and is not counted as a drop on it, as with
  CAN_RAW_FILTER (`(received & mask) == (id & mask)`, the extended flag
  compared where a filter names it). A UDP socket filter would count each
  filtered datagram in the socket's drops (SO_RXQ_OVFL), which the agent
  reports; so the port has two sockets (SO_REUSEPORT), and python-can's
  filters, compiled to classic BPF, pick the reader's socket or a second
  one nobody reads (SO_ATTACH_REUSEPORT_CBPF);
- python-can's own `SocketcanBus` for everything else: its `recv` (a
  `select`, a `recvmsg` and a `Message` per frame) for the baseline, its
  `socket` for the agent's `SocketReader`.

What it does not keep: error frames, CAN FD, the interface going down, and
the CAN driver's own work in the kernel (here the loopback's).

`install()` makes it python-can's "socketcan" interface in this process
(in the agent's, after `carledger._imports`, so that python-can is still
imported by its parts); a channel is "standin:PORT", the UDP port on
127.0.0.1. `Sender` and `SenderBus` are the feeder's side. Bench only: nothing in the agent
knows of it.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
from typing import Any

import can.interfaces
from can.bus import BusABC, CanProtocol
from can.interfaces.socketcan import constants
from can.interfaces.socketcan.socketcan import SocketcanBus

CAN_FRAME = struct.Struct("=IB3x8s")  # struct can_frame: can_id (host order), len, pad, data
HOST = "127.0.0.1"

SO_ATTACH_REUSEPORT_CBPF = 51
_LD_W_ABS, _AND_K, _JEQ_K, _RET_K = 0x20, 0x54, 0x15, 0x06  # classic BPF opcodes
_INSTRUCTION = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_PROGRAM = struct.Struct("@HP")  # struct sock_fprog: len, (padding,) filter pointer
READER, ELSEWHERE = 0, 1  # the port's sockets in the order they were bound: the reader's, the one nobody reads


def channel_port(channel: str) -> int:
    """The UDP port of a stand-in channel "standin:PORT"."""
    name, _, port = str(channel).partition(":")
    if name != "standin" or not port.isdigit():
        raise ValueError(f"a stand-in channel is 'standin:PORT', not {channel!r}")
    return int(port)


def _network_order(value: int) -> int:
    """A host-order can_id as BPF's big-endian word load reads it."""
    return int.from_bytes(struct.pack("=I", value), "big")


def filter_program(filters: list[dict[str, Any]] | None) -> bytes:
    """Classic BPF (the port's socket for a datagram): the reader's when one of python-can's filters takes its can_id,
    as CAN_RAW_FILTER would, or when there are no filters."""
    if not filters:
        return _INSTRUCTION.pack(_RET_K, 0, 0, READER)
    code = []
    for f in filters:
        can_id, mask = f["can_id"], f["can_mask"]
        if "extended" in f:  # python-can's pack_filters: the filter names the frame format too
            mask |= constants.CAN_EFF_FLAG
            if f["extended"]:
                can_id |= constants.CAN_EFF_FLAG
        code += [(_LD_W_ABS, 0, 0, 0), (_AND_K, 0, 0, _network_order(mask)),
                 (_JEQ_K, 0, 1, _network_order(can_id & mask)), (_RET_K, 0, 0, READER)]
    code.append((_RET_K, 0, 0, ELSEWHERE))
    return b"".join(_INSTRUCTION.pack(*i) for i in code)


class StandInBus(SocketcanBus):
    """python-can's SocketCAN bus on a loopback UDP socket (see the module's docstring)."""

    def __init__(self, channel: str, can_filters: Any = None, **kwargs: Any):
        self.socket, self._elsewhere = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        port = channel_port(channel)  # 0: any free one, the same for both
        for sock in (self.socket, self._elsewhere):  # bound in this order: READER, ELSEWHERE
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((HOST, port))
            port = sock.getsockname()[1]
        self._elsewhere.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)  # the kernel's least: it drops the rest
        self.socket.setsockopt(socket.SOL_SOCKET, constants.SO_TIMESTAMPNS, 1)
        self.channel = channel
        self.channel_info = f"SocketCAN stand-in on udp {HOST}:{port}"
        self._bcm_sockets: dict[str, socket.socket] = {}
        self._is_filtered = False
        self._task_id = 0
        self._task_id_guard = threading.Lock()
        self._can_protocol = CanProtocol.CAN_20
        self._program: Any = None  # the BPF instructions the kernel points at while attached
        BusABC.__init__(self, channel=channel, can_filters=can_filters, **kwargs)

    def _apply_filters(self, filters: Any) -> None:
        program = ctypes.create_string_buffer(filter_program(list(filters) if filters else None))
        count = len(program.raw) // _INSTRUCTION.size  # create_string_buffer adds a NUL: floor division drops it
        self.socket.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                               _PROGRAM.pack(count, ctypes.addressof(program)))
        self._program = program
        self._is_filtered = bool(filters)

    def shutdown(self) -> None:
        super().shutdown()
        self._elsewhere.close()


def install() -> None:
    """Make the stand-in python-can's "socketcan" interface in this process (for the agent and the baseline)."""
    can.interfaces.BACKENDS["socketcan"] = (__name__, "StandInBus")  # the agent's table (carledger._imports) too


class Sender:
    """The feeder's side: frames onto stand-in channels, one datagram each."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._pack = CAN_FRAME.pack

    def send(self, port: int, can_id: int, data: bytes) -> None:
        """`can_id` with the EFF flag for an extended identifier, as in `struct can_frame`."""
        self._socket.sendto(self._pack(can_id, len(data), data), (HOST, port))

    def close(self) -> None:
        self._socket.close()


class SenderBus:
    """The feeder's side of one stand-in channel, as a python-can bus is to its sender: `send(msg)`, `shutdown()`."""

    def __init__(self, channel: str) -> None:
        self._port = channel_port(channel)
        self._sender = Sender()

    def send(self, msg: can.Message) -> None:
        can_id = msg.arbitration_id | constants.CAN_EFF_FLAG if msg.is_extended_id else msg.arbitration_id
        self._sender.send(self._port, can_id, bytes(msg.data))

    def shutdown(self) -> None:
        self._sender.close()
