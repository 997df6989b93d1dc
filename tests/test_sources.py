"""Frame sources: the fast candump reader agrees with python-can; filters; malformed lines."""

from __future__ import annotations

import threading
from pathlib import Path

import can
import pytest

from carledger.sources import EFF_FLAG, FrameFilter, LogSource
from carledger.sources.candump import format_candump, read_candump

from conftest import shared_path
from mf4_file import write_mf4

SAMPLE = """\
(1.000000) can0 123#DEADBEEF
(1.000100) can0 1ABCDEF0#0102
(1.000200) can1 123#00
(1.000300) can0 7FF#R
(1.000400) can0 20000080#0000000000000000
(1.000500) can0 456##1112233445566778899AABBCC
garbage line here
(1.000600) can0 XYZ#00
(bad) can0 123#00
(1.000700) can0 123#0G
(1.000800) can0 124#01 R
(1.000900) can0 125#02 X
"""


def frames_of(text: str, flt=None, channels=(), malformed=None):
    return [f for batch in read_candump(text.splitlines(), flt, channels, malformed) for f in batch]


def test_reads_standard_extended_and_fd_frames():
    assert frames_of(SAMPLE) == [
        (1.0, 0x123, bytes.fromhex("DEADBEEF")),
        (1.0001, 0x1ABCDEF0 | EFF_FLAG, b"\x01\x02"),
        (1.0002, 0x123, b"\x00"),
        (1.0005, 0x456, bytes.fromhex("112233445566778899AABBCC")),  # '##' + flags nibble '1'
        (1.0008, 0x124, b"\x01"),  # python-can's writer adds the direction
    ]


def test_malformed_lines_are_reported_with_line_numbers_and_skipped():
    seen = []
    frames_of(SAMPLE, malformed=lambda n, line, reason: seen.append((n, reason)))
    assert [n for n, _ in seen] == [7, 8, 9, 10, 12]
    assert "bad identifier" in seen[1][1]


def test_a_line_without_a_hash_is_no_frame_and_does_not_spoil_its_identifier():
    """'123' alone is malformed; it must not make the next '123#..' line bad too, nor count as a frame of 0x123."""
    from carledger.sources.tally import FrameTally

    seen, tally = [], FrameTally()
    text = "(1.0) can0 123\n(1.1) can0 123#00\n(1.2) can0 #12\n"
    frames = [f for batch in read_candump(text.splitlines(), None, (), lambda n, line, why: seen.append(n), tally=tally)
              for f in batch]
    assert frames == [(1.1, 0x123, b"\x00")] and seen == [1, 3]
    assert tally.by_key == {0x123: 1} and tally.in_log == 2  # '#12' is a frame's line, with a bad identifier


def test_filter_and_channel_selection():
    flt = FrameFilter.of([(0x123, 0x7FF, False)])
    assert [f[1] for f in frames_of(SAMPLE, flt)] == [0x123, 0x123]
    assert [f[2] for f in frames_of(SAMPLE, flt, ["can1"])] == [b"\x00"]
    ext = FrameFilter.of([(0x1ABCDE00, 0x1FFFFF00, True)])
    assert [f[1] for f in frames_of(SAMPLE, ext)] == [0x1ABCDEF0 | EFF_FLAG]
    assert frames_of(SAMPLE, FrameFilter.of([])) == []


def test_format_is_the_inverse_of_read():
    frames = [(12.5, 0x0B4, b"\x01\x02"), (13.000001, 0x18FEF100 | EFF_FLAG, bytes(8))]
    text = "\n".join(format_candump(t, "can0", k, d) for t, k, d in frames)
    assert frames_of(text) == frames


def test_agrees_with_python_can_on_the_real_rav4_log():
    path = shared_path("logs", "comma2k19_rav4_2017", "comma2k19_rav4_2017_seg40_bus0.log")
    ours = frames_of(path.read_text())
    theirs = [(m.timestamp, m.arbitration_id, bytes(m.data)) for m in can.LogReader(str(path))]
    assert len(ours) == len(theirs) == 53800
    assert ours == theirs


def test_log_source_reads_other_formats_through_python_can(tmp_path):
    path = shared_path("formats", "python-can", "logfile.asc")
    source = LogSource("asc", str(path), None, speed=0)
    frames = [f for b in source.batches(threading.Event()) for f in b]
    assert frames == _python_can_frames(path) and frames


