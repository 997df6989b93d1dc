"""Batching by time: a busy agent wakes a bounded number of times a second, and loses or moves nothing.

Each test counts wake-ups (batches, pipeline rounds) over a feed at a fixed
pace and bounds them by the run's length / the wake-up interval; none times
anything. The feeders send at a pace because a pace is what is under test.
"""

from __future__ import annotations

import threading
import time
import uuid

import can

from carledger.config import load_config
from carledger.pipeline import Pipeline
from carledger.sources import BusSource, LogSource
from carledger.sources.base import WAKEUP_INTERVAL, Pacer, pipeline_phase, reader_phase
from carledger.sources.socketcan import RECEIVE_BUFFER, receive_buffer_for
from carledger_sim.car import SimulatedCar
from conftest import wait_until
from test_pipeline_sim import START, run_in_thread, write_config

INTERVAL = 0.05


def write_log(path, frames: int, rate: float, t0: float = 100.0) -> list[tuple[float, int, bytes]]:
    """A candump log of `frames` frames at `rate` a second; returns them as the agent's tuples."""
    out = [(round(t0 + i / rate, 6), 0x100 + i % 7, bytes([i % 256, 1, 2])) for i in range(frames)]
    path.write_text("".join(f"({t:.6f}) can0 {key:03X}#{data.hex().upper()}\n" for t, key, data in out))
    return out


def bound(seconds: float, interval: float = INTERVAL) -> int:
    """Most wake-ups a reader on the grid can have in `seconds`: one per grid point, plus the first read."""
    return int(seconds / interval) + 2


def test_pacer_wakes_on_a_grid_shared_by_every_thread():
    pacer = Pacer(0.05)
    assert pacer.at_or_after(10.01) == 10.05
    assert abs(pacer.at_or_after(10.05) - 10.05) < 1e-9
    later = Pacer(0.05, phase=0.01)
    assert abs(later.at_or_after(10.05) - 10.06) < 1e-9
    # readers take turns, the pipeline comes after the last of them, all within the interval
    phases = [reader_phase(i, 0.05) for i in range(4)]
    assert phases == sorted(set(phases)) and phases[0] == 0.0
    assert phases[-1] < pipeline_phase(4, 0.05) < 0.05


def test_replay_at_recorded_speed_hands_frames_on_once_per_interval(tmp_path):
    log = tmp_path / "feed.log"
    expected = write_log(log, 2000, rate=2000.0)  # one second of log, a frame every 0.5 ms
    source = LogSource("feed", str(log), None, speed=4.0, wakeup_interval=INTERVAL)
    batches, handed = [], []
    start = time.monotonic()
    for batch in source.batches(threading.Event()):
        batches.append(batch)
        handed.extend((time.monotonic() - start, frame) for frame in batch)
    elapsed = time.monotonic() - start
    assert [frame for _, frame in handed] == expected  # none lost, none reordered, times as recorded
    assert len(batches) <= bound(elapsed)  # a wake-up per frame (the old 5 ms pacing) would be ~50
    first = expected[0][0]
    for wall, (t, _, _) in handed:
        assert wall >= (t - first) / 4.0 - 0.002  # never before its time


def test_a_python_can_bus_is_read_once_per_interval_and_loses_nothing():
    channel = f"carledger-wake-{uuid.uuid4().hex[:8]}"
    source = BusSource("live", None, interface="virtual", channel=channel, wakeup_interval=INTERVAL)
    stop = threading.Event()
    batches: list[list] = []

    def read() -> None:
        for batch in source.batches(stop):
            batches.append(batch)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(source.opened.is_set)
    sender = can.Bus(interface="virtual", channel=channel)
    car = SimulatedCar("city", seed=2, duration=4.0, start_time=START)
    start = time.monotonic()
    sent = car.run(sender, realtime_factor=4.0)  # four seconds of drive in one, in small bursts
    sender.shutdown()
    wait_until(lambda: sum(map(len, batches)) >= sent)
    elapsed = time.monotonic() - start
    stop.set()
    reader.join(5)
    assert sum(map(len, batches)) == sent
    assert len(batches) <= bound(elapsed), (len(batches), elapsed)


def test_the_pipeline_runs_its_per_round_work_once_per_interval_and_records_as_fast_replay(tmp_path):
    """A replay at recorded speed wakes the pipeline a bounded number of times and records what a fast one does."""
    log = tmp_path / "drive.log"
    car = SimulatedCar("city", seed=5, duration=6.0, start_time=START)
    with can.Logger(str(log)) as logger:
        for msg in car.frames():
            logger.on_message_received(msg)
    streams = """
        [[stream]]
        name = "driving"
        signals = ["Vehicle.Speed", "Vehicle.Acceleration.Longitudinal"]
        """
    records = {}
    for speed in (0, 3):
        run_dir = tmp_path / f"speed{speed}"
        run_dir.mkdir()
        from carledger.dbc import path as dbc_path

        config = write_config(run_dir, f"""
            [[bus]]
            name = "recorded"
            replay = "{log}"
            speed = {speed}
            dbc = ["{dbc_path('carledger_demo.dbc')}"]
            """, streams)
        text = config.read_text().replace("[agent]\n", f"[agent]\nwakeup_interval = {INTERVAL}\n", 1)
        config.write_text(text)
        pipeline = Pipeline(load_config(config))
        assert pipeline.config.wakeup_interval == INTERVAL
        start = time.monotonic()
        summary = pipeline.run()
        elapsed = time.monotonic() - start
        records[speed] = (summary.frames, dict(summary.streams))
        if speed:
            # one round per wake-up: rounds on the grid, and idle ticks (none here: the log never pauses)
            assert summary.rounds <= bound(elapsed) + 2, (summary.rounds, elapsed)
            assert summary.batches <= bound(elapsed), (summary.batches, elapsed)
    assert records[3] == records[0]  # same frames, same records, whether fast or paced


def test_the_receive_buffer_holds_four_full_buses_for_twice_the_interval():
    assert receive_buffer_for(WAKEUP_INTERVAL) >= 4 * 4500 * WAKEUP_INTERVAL * 2 * 766  # 766 B measured per frame
    assert receive_buffer_for(0.001) == RECEIVE_BUFFER  # never below the burst floor
    assert receive_buffer_for(0.2) > receive_buffer_for(0.05)
    source = BusSource("x", None, interface="virtual", channel="unused", wakeup_interval=0.2)
    assert source.receive_buffer == receive_buffer_for(0.2)


def test_a_python_can_bus_reading_a_socket_gets_the_receive_buffer_too(tmp_path):
    """udp_multicast and the like (`fileno()` a socket) hold frames between wake-ups as SocketCAN does."""
    import os
    import socket

    from carledger.sources.bus import _size_socket_of

    class Reads:  # what _size_socket_of uses of a python-can bus: fileno()
        def __init__(self, fd: int):
            self.fd = fd

        def fileno(self) -> int:
            return self.fd

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        granted = _size_socket_of(Reads(udp.fileno()), RECEIVE_BUFFER)
        assert granted == udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > 0  # the bus's own socket, sized
    with open(tmp_path / "tty", "w") as not_a_socket:
        open_before = len(os.listdir("/proc/self/fd"))
        assert _size_socket_of(Reads(not_a_socket.fileno()), RECEIVE_BUFFER) == 0
        assert len(os.listdir("/proc/self/fd")) == open_before  # the duplicate descriptor is closed
    assert _size_socket_of(Reads(-1), RECEIVE_BUFFER) == 0
