"""Logs the replay cannot read give one line naming the file and the reason, exit 2; absolute times are kept.

Corrupt files are made from the real samples in ../shared/data (truncated, or
their header overwritten), so each reader meets a file it really recognises.
"""

from __future__ import annotations

import datetime
import json
import re
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from carledger.sources import LogSource
from carledger.sources.outlier import OUTLIER_RUN

from conftest import REPO, shared_path

DEMO_DBC = REPO / "dbc" / "carledger_demo.dbc"
CANDUMP = "(1700000000.000000) can0 0B4#0000000000000000\n(1700000000.010000) can0 0C8#0000000000000000\n"


def replay(tmp_path: Path, log: Path, *extra: str, fast: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carledger", "run", "--replay", str(log), "--dbc", str(DEMO_DBC),
         "--store", str(tmp_path / "ledger"), *(["--fast"] if fast else []), *extra],
        capture_output=True, text=True, timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, log: Path, reason: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # INFO log lines go to stderr by default today (issue 12 item 18 moves them); they are not the error
    lines = [line for line in result.stderr.strip().splitlines() if not re.match(r"\d{4}-\d\d-\d\d [\d:,]+ INFO ", line)]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"carledger: {log}: "), lines[0]
    assert reason in lines[0], lines[0]


def truncated(src: Path, dest: Path, size: int) -> Path:
    dest.write_bytes(src.read_bytes()[:size])
    return dest


def stream_records(store: Path, stream: str) -> int:
    """Records sealed in a stream, from `log list --json` (not the run summary's wording, which other work changes)."""
    listed = subprocess.run([sys.executable, "-m", "carledger", "log", "list", str(store), "--json"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)["streams"].get(stream, {}).get("records", 0)


def frames(path: Path) -> list:
    return [f for batch in LogSource("t", str(path), None).batches(threading.Event()) for f in batch]


# -- item 4: unreadable logs -------------------------------------------------------------


def test_blf_with_a_foreign_header_is_one_line_exit_2(tmp_path):
    real = shared_path("formats", "python-can", "test_CanMessage.blf").read_bytes()
    log = tmp_path / "drive.blf"
    log.write_bytes(b"XXXX" + real[4:])
    result = replay(tmp_path, log)
    assert_one_line_error(result, log, "not a BLF file")
    assert not (tmp_path / "ledger").exists()  # nothing created for a log that cannot be read


def test_truncated_blf_is_one_line_exit_2(tmp_path):
    log = truncated(shared_path("formats", "python-can", "test_CanMessage.blf"), tmp_path / "drive.blf", 300)
    assert_one_line_error(replay(tmp_path, log), log, "BLF")


def test_binary_file_named_asc_is_one_line_exit_2(tmp_path):
    log = tmp_path / "drive.asc"  # a BLF renamed
    log.write_bytes(shared_path("formats", "python-can", "test_CanMessage.blf").read_bytes())
    assert_one_line_error(replay(tmp_path, log), log, "not a text file")


def test_asc_with_a_broken_frame_line_is_one_line_with_its_number(tmp_path):
    lines = shared_path("formats", "python-can", "test_CanMessage.asc").read_text().splitlines()
    frame_at = next(i for i, line in enumerate(lines) if " Rx " in line)
    lines[frame_at] = lines[frame_at].replace(" Rx ", " Rx d 8 ZZ ", 1).split(" ZZ ")[0] + " ZZ 00 11"
    log = tmp_path / "drive.asc"
    log.write_text("\n".join(lines) + "\n")
    assert_one_line_error(replay(tmp_path, log), log, "ASC")


def test_trc_with_a_damaged_frame_line_names_the_line(tmp_path):
    lines = shared_path("formats", "python-can", "test_CanMessage_V2_1.trc").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if " DT " in line)
    lines[first] = lines[first][:-23] + "ZZ" + lines[first][-21:]
    log = tmp_path / "drive.trc"
    log.write_text("\n".join(lines) + "\n")
    assert_one_line_error(replay(tmp_path, log), log, f"line {first + 1}: cannot read it as TRC")


def test_truncated_mf4_is_one_line_exit_2(tmp_path):
    pytest.importorskip("asammdf", reason="MF4 needs asammdf (pip install 'carledger[mf4]')")
    src = shared_path("logs", "css_obd2_gnss", "00000164_00000001-60FE3F04.MF4")
    log = truncated(src, tmp_path / "drive.mf4", 2000)
    assert_one_line_error(replay(tmp_path, log), log, "MF4")


def test_garbage_named_mf4_is_one_line_exit_2(tmp_path):
    log = tmp_path / "drive.mf4"
    log.write_bytes(b"\x16\xa0\xdf\x93" * 1000)
    assert_one_line_error(replay(tmp_path, log), log, "not an MF4 file")


