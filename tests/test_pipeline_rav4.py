"""The real 2017 RAV4 log through the whole pipeline, checked against comma's independent ground truth."""

from __future__ import annotations

import bisect
import csv
import json

import pytest

from carledger.cli import main
from conftest import shared_path


@pytest.fixture(scope="module")
def rav4_store(tmp_path_factory):
    folder = shared_path("logs", "comma2k19_rav4_2017")
    store = tmp_path_factory.mktemp("rav4") / "ledger"
    code = main([
        "run", "--replay", str(folder / "comma2k19_rav4_2017_seg40_bus0.log"),
        "--dbc", str(folder / "toyota_rav4_2017_pt_generated.dbc"),
        "--store", str(store), "--stream", "wheels=WHEEL_SPEEDS.*", "--stream", "all=*", "--fast",
    ])
    assert code == 0
    return folder, store


def test_wheel_speeds_match_comma_ground_truth(rav4_store, capsys, tmp_path):
    folder, store = rav4_store
    out = tmp_path / "wheels.jsonl"
    assert main(["log", "export", str(store), "--stream", "wheels", "--format", "jsonl", "-o", str(out)]) == 0
    series: dict[str, tuple[list[float], list[float]]] = {}
    for line in out.read_text().splitlines():
        row = json.loads(line)
        assert row["message"] == "WHEEL_SPEEDS" and row["name"] == f"WHEEL_SPEEDS.{row['signal']}"
        times, values = series.setdefault(row["signal"], ([], []))
        times.append(row["t"])
        values.append(row["value"])
    assert sorted(series) == ["WHEEL_SPEED_FL", "WHEEL_SPEED_FR", "WHEEL_SPEED_RL", "WHEEL_SPEED_RR"]

    with open(folder / "groundtruth_speed.csv") as f:
        truth = [(float(r["t_boot_s"]), float(r["v0"])) for r in csv.DictReader(f)]
    worst = 0.0
    for t, v in truth:
        wheels = []
        for times, values in series.values():
            i = bisect.bisect_right(times, t + 1e-6) - 1
            assert i >= 0, f"no wheel speed recorded by t={t}"
            wheels.append(values[i])
        mean_ms = sum(wheels) / 4 / 3.6
        worst = max(worst, abs(mean_ms - v))
    assert len(truth) == 4974
    assert worst <= 0.01, f"worst difference {worst:.4f} m/s"


def test_the_ledger_verifies_and_holds_every_stream(rav4_store, capsys):
    _, store = rav4_store
    capsys.readouterr()
    assert main(["verify", str(store), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["problems"] == []
    assert set(report["streams"]) == {"wheels", "all", "health", "audit"}  # audit: the --stream policy applied
    assert report["streams"]["wheels"]["records"] > 4 * 1000
    assert report["streams"]["all"]["records"] > report["streams"]["wheels"]["records"]


def test_csv_export_has_one_sample_per_line(rav4_store, capsys):
    _, store = rav4_store
    capsys.readouterr()
    assert main(["log", "export", str(store), "--stream", "wheels", "--format", "csv"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["t", "stream", "seq", "name", "message", "signal", "value"]  # docs/exports.md
    assert all(len(r) == 7 and r[1] == "wheels" and r[4] == "WHEEL_SPEEDS" for r in rows[1:])
    times = [r[0] for r in rows[1:]]  # ISO 8601 UTC by default: sorts as text
    assert times == sorted(times)
