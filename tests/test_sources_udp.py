"""python-can's udp_multicast bus read directly (carledger.sources.udpmulticast): what python-can reads, field for field.

Two buses join the same group: one is read through python-can's own `recv`
(the reference, as `BusSource` read every python-can bus before), the other
by `DatagramReader`; both see the same datagrams with the same kernel times.
"""

from __future__ import annotations

import random
import threading
import time

import can
import pytest

pytest.importorskip("msgpack")

from carledger.sources import BusSource, FrameFilter  # noqa: E402
from carledger.sources.canerror import CAN_ERR_FLAG  # noqa: E402
from carledger.sources.frame import EFF_FLAG  # noqa: E402
from carledger.sources.udpmulticast import DatagramReader, reader_for  # noqa: E402
from conftest import wait_until  # noqa: E402


@pytest.fixture
def channel():
    """A multicast group and port of its own (tests run in parallel, benches too)."""
    rng = random.Random()
    return f"239.74.{rng.randrange(100, 250)}.{rng.randrange(1, 250)}", rng.randrange(44000, 60000)


@pytest.fixture(params=["recvmmsg", "recvmsg"])
def system_call(request, monkeypatch):
    """Both ways of taking datagrams: many per system call (ctypes), and one per call where there is no recvmmsg."""
    if request.param == "recvmsg":
        from carledger.sources import receive

        monkeypatch.setattr(receive._Many, "on", classmethod(lambda cls, receiver: None))
    return request.param


def _bus(channel, **kwargs) -> can.BusABC:
    group, port = channel
    return can.Bus(interface="udp_multicast", channel=group, port=port, **kwargs)


def _reference(bus: can.BusABC, count: int) -> tuple[list, list]:
    """What BusSource made of a python-can bus's messages: frames, and error frames (time, id | ERR, payload)."""
    frames, errors = [], []
    while len(frames) + len(errors) < count:
        msg = bus.recv(2.0)
        assert msg is not None, "python-can's bus stopped receiving"
        if msg.is_error_frame:
            errors.append((msg.timestamp, msg.arbitration_id | CAN_ERR_FLAG, bytes(msg.data)))
        elif not msg.is_remote_frame:
            key = msg.arbitration_id | EFF_FLAG if msg.is_extended_id else msg.arbitration_id
            frames.append((msg.timestamp, key, bytes(msg.data)))
        else:
            count -= 1  # a remote frame: taken by the filter, never a frame for the agent
    return frames, errors


def _direct(reader: DatagramReader, count: int) -> tuple[list, list]:
    frames: list = []
    errors: list = []
    wait_until(lambda: frames.extend(reader.read(0.05, 4, lambda *e: errors.append(e))) or len(frames) + len(errors) >= count)
    return frames, errors


MESSAGES = [
    can.Message(arbitration_id=0x123, is_extended_id=False, data=bytes([1, 2, 3])),
    can.Message(arbitration_id=0x18FEF100, is_extended_id=True, data=bytes(range(8))),
    can.Message(arbitration_id=0x124, is_extended_id=False, data=b""),
    can.Message(arbitration_id=0x123, is_extended_id=False, is_remote_frame=True, dlc=4),
    can.Message(arbitration_id=0x4, is_extended_id=False, is_error_frame=True, dlc=8, data=bytes([0, 0, 8, 0, 0, 0, 0, 0])),
    can.Message(arbitration_id=0x125, is_extended_id=False, is_fd=True, bitrate_switch=True, data=bytes(range(12))),
    can.Message(arbitration_id=0x7FF, is_extended_id=False, data=b"\xff" * 8, channel="vcan3"),
    can.Message(arbitration_id=0x123, is_extended_id=True, data=b"\x01"),  # 0x123 as a 29-bit identifier
]

FILTERS = {
    "none": None,
    "exact": [{"can_id": 0x123, "can_mask": 0x7FF, "extended": False},
              {"can_id": 0x18FEF100, "can_mask": 0x1FFFFFFF, "extended": True}],
    "masked": [{"can_id": 0x120, "can_mask": 0x7F0, "extended": False}, {"can_id": 0x4, "can_mask": 0x7FF}],
    "no extended key": [{"can_id": 0x123, "can_mask": 0x7FF}, {"can_id": 0x7FF, "can_mask": 0x7FF}],
}


def _in_receive_order(times: list[float]) -> bool:
    """Sorted, but for a first run of datagrams stamped when they were read, each later than all after it.

    Linux turns its receive time stamps on in a work queue (net_enable_timestamp) once the first socket
    asks for them, and stamps a datagram queued before that when it is read (__sock_recv_timestamp). So
    when no other socket on the machine had them on, the first datagrams carry the time of the read:
    seen in a clean-clone CI run, 2.4 ms after the arrival stamps of the datagrams behind them.
    """
    first = 0
    while times[first:] != sorted(times[first:]):
        first += 1
    read, arrived = times[:first], times[first:]
    return read == sorted(read) and all(t >= max(arrived, default=0.0) for t in read)