def test_mf4_without_asammdf_says_how_to_install_it(tmp_path):
    """Our own reader takes sorted bus-logging files; one it does not (here: marked unsorted) needs asammdf."""
    data = bytearray(shared_path("logs", "css_obd2_gnss", "00000164_00000001-60FE3F04.MF4").read_bytes())
    first_group = struct.unpack_from("<Q", data, 64 + 24)[0]  # the header block's first link
    data[first_group + 24 + 4 * 8] = 1  # the data group's record-id size: its records would carry ids
    log = tmp_path / "drive.mf4"
    log.write_bytes(bytes(data))
    # A directory on the path that makes `import asammdf` fail, as on an install without the extra.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "asammdf.py").write_text("raise ImportError('asammdf hidden by the test')\n")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); from carledger.cli import main; "
         "sys.exit(main(sys.argv[1:]))", str(hide), "run", "--replay", str(log), "--dbc", str(DEMO_DBC),
         "--store", str(tmp_path / "ledger"), "--fast"],
        capture_output=True, text=True, timeout=120,
    )
    assert_one_line_error(result, log, "reading .mf4 needs asammdf: pip install 'carledger[mf4]'")


def test_unknown_extension_is_one_line_exit_2(tmp_path):
    log = tmp_path / "drive.xyz"
    log.write_text("hello\n")
    assert_one_line_error(replay(tmp_path, log), log, "unknown log format '.xyz'")


def test_empty_log_is_one_line_exit_2(tmp_path):
    log = tmp_path / "drive.log"
    log.write_text("")
    assert_one_line_error(replay(tmp_path, log), log, "no frames")


def test_binary_file_named_log_is_one_line_exit_2(tmp_path):
    log = tmp_path / "drive.log"
    log.write_bytes(bytes(range(256)) * 4)
    assert_one_line_error(replay(tmp_path, log), log, "not a candump log")


@pytest.mark.parametrize("name", ["drive.txt", "drive.candump", "drive"])
def test_candump_named_txt_or_candump_is_read_by_its_content(tmp_path, name):
    log = tmp_path / name
    log.write_text("# exported by carledger\n" + CANDUMP)
    assert [f[1] for f in frames(log)] == [0x0B4, 0x0C8]
    result = replay(tmp_path, log, "--stream", "speed=ABS_SPEED.VehicleSpeed")
    assert result.returncode == 0, result.stderr
    same = tmp_path / "as-log"
    same.mkdir()
    (same / "drive.log").write_text(log.read_text())
    assert replay(same, same / "drive.log", "--stream", "speed=ABS_SPEED.VehicleSpeed").returncode == 0
    assert stream_records(tmp_path / "ledger", "speed") == stream_records(same / "ledger", "speed") > 0


def test_text_that_is_not_candump_named_txt_is_refused(tmp_path):
    log = tmp_path / "notes.txt"
    log.write_text("shopping list\nmilk\n")
    assert_one_line_error(replay(tmp_path, log), log, "line 1")


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "recorded-speed"])
def test_damage_past_the_first_batch_keeps_what_was_read_and_exits_2(tmp_path, fast):
    """Frames before the damage are sealed (never lose what was recorded); the run still exits 2, in one line.

    Fast, the log is read in the pipeline's thread; at recorded speed in a reader thread.
    """
    import can

    log = tmp_path / "drive.asc"
    start = datetime.datetime(2026, 11, 20, 8, 0, 0).timestamp()
    with can.ASCWriter(str(log)) as writer:
        for i in range(3000):  # more than the first batch the command checks before it starts
            writer.on_message_received(can.Message(timestamp=start + i * 0.0002, arbitration_id=0x0B4, is_extended_id=False, data=bytes(8)))
    lines = log.read_text().splitlines()
    broken = len(lines) - 2  # the last frame line, before "End TriggerBlock"
    lines[broken] = lines[broken].split(" Rx ")[0] + " Rx d 8 ZZ"
    log.write_text("\n".join(lines) + "\n")
    result = replay(tmp_path, log, "--stream", "speed=ABS_SPEED.*", fast=fast)
    assert_one_line_error(result, log, f"line {broken + 1}: cannot read it as ASC after 2999 frames")
    listed = subprocess.run([sys.executable, "-m", "carledger", "log", "list", str(tmp_path / "ledger"), "--json"],
                            capture_output=True, text=True, timeout=60)
    speed = json.loads(listed.stdout)["streams"]["speed"]
    assert speed["records"] > 0 and speed["t0"] == start  # sealed, at the header's date, not 1970


# -- item 6: absolute start times ----------------------------------------------------------


