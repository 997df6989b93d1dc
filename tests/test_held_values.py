"""What the owner's metrics and window aggregates make of a signal that holds its value, or reads NaN.

Through the agent as a user runs it (`carledger run --replay`, then `carledger read`), on the
float car of tests/float_car.py: its frames carry the value alone, so a steady speed repeats
its frame byte for byte, and an IEEE float can be NaN or infinite.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

import float_car
from carledger.cli import main
from carledger.sampling import REPEAT_EVERY

START = float(int(time.time()) // 60 * 60 - 3600)  # a whole minute: the 10 s windows start with the drive


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


POLICY = f"""version = 1
[[stream]]
name = "insurer"
recipient = "Acme Insurance"
purpose = "pay-how-you-drive premium"
raw = false
consent = {{ granted = {iso(START - 86400)}, expires = {iso(START + 300 * 86400)} }}
[stream.metrics]
every = "10s"
distance = true
over_speed = {{ limit = 70.0 }}
[[stream.aggregate]]
signals = ["Vehicle.Speed", "Vehicle.Acceleration.Longitudinal"]
window = "10s"
functions = ["min", "max", "mean", "count"]

[[stream]]
name = "owner"
recipient = "the owner"
purpose = "my own log"
signals = ["Vehicle.Speed"]
consent = {{ granted = {iso(START - 86400)}, expires = {iso(START + 300 * 86400)} }}
"""


def strict(constant: str) -> None:
    """json.loads takes NaN and Infinity; JSON (RFC 8259), JavaScript and Go do not."""
    raise ValueError(f"not JSON: {constant}")


def drive(folder: Path, capsys, **signals) -> dict[str, list]:
    """60 s of the float car through the agent; what `read` gives: name -> [(t, value)], in order."""
    dbc = float_car.write_dbc(folder)
    log = float_car.write_log(folder / "drive.log", START, 60.0, **signals)
    (folder / "policy.toml").write_text(POLICY)
    store = folder / "ledger"
    assert main(["run", "--replay", str(log), "--dbc", str(dbc), "--store", str(store),
                 "--policy", str(folder / "policy.toml"), "--fast"]) == 0
    capsys.readouterr()
    assert main(["read", str(store), "--time", "epoch"]) == 0
    rows: dict[str, list] = {}
    for line in capsys.readouterr().out.splitlines():
        row = json.loads(line, parse_constant=strict)
        rows.setdefault(row["name"], []).append((row["t"], row["value"]))
    return rows


def test_a_steady_speed_whose_frames_repeat_counts_every_kilometre(tmp_path, capsys):
    """80 km/h for 60 s, every frame the same bytes: 10 s windows of 0.222 km and 10 s over the limit.

    Repeated frames were skipped before the metrics saw them, so a steady speed looked like a silent
    ECU: one window of 0 km in the minute, and the aggregates' count was 1. A feed now gets a repeat
    once a second (REPEAT_EVERY): the first frame, its first repeat, then one a second.
    """
    rows = drive(tmp_path, capsys, speed=lambda k: 80.0, accel=lambda k: 0.5)
    distance = [v for _, v in rows["metric.distance_km"]]
    assert len(distance) == 6
    assert distance[:5] == pytest.approx([80.0 * 10 / 3600] * 5)
    # up to the last repeat a feed got (at 59.01 s): a held value's last second before the data ends is not counted
    assert REPEAT_EVERY == 1.0 and sum(distance) == pytest.approx(80.0 * 59.01 / 3600)
    assert [v for _, v in rows["metric.over_speed_share"]] == pytest.approx([1.0] * 6)
    assert [v for _, v in rows["Vehicle.Speed.count"]] == [11, 10, 10, 10, 10, 10]
    assert [v for _, v in rows["Vehicle.Speed.mean"]] == [80.0] * 6
    assert [v for _, v in rows["Vehicle.Acceleration.Longitudinal.mean"]] == [0.5] * 6
    assert rows["Vehicle.Speed"] == [(START, 80.0)]  # the raw stream records a change, once


@pytest.mark.parametrize("glitch", [float_car.NAN, float_car.INF, -float_car.INF])
def test_a_nan_or_infinite_reading_is_recorded_raw_but_counts_in_no_metric(tmp_path, capsys, glitch):
    """One invalid speed and acceleration at 30 s: the windows' figures are those of the other samples.

    The NaN made the window's distance and both means NaN; an infinity made them infinite.
    """
    rows = drive(tmp_path, capsys, speed=lambda k: glitch if k == 3000 else 80.0,
                 accel=lambda k: glitch if k == 3000 else 0.5)
    distance = [v for _, v in rows["metric.distance_km"]]
    assert distance[:5] == pytest.approx([80.0 * 10 / 3600] * 5)
    assert [v for _, v in rows["Vehicle.Speed.mean"]] == [80.0] * 6
    assert [v for _, v in rows["Vehicle.Speed.max"]] == [80.0] * 6
    assert [v for _, v in rows["Vehicle.Acceleration.Longitudinal.mean"]] == [0.5] * 6
    raw = rows["Vehicle.Speed"]  # the owner's raw stream: what the bus said, in the JSON export's spelling
    assert [t for t, _ in raw] == [START, START + 30.0, START + 30.01]
    spelled = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
    assert raw[0][1] == 80.0 and raw[2][1] == 80.0
    assert str(raw[1][1]) in spelled and (spelled[raw[1][1]] == glitch or math.isnan(glitch))