@pytest.mark.parametrize("fd", [True, False])
@pytest.mark.parametrize("filters", list(FILTERS))
def test_reads_what_python_can_reads(channel, filters, fd, system_call):
    reference = _bus(channel, can_filters=FILTERS[filters], fd=fd)
    direct = _bus(channel, can_filters=FILTERS[filters], fd=fd)
    sender = _bus(channel)
    try:
        reader = reader_for(direct, 1 << 20)
        assert reader is not None and reader._receiver.batched == (system_call == "recvmmsg")
        sent_after = time.time()
        for msg in MESSAGES * 5:  # each sent with timestamp 0.0: the time read must be the kernel's
            sender.send(msg)
        expected = [m for m in MESSAGES * 5 if (fd or not m.is_fd) and reference._matches_filters(m)]
        frames, errors = _reference(reference, len(expected))
        got = _direct(reader, len(frames) + len(errors))
        read_before = time.time()
        # Each socket has its own kernel receive time (under load, gVisor's differ by milliseconds between
        # two sockets): what python-can reads of one socket is compared without time, and the times are
        # this socket's receive times, in order.
        assert [f[1:] for f in got[0]] == [f[1:] for f in frames]
        assert [e[1:] for e in got[1]] == [e[1:] for e in errors]
        times = [f[0] for f in got[0]]
        assert _in_receive_order(times) and all(sent_after <= t <= read_before for t in times)
        assert all(sent_after <= e[0] <= read_before for e in got[1])
        assert [key for _, key, _ in frames]  # each case reads something ...
        if filters != "none":
            assert len(frames) + len(errors) < len(MESSAGES) * 5  # ... and the filtered ones leave something out
    finally:
        for bus in (reference, direct, sender):
            bus.shutdown()


def test_a_filter_set_on_the_bus_applies_from_the_next_read(channel):
    direct = _bus(channel)
    sender = _bus(channel)
    try:
        reader = reader_for(direct, 0)
        sender.send(can.Message(arbitration_id=0x10, is_extended_id=False, data=b"\x01"))
        assert [k for _, k, _ in _direct(reader, 1)[0]] == [0x10]
        direct.set_filters([{"can_id": 0x20, "can_mask": 0x7FF, "extended": False}])
        for key, data in ((0x10, b"\x02"), (0x20, b"\x03"), (0x10, b"\x04"), (0x20, b"\x05")):
            sender.send(can.Message(arbitration_id=key, is_extended_id=False, data=data))
        assert [(k, d) for _, k, d in _direct(reader, 2)[0]] == [(0x20, b"\x03"), (0x20, b"\x05")]
    finally:
        direct.shutdown()
        sender.shutdown()


def test_an_unreadable_datagram_fails_as_python_can_fails_after_the_frames_before_it(channel, system_call):
    reference = _bus(channel)
    direct = _bus(channel)
    sender = _bus(channel)
    try:
        reader = reader_for(direct, 0)
        sender.send(can.Message(arbitration_id=0x10, is_extended_id=False, data=b"\x01"))
        sender._multicast.send(b"\x93\x01\x02")  # msgpack, but not a message
        sender.send(can.Message(arbitration_id=0x11, is_extended_id=False, data=b"\x02"))
        assert reference.recv(2.0).arbitration_id == 0x10
        with pytest.raises(can.CanOperationError) as theirs:
            reference.recv(2.0)
        assert reference.recv(2.0).arbitration_id == 0x11  # python-can carries on after it

        read: list = []
        failures: list = []

        def until_failed() -> bool:
            try:
                read.extend(reader.read(0.05, 100, lambda *e: None))
            except can.CanOperationError as exc:
                failures.append(exc)
            return bool(failures)

        wait_until(until_failed)
        assert [k for _, k, _ in read] == [0x10]  # the frame before it is handed on first
        assert str(failures[0]) == str(theirs.value)
        assert type(failures[0].__cause__) is type(theirs.value.__cause__)
        assert [k for _, k, _ in _direct(reader, 1)[0]] == [0x11]  # and the reader carries on too
    finally:
        for bus in (reference, direct, sender):
            bus.shutdown()