def test_asc_times_start_at_the_date_header_not_1970(tmp_path):
    import can

    log = tmp_path / "drive.asc"
    start = datetime.datetime(2024, 3, 9, 14, 30, 5, 250000).timestamp()  # the header is local time
    with can.ASCWriter(str(log)) as writer:
        for i in range(3):
            writer.on_message_received(can.Message(timestamp=start + i * 0.01, arbitration_id=0x123, data=[i]))
    got = frames(log)
    assert [round(t - start, 6) for t, _, _ in got] == [0.0, 0.01, 0.02]
    assert [d for _, _, d in got] == [b"\x00", b"\x01", b"\x02"]


def test_real_asc_sample_is_dated_from_its_header():
    path = shared_path("formats", "python-can", "logfile.asc")  # date Sam Sep 30 15:06:13.191 2017
    first = frames(path)[0][0]
    header = datetime.datetime(2017, 9, 30, 15, 6, 13, 191000).timestamp()
    assert header <= first < header + 60


def test_blf_trc_and_mf4_keep_their_absolute_times():
    blf = frames(shared_path("formats", "python-can", "test_CanMessage.blf"))
    trc = frames(shared_path("formats", "python-can", "test_CanMessage_V2_1.trc"))
    assert datetime.datetime.fromtimestamp(blf[0][0], datetime.timezone.utc).year >= 2000
    assert datetime.datetime.fromtimestamp(trc[0][0], datetime.timezone.utc).date() == datetime.date(2021, 12, 18)


def test_gzipped_asc_reads_like_the_plain_one():
    plain = frames(shared_path("formats", "python-can", "test_CanMessage.asc"))
    assert frames(shared_path("formats", "python-can", "test_CanMessage.asc.gz")) == plain and plain


def test_trc_1_0_is_dated_from_its_start_time_comment():
    """TRC 1.0 has no $STARTTIME, only a `Start time:` comment; the same capture in 1.1 gives the same times."""
    old = frames(shared_path("formats", "python-can", "test_CanMessage_V1_0_BUS1.trc"))
    new = frames(shared_path("formats", "python-can", "test_CanMessage_V1_1.trc"))
    assert len(old) == len(new) == 10
    assert all(abs(a[0] - b[0]) < 0.002 and a[1:] == b[1:] for a, b in zip(old, new))


def test_mf4_keeps_its_absolute_time():
    pytest.importorskip("asammdf", reason="MF4 needs asammdf (pip install 'carledger[mf4]')")
    first = frames(shared_path("logs", "css_obd2_gnss", "00000164_00000001-60FE3F04.MF4"))[0][0]
    assert datetime.datetime.fromtimestamp(first, datetime.timezone.utc).date() == datetime.date(2021, 7, 26)


