"""The real-time bench's SocketCAN stand-in (bench/socketcan_standin.py) filters as python-can's filters say.

The bench's figures are only the car's if the agent sees what a CAN_RAW
socket with the same filters would give it: every frame a filter takes,
none other, and no filtered frame counted as a drop (which the agent would
report as frames lost).
"""

from __future__ import annotations

import sys
from pathlib import Path

import can
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import socketcan_standin  # noqa: E402  (bench code, not a package)

from carledger.sources.frame import EFF_FLAG  # noqa: E402
from carledger.sources.socketcan import SocketReader  # noqa: E402

IDS = [0x000, 0x025, 0x0B4, 0x0B5, 0x2C4, 0x7FF, 0x0B4 | EFF_FLAG, 0x18FEF100 | EFF_FLAG, 0x18FEF1FF | EFF_FLAG,
       0x025 | EFF_FLAG]

FILTERS = {
    "none": None,
    "one standard id": [{"can_id": 0x0B4, "can_mask": 0x7FF, "extended": False}],
    "a standard mask": [{"can_id": 0x0B4, "can_mask": 0x7FE, "extended": False}],
    "no frame format": [{"can_id": 0x025, "can_mask": 0x7FF}],
    "extended, masked": [{"can_id": 0x18FEF100, "can_mask": 0x1FFFFF00, "extended": True}],
    "several": [{"can_id": 0x2C4, "can_mask": 0x7FF, "extended": False},
                {"can_id": 0x18FEF1FF, "can_mask": 0x1FFFFFFF, "extended": True},
                {"can_id": 0x000, "can_mask": 0x7FF, "extended": False}],
}


@pytest.fixture
def standin_bus():
    socketcan_standin.install()
    buses = []

    def open_bus(filters):
        bus = can.Bus(interface="socketcan", channel="standin:0", can_filters=filters)
        buses.append(bus)
        return bus

    yield open_bus
    for bus in buses:
        bus.shutdown()


def _message(key: int) -> can.Message:
    return can.Message(arbitration_id=key & 0x1FFFFFFF, is_extended_id=bool(key & EFF_FLAG), data=b"\x01")


@pytest.mark.parametrize("name", FILTERS)
def test_the_kernel_keeps_exactly_what_python_can_s_filters_take(standin_bus, name):
    bus = standin_bus(FILTERS[name])
    port = bus.socket.getsockname()[1]
    sender = socketcan_standin.Sender()
    for key in IDS:  # loopback UDP: each datagram is queued or filtered before sendto returns
        sender.send(port, key, b"\x01")
    sender.close()
    received = []
    while (msg := bus.recv(0)) is not None:
        received.append((msg.arbitration_id, msg.is_extended_id))
    wanted = [(m.arbitration_id, m.is_extended_id) for m in map(_message, IDS) if bus._matches_filters(m)]
    assert received == wanted
    assert bus._is_filtered == bool(FILTERS[name])  # python-can leaves the filtering to the kernel
    if name == "several":
        assert received == [(0x000, False), (0x2C4, False), (0x18FEF1FF, True)]


def test_the_agent_s_reader_gets_the_filtered_frames_with_the_kernel_s_time_and_no_drops(standin_bus):
    bus = standin_bus([{"can_id": 0x0B4, "can_mask": 0x7FF, "extended": False}])
    reader = SocketReader(bus.socket)
    port = bus.socket.getsockname()[1]
    sender = socketcan_standin.Sender()
    for i in range(3000):  # far more than the receive buffer of the socket nobody reads
        sender.send(port, 0x025, bytes(8))
    sender.send(port, 0x0B4, b"\x11\x22")
    sender.close()
    frames = reader.read(0, 100, lambda *error: pytest.fail(f"no error frames here: {error}"))
    assert [(key, data) for _, key, data in frames] == [(0x0B4, b"\x11\x22")]
    assert frames[0][0] > 1.7e9  # the kernel's receive time, not a missing stamp's 0
    assert reader.dropped == 0  # 3,000 frames filtered, none dropped


def test_a_channel_that_is_no_stand_in_is_refused():
    with pytest.raises(ValueError, match="standin:PORT"):
        socketcan_standin.channel_port("can0")