def test_log_source_paces_at_recorded_speed(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"({t:.6f}) can0 123#{i:02X}\n" for i, t in enumerate([10.0, 10.1, 10.2, 10.3])))
    import time

    source = LogSource("x", str(log), None, speed=2.0)
    start = time.monotonic()
    arrivals = []
    for batch in source.batches(threading.Event()):
        arrivals.extend((time.monotonic() - start, f[0]) for f in batch)
    # frame n must not arrive before its recorded offset / speed
    for wall, t in arrivals:
        assert wall >= (t - 10.0) / 2.0 - 0.006
    assert len(arrivals) == 4


def test_a_long_pause_in_a_paced_replay_takes_max_pause_not_its_length(tmp_path, monkeypatch, caplog):
    """Three hours parked in the log replay as MAX_PAUSE (60 s, as python-can's player; 0.3 s here), times untouched.

    The replay slept through the whole pause before: a day's log replayed its hours of silence, and one
    damaged time far ahead held it asleep for good.
    """
    import logging
    import time

    from carledger.sources import replay

    monkeypatch.setattr(replay, "MAX_PAUSE", 0.3)
    times = [10.0, 10.1, 10.2, 10810.2, 10810.3, 10810.4]  # 3 h between the third and the fourth
    log = tmp_path / "parked.log"
    log.write_text("".join(f"({t:.6f}) can0 123#{i:02X}\n" for i, t in enumerate(times)))
    source = LogSource("x", str(log), None, speed=2.0, wakeup_interval=0.01)
    start = time.monotonic()
    arrivals = []
    with caplog.at_level(logging.INFO, logger="carledger.sources.replay"):
        for batch in source.batches(threading.Event()):
            arrivals.extend((time.monotonic() - start, f[0]) for f in batch)
    assert [t for _, t in arrivals] == times
    walls = [wall for wall, _ in arrivals]
    assert walls[3] - walls[2] >= 0.3 - 0.02  # the pause, cut to MAX_PAUSE of wall time
    assert walls[-1] < 5.0  # not 5,400 s (3 h at speed 2)
    assert walls[5] - walls[3] >= 0.1 - 0.02  # after the pause, the recorded pace again (0.2 s at speed 2)
    assert "a pause of 10800 s in the log, before the frame at 10810.200000, replayed as 0 s" in caplog.text


def _python_can_frames(path):
    """What python-can reads, with ASC times absolute (from the `date` header) as the replay keeps them."""
    if path.name.lower().endswith(".asc"):
        reader = can.ASCReader(str(path), relative_timestamp=False)
    else:
        reader = can.LogReader(str(path))
    return [
        (m.timestamp, m.arbitration_id | (EFF_FLAG if m.is_extended_id else 0), bytes(m.data))
        for m in reader if not (m.is_error_frame or m.is_remote_frame)
    ]


def test_every_python_can_format_sample_replays_like_python_can_reads_it():
    folder = shared_path("formats", "python-can")
    checked = 0
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".asc", ".blf", ".trc"):
            continue
        frames = [f for b in LogSource(path.name, str(path), None, speed=0).batches(threading.Event()) for f in b]
        theirs = _python_can_frames(path)
        if path.name == "test_CanMessage_V1_0_BUS1.trc":  # dated from its Start time comment (test_replay_input.py)
            shift = frames[0][0] - theirs[0][0]
            theirs = [(t + shift, k, d) for t, k, d in theirs]
        assert frames == theirs, path.name
        checked += 1
    assert checked >= 10


def test_mf4_replays_through_asammdf_on_demand():
    pytest.importorskip("asammdf", reason="MF4 needs asammdf (pip install 'carledger[mf4]')")
    path = shared_path("logs", "css_obd2_gnss", "00000164_00000001-60FE3F04.MF4")
    only_obd = FrameFilter.of([(0x7E8, 0x7FF, False)])
    source = LogSource("mf4", str(path), only_obd, speed=0)
    frames = [f for b in source.batches(threading.Event()) for f in b]
    assert len(frames) > 1000 and {k for _, k, _ in frames} == {0x7E8}
    assert all(d[1] == 0x41 for _, _, d in frames if d[0] <= 7)  # mode 01 positive responses


def _fields(messages) -> list[tuple]:
    return [(m.timestamp, m.arbitration_id, m.is_extended_id, bytes(m.data), m.channel, m.is_error_frame,
             m.is_remote_frame, m.dlc, m.is_fd) for m in messages]