def test_a_candump_export_named_candump_replays(tmp_path):
    """`log export --format candump -o x.candump` invites that name; the replay reads it back."""
    log = tmp_path / "drive.log"
    log.write_text("".join(f"({1700000000 + i / 100:.6f}) can0 0B4#{i:04X}000000000000\n" for i in range(50)))
    assert replay(tmp_path, log, "--stream", "speed=ABS_SPEED.*").returncode == 0
    exported = tmp_path / "x.candump"
    result = subprocess.run(
        [sys.executable, "-m", "carledger", "log", "export", str(tmp_path / "ledger"), "--stream", "speed",
         "--format", "candump", "--dbc", str(DEMO_DBC), "-o", str(exported)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    again = tmp_path / "again"
    again.mkdir()
    result = replay(again, exported, "--stream", "speed=ABS_SPEED.*")
    assert result.returncode == 0, result.stderr
    assert stream_records(again / "ledger", "speed") == stream_records(tmp_path / "ledger", "speed") > 0


# -- a frame's time must be a time ---------------------------------------------------------


@pytest.mark.parametrize("stamp", ["nan", "inf", "-inf", "1e300", "-5", "1e12"])
def test_a_candump_line_whose_time_is_no_time_is_reported_and_skipped(tmp_path, stamp):
    """float() takes nan, inf and 1e300: the reader must refuse them, as it refuses any damaged line."""
    lines = [f"({1700000000 + i / 100:.6f}) can0 0B4#{i:04X}000000000000" for i in range(6)]
    lines[2] = f"({stamp}) can0 0B4#FFFF000000000000"
    log = tmp_path / "drive.log"
    log.write_text("\n".join(lines) + "\n")
    reported = []
    source = LogSource("t", str(log), None, on_event=lambda kind, detail: reported.append((kind, detail)))
    kept = [f for batch in source.batches(threading.Event()) for f in batch]
    assert [data[:2] for _, _, data in kept] == [bytes([0, i]) for i in (0, 1, 3, 4, 5)]
    assert reported == [("malformed-input", {"file": str(log), "line": 3,
                                             "reason": f"timestamp '{stamp}' is not a time from 0 to year 9999"})]


def test_a_frame_years_ahead_in_a_log_does_not_hold_back_every_later_sample(tmp_path):
    """One damaged time far ahead used to be recorded, and each later sample then waited behind it for ever."""
    lines = [f"({1700000000 + i / 100:.6f}) can0 0B4#{i:04X}000000000000" for i in range(50)]
    lines[10] = "(1e12) can0 0B4#FFFF000000000000"
    log = tmp_path / "drive.log"
    log.write_text("\n".join(lines) + "\n")
    result = replay(tmp_path, log, "--stream", "speed=ABS_SPEED.VehicleSpeed")
    assert result.returncode == 0, result.stderr
    assert f"{log}:11: skipped malformed line (timestamp '1e12' is not a time" in result.stderr
    assert result.stderr.count("skipped malformed line") == 1  # the check before the run read it too, silently
    assert stream_records(tmp_path / "ledger", "speed") == 49 + 1  # every other frame's new speed, and the start event


def test_a_python_can_log_frame_whose_time_is_no_time_is_reported_and_skipped(tmp_path):
    import can

    source = LogSource("t", str(tmp_path / "x.asc"), None,
                       on_event=lambda kind, detail: reported.append((kind, detail)))
    reported: list = []
    messages = [can.Message(timestamp=t, arbitration_id=0xB4, data=bytes([i] * 8), is_extended_id=False)
                for i, t in enumerate([1.0, float("nan"), 2.0, float("inf"), 3.0])]
    kept = [f for batch in source._python_can_batches(messages) for f in batch]
    assert [t for t, _, _ in kept] == [1.0, 2.0, 3.0]
    assert [(kind, detail["frame"]) for kind, detail in reported] == [("malformed-input", 2), ("malformed-input", 4)]


# -- one time far ahead of the lines around it ------------------------------------------------------

def _read_candump(lines: list[str], batch_size: int = 2048) -> tuple[list, list]:
    from carledger.sources.candump import read_candump

    reported: list = []
    batches = list(read_candump(lines, on_malformed=lambda n, line, why: reported.append((n, why)),
                                batch_size=batch_size))
    return batches, reported


def _fleet_policy(folder: Path, granted: str, expires: str) -> Path:
    """A policy of one consented stream of the speed, for a recipient."""
    policy = folder / "policy.toml"
    policy.write_text(f"""version = 1

[[stream]]
name = "fleet"
recipient = "Fleet Ops B.V."
purpose = "vehicle tracking"
signals = ["ABS_SPEED.VehicleSpeed"]
consent = {{ granted = {granted}, expires = {expires} }}
""")
    return policy


def _line(t: float, i: int) -> str:
    return f"({t:.6f}) can0 0B4#{i & 0xFF:02X}{i >> 8:02X}000000000000\n"


def _iso(t: float) -> str:
    """A consent's time in a policy file."""
    return f"{datetime.datetime.fromtimestamp(t, datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}"


def _replayed(tmp_path: Path, times: list[float], policy: Path) -> subprocess.CompletedProcess:
    """A drive of these frame times (each a new speed) replayed under the policy, into tmp_path/ledger."""
    log = tmp_path / "drive.log"
    log.write_text("".join(_line(t, i) for i, t in enumerate(times)))
    result = replay(tmp_path, log, "--policy", str(policy))
    assert result.returncode == 0, result.stderr
    return result


def _exported(tmp_path: Path, stream: str) -> list[dict]:
    """A stream's records and events, as `carledger log export --time epoch --events` gives them."""
    exported = subprocess.run([sys.executable, "-m", "carledger", "log", "export", str(tmp_path / "ledger"),
                               "--stream", stream, "--time", "epoch", "--events"], capture_output=True, text=True,
                              timeout=60)
    assert exported.returncode == 0, exported.stderr
    return [json.loads(line) for line in exported.stdout.splitlines()]


@pytest.mark.parametrize("at", [0, 1, 2, 3, 4, 5, 6, 9])
def test_one_line_far_ahead_of_both_neighbours_is_skipped_and_reported_wherever_the_batches_cut(at):
    """A damaged time (11.6 days ahead) is no pause: the frames after it come back. Batches of 4: the line is at
    every place in a batch, the last included (its next line, in the next batch, decides)."""
    times = [1796676465.0 + i / 100 for i in range(10)]
    lines = [_line(t, i) for i, t in enumerate(times)]
    lines[at] = _line(times[at] + 1_000_000, at)
    batches, reported = _read_candump(lines, batch_size=4)
    kept = [f[0] for batch in batches for f in batch]
    if at == 0 or at == 9:  # no line before it, or none after it: nothing tells it from a pause
        assert reported == [] and len(kept) == 10
        return
    assert kept == [t for i, t in enumerate(times) if i != at]
    assert reported == [(at + 1, "its time is 1000000 s ahead of the frames before and after it")]
    assert all(batches) and all(len(b) <= 4 for b in batches)


@pytest.mark.parametrize("run", [2, 3, OUTLIER_RUN])
@pytest.mark.parametrize("batch_size", [8, 2048])
def test_a_few_lines_in_a_row_far_ahead_are_skipped_and_reported_wherever_the_batches_cut(run, batch_size):
    """Two damaged lines in a row were taken for a clock that ran ahead: the consents that expire before their
    time ended there. Up to OUTLIER_RUN lines that far ahead of the line before them, then back, are damage; their
    own times may differ. Every start of the run in a batch of 8 (its last line included)."""
    times = [1796676465.0 + i / 100 for i in range(40)]
    for at in range(1, 40 - run):
        lines = [_line(t, i) for i, t in enumerate(times)]
        for k in range(run):
            lines[at + k] = _line(times[at + k] + 1_000_000 + k * 50_000, at + k)
        batches, reported = _read_candump(lines, batch_size=batch_size)
        kept = [f[0] for batch in batches for f in batch]
        if run >= batch_size:  # a batch of nothing but the run: handed on as it is, as a clock that ran ahead
            assert reported == [] and kept == [float(line.split()[0][1:-1]) for line in lines]
            continue
        assert kept == [t for i, t in enumerate(times) if not at <= i < at + run], at
        assert reported == [(at + k + 1, f"its time is {1_000_000 + k * 50_000} s ahead of the frames before and "
                                         "after it") for k in range(run)], at
        assert all(batches) and all(len(b) <= batch_size for b in batches)


def test_a_pause_a_step_back_and_a_time_past_year_9999_are_no_outliers():
    t0 = 1796676465.0
    pause = [_line(t0, 0), _line(t0 + 0.01, 1), _line(t0 + 5 * 3600, 2), _line(t0 + 5 * 3600 + 0.01, 3)]
    batches, reported = _read_candump(pause)  # two drives in one log, hours apart: the second stays ahead
    assert reported == [] and len(batches[0]) == 4
    ahead = OUTLIER_RUN + 1
    step = [_line(t0, 0)] + [_line(t0 + 7200 + i / 100, i) for i in range(1, ahead + 1)] + [_line(t0 + 0.02, 99)]
    batches, reported = _read_candump(step)  # ahead for more lines than damage is, then back: a clock stepped
    assert reported == [] and len(batches[0]) == ahead + 2
    last = 253402300799.0  # 9999-12-31T23:59:59Z: a step under the hour past it is still no time
    batches, reported = _read_candump([_line(last - 10, 0), _line(last + 100, 1)])
    assert [f[0] for f in batches[0]] == [last - 10]
    assert reported == [(2, f"timestamp '{last + 100:.6f}' is not a time from 0 to year 9999")]


@pytest.mark.parametrize("run", [1, 2])
def test_a_python_can_log_frame_far_ahead_of_both_neighbours_is_reported_and_skipped(tmp_path, run):
    import can

    reported: list = []
    source = LogSource("t", str(tmp_path / "x.asc"), None, on_event=lambda kind, detail: reported.append(detail))
    times = [1796676465.0, 1796676465.01, 1797676465.02, 1797676465.03, 1796676465.04, 1796676465.05]
    if run == 1:
        times[3] -= 1_000_000
    messages = [can.Message(timestamp=t, arbitration_id=0xB4, data=bytes([i] * 8), is_extended_id=False)
                for i, t in enumerate(times)]
    kept = [f for batch in source._python_can_batches(messages) for f in batch]
    assert [t for t, _, _ in kept] == [t for i, t in enumerate(times) if not 2 <= i < 2 + run]
    assert reported == [{"file": str(tmp_path / "x.asc"), "frame": 3 + k,
                         "reason": "its time is 1000000 s ahead of the frames before and after it"}
                        for k in range(run)]


@pytest.mark.parametrize("damaged_lines", [1, 2])
def test_a_line_dated_past_the_consents_expiry_ends_no_stream(tmp_path, damaged_lines):
    """One line dated 2030 in a 2026 drive used to end every consented stream at its expiry, for the rest of
    the replay: the consents' audit said consent-expired, and the streams never started again. Two such lines in a
    row did it still (taken for a clock that ran ahead, whose step back inside a batch went unseen)."""
    policy = _fleet_policy(tmp_path, "2026-01-01T00:00:00Z", "2027-10-03T00:00:00Z")
    t0 = 1796676465.0  # 2026-12-07
    lines = [_line(t0 + i / 100, i) for i in range(3000)]
    clean = tmp_path / "clean.log"
    clean.write_text("".join(lines))
    for k in range(damaged_lines):
        lines[1500 + k] = _line(1896676465.0 + k / 100, 1500 + k)  # 2030-02-07
    damaged = tmp_path / "damaged.log"
    damaged.write_text("".join(lines))
    results = []
    for log in (clean, damaged):
        store = tmp_path / log.stem
        store.mkdir()
        result = replay(store, log, "--policy", str(policy))
        assert result.returncode == 0, result.stderr
        results.append(stream_records(store / "ledger", "fleet"))
        audit = subprocess.run([sys.executable, "-m", "carledger", "log", "export", str(store / "ledger"),
                                "--stream", "audit", "--events"], capture_output=True, text=True, timeout=60)
        assert "consent-expired" not in audit.stdout
    assert f"{damaged}:1501: skipped malformed line (its time is 99999985 s ahead of the frames before and after it)" \
        in result.stderr
    assert results[1] == results[0] - damaged_lines > 2000  # every frame's change but the damaged lines'


def test_a_clock_that_steps_back_is_a_health_event_with_where_it_stepped(tmp_path):
    """Frames carry the wall clock; when it steps back, the records that follow repeat times recorded before.
    That must be said, not silent, and no change is lost to it (the taps once held each change until the clock
    passed the last recorded time again)."""
    times = []
    t = 1700000000.0
    for i in range(6000):
        if i == 1000:
            t -= 30.0  # inside the first batch of 2,048 frames
        if i == 4500:
            t -= 40.0  # in a later batch
        if i == 3000:
            t -= 0.5  # jitter, as buses interleave: not a step
        times.append(t)
        t += 0.01
    log = tmp_path / "drive.log"
    log.write_text("".join(f"({t:.6f}) can0 0B4#{i & 0xFF:02X}{i >> 8:02X}000000000000\n" for i, t in enumerate(times)))
    result = replay(tmp_path, log, "--stream", "speed=ABS_SPEED.VehicleSpeed")
    assert result.returncode == 0, result.stderr
    listed = subprocess.run([sys.executable, "-m", "carledger", "log", "export", str(tmp_path / "ledger"),
                             "--stream", "health", "--events"], capture_output=True, text=True, timeout=60)
    steps = [json.loads(line)["detail"] for line in listed.stdout.splitlines() if "clock-stepped-back" in line]
    assert [(s["from"], s["to"]) for s in steps] == [
        (pytest.approx(times[999], abs=1e-6), pytest.approx(times[1000], abs=1e-6)),  # the log's times: 6 places
        (pytest.approx(times[4499], abs=1e-6), pytest.approx(times[4500], abs=1e-6))]
    assert [s["seconds"] for s in steps] == [pytest.approx(29.99), pytest.approx(39.99)]
    assert result.stderr.count("the frames' clock went back") == 2
    exported = subprocess.run([sys.executable, "-m", "carledger", "log", "export", str(tmp_path / "ledger"),
                               "--stream", "speed", "--time", "epoch"], capture_output=True, text=True, timeout=60)
    recorded = [(json.loads(line)["t"], json.loads(line)["value"]) for line in exported.stdout.splitlines()]
    # every frame's payload differs from the one before: each is a change, recorded with its own time
    assert len(recorded) == len(times) and [t for t, _ in recorded] == pytest.approx(times, abs=1e-6)


@pytest.mark.parametrize("payload", ["changing", "constant"])
def test_after_a_clock_step_back_each_aggregate_window_counts_only_its_own_frames(tmp_path, payload):
    """The window in progress when the clock steps back ends there, with what it had; the frames after the step
    open windows on their own clock. Before, the 3,000 frames until the clock passed that window's end again were
    folded into it (a count of 4,000, and left out of its mean). A payload that never changes reaches the windows
    as a repeat once a second of its clock (REPEAT_EVERY): after the step too, not only once the clock is back."""
    policy = tmp_path / "policy.toml"
    policy.write_text('''version = 1

[[stream]]
name = "summary"
local = true
purpose = "speed per 10 s"
signals = []

[[stream.aggregate]]
signals = ["ABS_SPEED.VehicleSpeed"]
window = 10
functions = ["count"]
''')
    t0 = 1700000000.0
    times = [t0 + i / 100 if i < 1000 else t0 - 20 + (i - 1000) / 100 for i in range(6000)]  # 30 s back at 1,000
    log = tmp_path / "drive.log"
    log.write_text("".join(_line(t, i if payload == "changing" else 16) for i, t in enumerate(times)))
    result = replay(tmp_path, log, "--policy", str(policy))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("the frames' clock went back") == 1
    exported = subprocess.run([sys.executable, "-m", "carledger", "log", "export", str(tmp_path / "ledger"),
                               "--stream", "summary", "--time", "epoch"], capture_output=True, text=True, timeout=60)
    windows = [(json.loads(line)["t"], json.loads(line)["value"]) for line in exported.stdout.splitlines()]
    ends = [9.99, -10, 0, 10, 20, 29.99]
    assert [t for t, _ in windows] == [pytest.approx(t0 + end) for end in ends]
    if payload == "changing":
        assert [count for _, count in windows] == [1000] * 6
    else:  # the first frame of a window, then a repeat a second
        assert all(10 <= count <= 11 for _, count in windows)


def test_a_clock_step_back_before_a_consent_begins_stops_the_stream_until_it_begins_again(tmp_path):
    """The clock ran ahead past the consent's start, then steps back before it: the frames after the step come
    before the consent by their own times, and must not be recorded for the recipient (they were)."""
    t0 = float(int(datetime.datetime.now(datetime.timezone.utc).timestamp()) - 86400)  # a consent must be current
    granted = t0 + 60
    policy = _fleet_policy(tmp_path, _iso(granted), _iso(t0 + 365 * 86400))
    # t0+50 .. t0+70 (past the consent's start), then 30 s back: t0+40 .. t0+80
    times = [t0 + 50 + i / 100 if i < 2000 else t0 + 40 + (i - 2000) / 100 for i in range(6000)]
    _replayed(tmp_path, times, policy)
    rows = _exported(tmp_path, "fleet")
    samples = [row["t"] for row in rows if "value" in row]
    assert min(samples) >= granted  # before: the 2,000 frames from t0+40 to t0+60 after the step too
    # every frame from the consent's start on, before the step and after it: the 1,000 from t0+60 to t0+70 that
    # were recorded before the step, while the consent covered them, were once dropped by the stop at the step
    assert sorted(round(t - t0, 2) for t in samples) == sorted(round(t - t0, 2) for t in times if t >= granted)
    events = [(round(row["t"] - t0, 2), row["event"]) for row in rows if "value" not in row]
    assert events == [(60.0, "stream-started"), (40.0, "consent-pending"), (60.0, "consent-granted")]


def test_a_consent_a_clock_running_ahead_saw_expire_is_restored_when_the_clock_steps_back_before_its_end(tmp_path):
    """The clock jumps 80 s ahead, past the consent's expiry, and the stream ends there. Then it steps back before
    the expiry: the consent, by its own signed end, covers the frames after the step, so they are recorded for the
    recipient (they were not: the stream stayed ended), and the stream ends again when the clock passes the expiry."""
    t0 = float(int(datetime.datetime.now(datetime.timezone.utc).timestamp()) + 86400)  # a consent must be current
    expires = t0 + 60
    policy = _fleet_policy(tmp_path, _iso(t0 - 3600), _iso(expires))
    # t0 .. t0+20, then 80 s ahead (t0+100 .. t0+120), then back to t0+20 .. t0+80
    times = [t0 + i / 100 if i < 2000 else t0 + 80 + i / 100 if i < 4000 else t0 + (i - 2000) / 100
             for i in range(10000)]
    _replayed(tmp_path, times, policy)

    rows = _exported(tmp_path, "fleet")
    samples = {round(row["t"] - t0, 2) for row in rows if "value" in row}
    assert samples == {round(t - t0, 2) for t in times if t < expires}  # 2,000 before the jump, 4,000 after the step
    events = [(round(row["t"] - t0, 2), row["event"]) for row in rows if "value" not in row]
    assert events == [(0.0, "stream-started"), (60.0, "consent-expired"), (20.0, "consent-restored"),
                      (60.0, "consent-expired")]
    restored = next(row for row in rows if row.get("event") == "consent-restored")["detail"]
    assert restored["expired"] == _iso(expires) and restored["recipient"] == "Fleet Ops B.V."
    audit = [(round(row["t"] - t0, 2), row["event"]) for row in _exported(tmp_path, "audit") if "value" not in row
             and row["event"].startswith("consent-")]
    assert audit == [(60.0, "consent-expired"), (20.0, "consent-restored"), (60.0, "consent-expired")]
    words = subprocess.run([sys.executable, "-m", "carledger", "audit", str(tmp_path / "ledger")],
                           capture_output=True, text=True, timeout=60)
    assert f"consent to stream fleet (vehicle tracking) covers the frames again from {_iso(t0 + 20)}" in words.stdout


def test_a_consent_an_earlier_run_saw_expire_is_restored_for_a_drive_before_its_end(tmp_path):
    """One replay's clock ran past the consent's expiry; the next run's frames come before it (an older log, or the
    clock corrected while the agent was stopped). The consent covers them by its own end: restored, not `granted`
    (the owner granted nothing), and the frames are the recipient's."""
    t0 = float(int(datetime.datetime.now(datetime.timezone.utc).timestamp()) + 86400)  # a consent must be current
    policy = _fleet_policy(tmp_path, _iso(t0 - 3600), _iso(t0 + 60))
    for name, times in (("ahead.log", [t0 + 50 + i / 100 for i in range(2000)]),  # past the expiry at t0+60
                        ("before.log", [t0 + i / 100 for i in range(1000)])):
        log = tmp_path / name
        log.write_text("".join(_line(t, i) for i, t in enumerate(times)))
        result = replay(tmp_path, log, "--policy", str(policy))
        assert result.returncode == 0, result.stderr
    rows = _exported(tmp_path, "fleet")
    assert [(round(row["t"] - t0, 2), row["event"]) for row in rows if "value" not in row] == [
        (50.0, "stream-started"), (60.0, "consent-expired"), (0.0, "consent-restored")]
    assert sum(1 for row in rows if "value" in row) == 2000  # t0+50 to the expiry, and t0 to t0+10


def test_a_clock_ahead_past_a_consent_s_end_and_back_inside_one_batch_is_a_step(tmp_path):
    """A clock 95 s ahead for 1,000 frames (no damage: too many lines) and back, all inside one batch of 2,048:
    its check at the time ahead ended the consent, and the step back, between the batch's ends, went unseen, so the
    stream stayed ended. The step after a check is looked for, and the consent restored."""
    t0 = float(int(datetime.datetime.now(datetime.timezone.utc).timestamp()) + 86400)  # a consent must be current
    policy = _fleet_policy(tmp_path, _iso(t0 - 3600), _iso(t0 + 60))
    times = [t0 + i / 100 if i < 500 else t0 + 95 + i / 100 if i < 1500 else t0 + (i - 1000) / 100
             for i in range(2000)]
    result = _replayed(tmp_path, times, policy)
    assert result.stderr.count("the frames' clock went back") == 1
    rows = _exported(tmp_path, "fleet")
    assert [(round(row["t"] - t0, 2), row["event"]) for row in rows if "value" not in row] == [
        (0.0, "stream-started"), (60.0, "consent-expired"), (5.0, "consent-restored")]
    samples = sorted(round(row["t"] - t0, 2) for row in rows if "value" in row)
    assert samples == sorted(round(t - t0, 2) for t in times if t < t0 + 60)  # 500 before, 500 after the step


def test_deleting_by_age_waits_an_hour_after_a_live_clock_jumps():
    """A live bus's clock is the unsigned wall clock. Set a year ahead, it had retention delete every record
    younger than a year at the next check, for good. After a jump of more than JUMP_S either way, the clock must
    keep pace with the monotonic clock for STEADY_S first; slow drift and the clock at the start are taken."""
    from carledger.clocksteps import JUMP_S, STEADY_S, SteadyClock

    mono = [1000.0]
    clock = SteadyClock(lambda: mono[0])
    t = 1_800_000_000.0
    assert clock.steady(t)  # the start: taken as it is
    mono[0] += 600
    assert clock.steady(t + 600 + JUMP_S * 0.9)  # drift within JUMP_S
    mono[0] += 600
    assert not clock.steady(t + 1200 + 365 * 86400)  # a year ahead: held
    assert clock.newly_held
    assert clock.jumped == pytest.approx(365 * 86400 - JUMP_S * 0.9)  # since the last look, which had drifted
    mono[0] += 60
    assert not clock.steady(t + 1260 + 365 * 86400)  # keeps pace, but not for an hour yet
    mono[0] += 60
    assert not clock.steady(t + 1320)  # and back: a jump again, held anew
    assert not clock.newly_held  # held already: said once
    mono[0] += STEADY_S - 1
    assert not clock.steady(t + 1319 + STEADY_S)
    mono[0] += 1
    assert clock.steady(t + 1320 + STEADY_S)  # an hour in step since the last jump


def test_two_buses_whose_clocks_differ_are_not_a_step():
    """Each bus's frames are in its own order; read in turn, two buses interleave: only a bus's own clock counts."""
    from carledger.clocksteps import ClockStep, ClockSteps

    def batch(start: float) -> list:
        return [(start + i / 100, 0xB4, b"\0" * 8) for i in range(50)]

    steps = ClockSteps()
    found = [(index, steps.find(index, batch(start)))
             for index, start in ((0, 1000.0), (1, 900.0), (0, 1000.5), (1, 900.5), (1, 800.0), (0, 1001.0))]
    assert [(index, step) for index, step in found if step is not None] == [(1, ClockStep(0, pytest.approx(900.99), 800.0))]
    inside = steps.find(2, [(10.0, 1, b""), (10.5, 1, b""), (8.0, 1, b""), (8.1, 1, b"")])  # 2.5 s back, at frame 2
    assert inside == ClockStep(2, 10.5, 8.0) and inside.seconds == 2.5
    assert steps.find(3, [(10.0, 1, b""), (9.5, 1, b""), (9.6, 1, b"")]) is None  # jitter under CLOCK_STEP
