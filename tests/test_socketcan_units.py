"""SocketCAN details that need no CAN in the kernel: error-frame decoding and rate limiting, raw frame parsing.

The raw socket reader is exercised on a loopback UDP socket carrying SocketCAN
frame structs: the same recvmsg, timestamp and drop-count ancillary data.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from carledger.sources.canerror import CAN_ERR_FLAG, ErrorFrameLog, decode_error_frame, error_state
from carledger.sources.receive import SO_TIMESTAMPING, TIMESPEC, TIMESPECS
from carledger.sources.socketcan import SocketReader

CLASSIC = struct.Struct("=IB3x8s")
FD = struct.Struct("=IBB2x64s")


def test_error_frames_are_decoded_as_linux_can_error_h_says():
    controller = decode_error_frame(CAN_ERR_FLAG | 0x004, bytes([0, 0x10, 0, 0, 0, 0, 0, 0]))
    assert controller["classes"] == ["controller"] and controller["controller"] == ["rx-passive"]
    assert controller["state"] == "error-passive"
    protocol = decode_error_frame(CAN_ERR_FLAG | 0x088 | 0x200, bytes([0, 0, 0x06, 0x0A, 0, 0, 97, 128]))
    assert protocol["classes"] == ["protocol", "bus-error", "error-counters"]
    assert protocol["protocol"] == ["form", "stuff"] and protocol["location"] == 0x0A
    assert (protocol["tx_errors"], protocol["rx_errors"]) == (97, 128) and "state" not in protocol
    assert error_state(0x040, bytes(8)) == "bus-off"
    assert error_state(0x100, bytes(8)) == "error-active"  # restarted after bus-off
    assert decode_error_frame(CAN_ERR_FLAG, b"")["classes"] == ["unspecified"]  # short and empty payloads are fine


def test_a_flood_of_error_frames_is_summarised_and_state_changes_come_at_once():
    log = ErrorFrameLog(interval=1.0)
    warning = (CAN_ERR_FLAG | 0x004, bytes([0, 0x04, 0, 0, 0, 0, 0, 0]))
    stuff = (CAN_ERR_FLAG | 0x088, bytes([0, 0, 0x04, 0, 0, 0, 0, 0]))
    first = log.add(10.0, *warning)
    assert [e["state"] for e in first] == ["error-warning"] and first[0]["count"] == 1
    assert all(log.add(10.0 + i / 1000, *stuff) == [] for i in range(500))  # held back
    assert log.flush(10.5) is None  # the interval is not over
    summary = log.flush(11.0)
    assert summary["count"] == 500 and summary["classes"] == ["protocol", "bus-error"] and summary["protocol"] == ["stuff"]
    assert log.flush(12.5) is None  # nothing more: the window closes
    log.add(13.0, *stuff)
    log.add(13.1, *stuff)
    events = log.add(13.2, CAN_ERR_FLAG | 0x040, bytes(8))  # bus-off: the held frame first, then the change
    assert [e["count"] for e in events] == [1, 1] and events[1]["state"] == "bus-off"
    assert log.total == 504 and log.state == "bus-off"


@pytest.fixture(params=["recvmmsg", "recvmsg"])
def system_call(request, monkeypatch):
    """Both ways of taking frames: many per system call (ctypes), and one per call where there is no recvmmsg."""
    if request.param == "recvmsg":
        from carledger.sources import receive

        monkeypatch.setattr(receive._Many, "on", classmethod(lambda cls, receiver: None))
    return request.param


def udp_pair():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    return rx, tx


def test_raw_frames_are_parsed_into_tuples_with_kernel_times(system_call):
    rx, tx = udp_pair()
    with rx, tx:
        reader = SocketReader(rx, receive_buffer=1 << 20)
        assert reader._receiver.batched == (system_call == "recvmmsg")
        before = time.time()
        tx.send(CLASSIC.pack(0x0B4, 3, b"\x01\x02\x03"))
        tx.send(CLASSIC.pack(0x80000000 | 0x18FEF100, 8, bytes(range(8))))  # 29-bit
        tx.send(CLASSIC.pack(0x40000000 | 0x123, 0, b""))  # remote frame: skipped
        tx.send(CLASSIC.pack(CAN_ERR_FLAG | 0x040, 8, bytes(8)))  # error frame: handed to the sink
        tx.send(FD.pack(0x600, 64, 0x01, bytes([7]) + bytes(62) + bytes([42])))
        errors = []
        frames = reader.read(5.0, 100, lambda t, can_id, data: errors.append((can_id, data)))
        after = time.time()
    assert [(k, d) for _, k, d in frames] == [
        (0x0B4, b"\x01\x02\x03"), (0x80000000 | 0x18FEF100, bytes(range(8))), (0x600, bytes([7]) + bytes(62) + bytes([42])),
    ]
    assert errors == [(CAN_ERR_FLAG | 0x040, bytes(8))]
    assert all(before <= t <= after for t, _, _ in frames)  # the kernel's receive time (no hardware clock here)
    assert reader.hardware_timestamps == 0
    assert reader.receive_buffer >= 1 << 20


def test_a_busy_socket_is_read_without_select_and_an_idle_one_waits_for_its_frame(system_call, monkeypatch):
    """On its wake-up grid a reader of a busy bus finds frames queued: it takes them at once (no `select`,
    which cost more CPU than it told, cold); only an empty socket is waited on, up to the timeout."""
    import select as select_module
    import threading

    rx, tx = udp_pair()
    with rx, tx:
        reader = SocketReader(rx, receive_buffer=1 << 20)
        waits = []
        real_select = select_module.select

        def select(*args):
            waits.append(args[3])
            return real_select(*args)

        monkeypatch.setattr(select_module, "select", select)
        tx.send(CLASSIC.pack(0x0B4, 1, b"\x01"))
        deadline = time.monotonic() + 5
        while not real_select([rx], [], [], 0)[0] and time.monotonic() < deadline:  # on the queue
            real_select([rx], [], [], 0.01)
        assert [k for _, k, _ in reader.read(5.0, 100, lambda *a: None)] == [0x0B4] and waits == []
        assert reader.read(0.01, 100, lambda *a: None) == [] and waits == [0.01]  # idle: waited, nothing came
        sender = threading.Timer(0.05, tx.send, (CLASSIC.pack(0x0B5, 1, b"\x02"),))
        sender.start()
        try:
            assert [k for _, k, _ in reader.read(5.0, 100, lambda *a: None)] == [0x0B5]  # came during the wait
        finally:
            sender.join()
        assert waits == [0.01, 5.0]


class _Queued:
    """Stands in for the kernel's queue: (frame, stamp values) as `QueuedReceiver.collect` gives them."""

    stamp = SO_TIMESTAMPING

    def __init__(self, received):
        self.received = received

    def collect(self, timeout, limit):
        return self.received