def _random_frames(count: int, seed: int = 7) -> list[tuple[float, int, bool, int, bytes]]:
    """A bus's worth of identifiers (64, a third of them 29-bit), random payloads of 0 to 8 bytes, 4 channels."""
    rnd = __import__("random").Random(seed)
    idents = [(rnd.getrandbits(29), True) if i % 3 == 0 else (rnd.getrandbits(11), False) for i in range(64)]
    return [(i * 0.0005, *idents[rnd.randrange(64)], i % 4, bytes(rnd.getrandbits(8) for _ in range(i % 9)))
            for i in range(count)]


def test_mf4_streaming_reader_gives_what_python_can_gives(tmp_path):
    """Our reader against python-can's MF4Reader (asammdf) on CANedge files, python-can's own and ours."""
    pytest.importorskip("asammdf", reason="the comparison needs asammdf (pip install 'carledger[mf4]')")
    from carledger._imports import enable_mf4
    from carledger.sources.mf4 import Mf4Reader

    enable_mf4()
    import can.io.mf4

    written = tmp_path / "python-can.mf4"  # deflated DZ blocks, error and remote frame groups
    with can.io.mf4.MF4Writer(str(written)) as writer:
        for i, (t, ident, extended, channel, data) in enumerate(_random_frames(600)):
            writer.on_message_received(can.Message(timestamp=1.7e9 + t, arbitration_id=ident, is_extended_id=extended,
                                                   channel=channel, data=data))
            if i % 50 == 1:
                writer.on_message_received(can.Message(timestamp=1.7e9 + t, is_error_frame=True, channel=1))
            if i % 50 == 2:
                writer.on_message_received(can.Message(timestamp=1.7e9 + t, arbitration_id=0x123, dlc=4,
                                                       is_remote_frame=True, channel=0))
    ours = tmp_path / "ours.mf4"
    write_mf4(ours, _random_frames(3000), 1_700_000_000_123_456_789)
    css = shared_path("logs", "css_obd2_gnss")
    for path in [*sorted(css.glob("*.MF4")), written, ours]:
        reader = Mf4Reader(str(path))
        try:
            mine = _fields(reader)
        finally:
            reader.stop()
        theirs = can.io.mf4.MF4Reader(str(path))
        try:
            assert mine == _fields(theirs) and mine, path.name
        finally:
            theirs.stop()


def test_mf4_file_of_ten_times_the_frames_replays_in_the_same_memory(tmp_path):
    """Replay streams the file: Python's allocations peak the same for 20,000 frames and 200,000."""
    import tracemalloc

    peaks = []
    for count in (20_000, 200_000):
        path = tmp_path / f"{count}.mf4"
        frames = _random_frames(count)
        write_mf4(path, frames, 1_700_000_000_000_000_000)
        del frames
        source = LogSource("mf4", str(path), None, speed=0)
        tracemalloc.start()
        read = 0
        for batch in source.batches(threading.Event()):
            read += len(batch)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert read == count
    assert peaks[1] < peaks[0] * 1.5, peaks