def test_bus_source_reads_udp_multicast_directly_and_applies_its_filter(channel):
    group, port = channel
    source = BusSource("udp", FrameFilter.of([(0x10, 0x7FF, False)]), interface="udp_multicast", channel=group,
                       options={"port": port}, wakeup_interval=0.05)
    stop = threading.Event()
    frames: list = []
    used: list = []
    connect = source._connect

    def spy():
        bus, reader = connect()
        used.append(reader)
        return bus, reader

    source._connect = spy

    def read() -> None:
        for batch in source.batches(stop):
            frames.extend(batch)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    sender = _bus(channel)
    try:
        wait_until(source.opened.is_set)
        assert isinstance(used[0], DatagramReader)
        assert source.receive_buffer_granted > 0
        for key in (0x10, 0x20, 0x10):
            sender.send(can.Message(arbitration_id=key, is_extended_id=False, data=bytes([key])))
        wait_until(lambda: len(frames) >= 2)
        source.set_filter(FrameFilter.of([(0x20, 0x7FF, False)]))
        marker = 0

        def switched() -> bool:  # the filter applies within a wake-up: send until frames of 0x20 arrive
            nonlocal marker
            marker += 1
            sender.send(can.Message(arbitration_id=0x20, is_extended_id=False, data=bytes([marker % 256])))
            return any(key == 0x20 for _, key, _ in frames)

        wait_until(switched)
        sender.send(can.Message(arbitration_id=0x10, is_extended_id=False, data=b"\xee"))
        sender.send(can.Message(arbitration_id=0x20, is_extended_id=False, data=b"\xff"))
        wait_until(lambda: frames[-1][2] == b"\xff")
        keys = [key for _, key, _ in frames]
        first20 = keys.index(0x20)
        assert keys[:first20] == [0x10, 0x10] and set(keys[first20:]) == {0x20}
        assert source.dropped == 0 and source.frames_read == len(frames)
    finally:
        stop.set()
        thread.join(5)
        sender.shutdown()


def test_a_single_socket_bus_is_read_by_the_pipeline_thread_whose_rounds_go_on_while_it_is_silent(tmp_path, channel):
    """One bus read from a socket: no reader thread, every frame recorded, and owner requests answered in silence."""
    from carledger.config import load_config
    from carledger.dbc import path as dbc_path
    from carledger.owner import Spool
    from carledger.pipeline import Pipeline
    from carledger_sim.car import SimulatedCar
    from test_pipeline_sim import START, run_in_thread, write_config

    group, port = channel
    config = write_config(tmp_path, f"""
        [[bus]]
        name = "udp"
        interface = "udp_multicast"
        channel = "{group}"
        options = {{ port = {port} }}
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
        """, """
        [[stream]]
        name = "driving"
        signals = ["Vehicle.Speed"]
        """)
    pipeline = Pipeline(load_config(config))
    source = pipeline.sources[0]
    thread = run_in_thread(pipeline)
    sender = _bus(channel)
    try:
        wait_until(source.opened.is_set)
        assert [t.name for t in threading.enumerate() if t.name.startswith("source-")] == []
        assert source.idle_ticks
        car = SimulatedCar("city", seed=4, duration=2.0, start_time=START)
        messages = list(car.frames())
        for msg in messages:
            sender.send(msg)
        wanted = sum(1 for m in messages if source.frame_filter.matches(m.arbitration_id | (EFF_FLAG if m.is_extended_id else 0)))
        assert 0 < wanted < len(messages)
        wait_until(lambda: pipeline.buses[0].stats.frames == wanted)  # every frame the policy needs, and only those
        wait_until(lambda: pipeline.summary.records > 0)

        spool = Spool(tmp_path / "ledger")  # the bus is silent now: the pipeline's rounds still take requests
        answer = spool.wait(spool.put({"action": "pause"}), 30)
        assert answer is not None and answer["ok"] and answer["changed"]
    finally:
        pipeline.stop()
        thread.join(30)
        sender.shutdown()
    assert not thread.is_alive()
    assert source.frames_read == wanted


def test_a_full_receive_buffer_is_counted_and_the_frames_after_it_keep_their_kernel_time(channel, system_call):
    """Once the kernel drops, each datagram carries the drop counter beside its time: both are read."""
    direct = _bus(channel)
    sender = _bus(channel)
    try:
        reader = reader_for(direct, 1)  # the kernel's smallest receive buffer: a few datagrams
        assert reader is not None
        sent_after = time.time()
        for i in range(400):
            sender.send(can.Message(arbitration_id=0x100 + i % 8, is_extended_id=False, data=bytes([i % 256])))
        drained: list = []
        wait_until(lambda: drained.extend(reader.read(0.05, 4096, lambda *e: None)) or len(drained) > 0)
        while reader.read(0, 4096, lambda *e: None):  # what the buffer held, queued before the drops
            pass
        assert reader.dropped == 0  # the kernel says it with the next datagram queued
        frames: list = []
        for i in range(3):  # queued after the drops (one at a time: the buffer holds two): each carries the counter
            sender.send(can.Message(arbitration_id=0x200 + i, is_extended_id=False, data=b"\x01"))
            wait_until(lambda: frames.extend(reader.read(0.05, 4096, lambda *e: None)) or len(frames) > i)
        read_before = time.time()
        assert [k for _, k, _ in frames] == [0x200, 0x201, 0x202]
        assert all(sent_after <= t <= read_before for t, _, _ in frames)
        assert 0 < reader.dropped < 400
    finally:
        for bus in (direct, sender):
            bus.shutdown()