def test_hardware_timestamps_are_preferred_where_the_interface_gives_them():
    rx, tx = udp_pair()
    with rx, tx:
        reader = SocketReader(rx, receive_buffer=0)
    frame = CLASSIC.pack(0x0B4, 1, b"\x01")
    reader._receiver = _Queued([
        (frame, (100, 500_000_000, 0, 0, 0, 0)),  # software only
        (frame, (100, 500_000_000, 0, 0, 99, 250_000_000)),  # the interface's clock
        (frame, (0, 0, 0, 0, 0, 0)),  # no stamp filled in yet (the kernel switches stamping on lazily)
        (frame, None),  # no stamp sent at all
    ])
    before = time.time()
    times = [t for t, _, _ in reader.read(0, 100, lambda *a: None)]
    assert times[:2] == [100.5, 99.25] and reader.hardware_timestamps == 1
    assert all(before <= t <= time.time() for t in times[2:])  # the wall clock


def test_the_kernel_stamp_structs_are_its_c_longs():
    """SO_TIMESTAMP(NS|ING) (the old constants the agent asks for) carry C longs: 32-bit on a 32-bit Raspberry Pi OS."""
    long = struct.calcsize("@l")
    assert TIMESPEC.size == 2 * long and TIMESPECS.size == 6 * long


def test_a_read_takes_at_most_max_frames_and_the_next_read_the_rest_in_order(system_call):
    rx, tx = udp_pair()
    with rx, tx:
        reader = SocketReader(rx, receive_buffer=1 << 20)
        for i in range(100):  # more than one recvmmsg takes (32)
            tx.send(CLASSIC.pack(0x100 + i, 1, bytes([i])))
        first = reader.read(5.0, 70, lambda *a: None)
        rest: list = []
        while len(rest) < 30:
            rest.extend(reader.read(5.0, 1000, lambda *a: None))
    assert len(first) == 70
    assert [k for _, k, _ in first + rest] == [0x100 + i for i in range(100)]
    assert [d for _, _, d in first + rest] == [bytes([i]) for i in range(100)]
    times = [t for t, _, _ in first + rest]
    assert times == sorted(times)


def test_frames_dropped_by_the_kernel_are_counted(system_call):
    rx, tx = udp_pair()
    with rx, tx:
        reader = SocketReader(rx, receive_buffer=0)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # room for a few datagrams only
        for i in range(200):
            tx.send(CLASSIC.pack(0x100, 8, i.to_bytes(8, "little")))
        held = reader.read(1.0, 1000, lambda *a: None)
        tx.send(CLASSIC.pack(0x100, 8, b"last\0\0\0\0"))  # the drop count comes with the next datagram queued
        last = reader.read(1.0, 1000, lambda *a: None)
    assert len(last) == 1
    assert len(held) + reader.dropped == 200 and reader.dropped > 0