def test_mf4_replay_does_not_need_asammdf(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "drive.mf4"
    write_mf4(path, _random_frames(100), 1_700_000_000_000_000_000)
    code = ("import sys, threading; from carledger.sources import LogSource; "
            "n = sum(len(b) for b in LogSource('m', sys.argv[1], None).batches(threading.Event())); "
            "print(n, 'asammdf' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["100", "False", "False"]


def test_importing_the_agent_does_not_drag_in_asammdf():
    import subprocess
    import sys

    code = "import sys, carledger.pipeline, can; print('asammdf' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def plugin_bus(folder: Path) -> dict[str, str]:
    """A python-can interface plug-in, `plug` (a VirtualBus), installed in `folder`: the environment that finds it."""
    import os

    info = folder / "plugbus-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugbus\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[can.interface]\nplug = plugbus:PlugBus\n")
    (folder / "plugbus.py").write_text("from can.interfaces.virtual import VirtualBus\n"
                                       "class PlugBus(VirtualBus):\n    pass\n")
    return dict(os.environ, PYTHONPATH=f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def test_a_bus_python_can_ships_opens_without_reading_package_metadata_and_a_plugin_still_opens(tmp_path):
    """python-can's interface plug-ins are read (importlib.metadata: 3 MB) only for a name python-can lacks."""
    import subprocess
    import sys

    env = plugin_bus(tmp_path)
    code = """if True:
        import sys, carledger.pipeline, can
        def opened(interface):
            bus = can.Bus(interface=interface, channel="x")
            bus.shutdown()
            return [type(bus).__name__, "importlib.metadata" in sys.modules]
        print(opened("virtual"), opened("plug"), "plug" in can.VALID_INTERFACES, sorted(can.VALID_INTERFACES)[-1])
        """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split("] ") == ["['VirtualBus', False", "['PlugBus', True", "True virtual\n"]
    unknown = subprocess.run([sys.executable, "-c", "import carledger.pipeline, can; can.Bus(interface='nope')"],
                             capture_output=True, text=True, env=env)
    assert 'Unknown interface type "nope"' in unknown.stderr


def test_run_refuses_an_interface_python_can_lacks_at_once_and_takes_a_plugins(tmp_path):
    """A misspelt interface failed at every reopen, for ever: `carledger run` now refuses it before it opens
    anything (exit 2, the file and the field), while a plug-in's interface name is one python-can has."""
    import subprocess
    import sys

    from carledger.sources.bus import unknown_interface

    env = plugin_bus(tmp_path)
    (tmp_path / "policy.toml").write_text('version = 1\n[[stream]]\nname = "vault"\nlocal = true\n'
                                          'purpose = "mine"\nsignals = ["Vehicle.*"]\n')
    from carledger.dbc import __file__ as dbc_package

    demo = Path(dbc_package).parent / "carledger_demo.dbc"
    results = {}
    for interface in ("virtual", "plug", "nosuchbus"):
        config = tmp_path / f"{interface}.toml"
        config.write_text(f'[agent]\nstore = "ledger-{interface}"\nvehicle = "TEST0000000000001"\n'
                          f'policy = "policy.toml"\n[[bus]]\nname = "can0"\ninterface = "{interface}"\n'
                          f'channel = "x"\ndbc = ["{demo}"]\n')
        results[interface] = subprocess.run(
            [sys.executable, "-m", "carledger", "run", "-c", str(config), "--for", "0.3"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    for interface in ("virtual", "plug"):
        assert results[interface].returncode == 0, results[interface].stderr
        assert (tmp_path / f"ledger-{interface}").is_dir()
    refused = results["nosuchbus"]
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "nosuchbus.toml: bus[0].interface (can0): python-can has no " \
        "interface 'nosuchbus' (it knows " in refused.stderr and "socketcan" in refused.stderr, refused.stderr
    assert not (tmp_path / "ledger-nosuchbus").exists()  # nothing was opened
    assert unknown_interface("virtual") is None and unknown_interface("socketcan") is None
    assert repr("x" * 80) in unknown_interface("x" * 300)  # cut at 80, as every configuration message
    assert "x" * 81 not in unknown_interface("x" * 300)


def test_a_batch_ends_at_the_line_that_fills_it_and_the_tally_counts_the_lines_up_to_it():
    """Lines are read as many at a time as the batch has room for; batches and tallies are what one by one gave."""
    from carledger.sources.tally import FrameTally

    lines = []
    for i in range(40):
        lines.append(f"({i}.000000) can0 {0x100 + i % 3:03X}#{i:02X}")  # 0x102 is filtered out
        if i % 7 == 0:
            lines.append("# a comment")
        if i % 11 == 0:
            lines.append(f"({i}.5) can0 7FF#R")  # a remote frame: counted, not handed on
    flt = FrameFilter.of([(0x100, 0x7FE, False)])  # 0x100 and 0x101
    tally, seen = FrameTally(), []
    for batch in read_candump(iter(lines), flt, batch_size=4, tally=tally):
        seen.append((len(batch), tally.in_log, batch[-1][0]))
    # frame lines up to and including the one that filled each batch: the kept ones, the 0x102 ones and remote frames
    expected, kept, line_frames = [], [], 0
    for line in lines:
        if line.startswith("#"):
            continue
        line_frames += 1
        if "#R" not in line and not line.split()[2].startswith("102"):
            kept.append(float(line[1:line.index(")")]))
            if len(kept) % 4 == 0:
                expected.append((4, line_frames, kept[-1]))
    expected.append((len(kept) % 4, line_frames, kept[-1]))
    assert seen == expected
    assert tally.by_key[0x102] == 13 and tally.in_log == line_frames


def test_a_batch_size_below_one_is_refused_not_read_as_an_empty_log():
    with pytest.raises(ValueError, match="batch_size"):
        next(read_candump(["(1.0) can0 123#00"], batch_size=0))
    assert [len(b) for b in read_candump(["(1.0) can0 123#00"] * 3, batch_size=1)] == [1, 1, 1]
