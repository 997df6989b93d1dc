"""Exports read the same wherever a command writes samples (docs/exports.md), and a capture counts the same everywhere.

`log export`, `read` and `edr export` share the format names, the CSV
columns, the time styles (`--time iso|epoch|relative`) and the rounding of
values to what their DBC signal can carry; `log list` and `log show` write
times the same way. A crash capture has one record count, whichever command
tells it: the agent's log line, `edr list`, `edr export` and `verify`.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest

from carledger.cli import main
from carledger.config import load_config
from carledger.dbc import path as dbc_path
from carledger.ledger import Ledger, Store, decode_record, open_block
from carledger.ledger.encrypt import RecordSealer, create_private_key, recipient_kid
from carledger.pipeline import Pipeline
from test_edr import agent_config, edr_policy, record

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
SPEED = 5848 * 0.01  # what raw 5848 of ABS_SPEED.VehicleSpeed (scale 0.01) decodes to: 58.480000000000004
COLUMNS = "t,stream,seq,name,message,signal,value"
DBC = dbc_path("carledger_demo.dbc")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, Path]:
    """Stream `speed` (plain, 3 blocks) and `insurer` (encrypted to the returned key), both the same samples."""
    folder = tmp_path_factory.mktemp("exports")
    key = create_private_key(folder / "insurer.key")
    with Ledger.open(folder / "s", "car-1") as ledger:
        ledger.writer("insurer").sealer = RecordSealer([key.public_key])
        for seq in range(3):
            for name in ("speed", "insurer"):
                ledger.writer(name).add_sample(T0 + seq, "Vehicle.Speed", SPEED + seq, "ABS_SPEED.VehicleSpeed")
            ledger.seal()
    return folder / "s", folder / "insurer.key"


def run(capsys, *argv: str) -> list[str]:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out.splitlines()


def test_log_export_and_read_write_the_same_csv(store, capsys):
    path, key = store
    exported = run(capsys, "log", "export", str(path), "--stream", "speed", "--format", "csv")
    read = run(capsys, "read", str(path), "--stream", "speed", "--format", "csv")
    assert exported == read == [
        COLUMNS,
        "2023-11-14T22:13:20.000000Z,speed,0,Vehicle.Speed,ABS_SPEED,VehicleSpeed,58.48",
        "2023-11-14T22:13:21.000000Z,speed,1,Vehicle.Speed,ABS_SPEED,VehicleSpeed,59.48",
        "2023-11-14T22:13:22.000000Z,speed,2,Vehicle.Speed,ABS_SPEED,VehicleSpeed,60.48",
    ]
    decrypted = run(capsys, "read", str(path), "--stream", "insurer", "--key", str(key), "--format", "csv")
    assert decrypted[1] == "2023-11-14T22:13:20.000000Z,insurer,0,Vehicle.Speed,ABS_SPEED,VehicleSpeed,58.48"


@pytest.mark.parametrize("mode, first, second", [
    ("epoch", "1700000000.000000", "1700000001.000000"),
    ("relative", "0.000000", "1.000000"),
    ("iso", "2023-11-14T22:13:20.000000Z", "2023-11-14T22:13:21.000000Z"),
])
def test_time_styles_like_candump_t(store, capsys, mode, first, second):
    path, _ = store
    for command in (["log", "export", str(path), "--stream", "speed"], ["read", str(path), "--stream", "speed"]):
        rows = list(csv.reader(run(capsys, *command, "--format", "csv", "--time", mode)))
        assert [rows[1][0], rows[2][0]] == [first, second]


def test_jsonl_is_for_programs_epoch_numbers_unless_asked(store, capsys):
    path, _ = store
    (line, *_) = run(capsys, "log", "export", str(path), "--stream", "speed")
    assert json.loads(line) == {"t": T0, "stream": "speed", "seq": 0, "name": "Vehicle.Speed", "message": "ABS_SPEED",
                                "signal": "VehicleSpeed", "value": 58.48}
    (line, *_) = run(capsys, "read", str(path), "--stream", "speed", "--time", "iso")
    assert json.loads(line)["t"] == "2023-11-14T22:13:20.000000Z"


def test_rounding_is_at_output_only_the_signed_record_keeps_the_decoded_value(store, capsys):
    path, _ = store
    with Store.open_readonly(path) as s:
        row = next(s.iter_blocks("speed"))
        (raw,) = open_block(s.message(row), s.verify_key).records
    assert decode_record(raw).value == SPEED == 58.480000000000004


def test_with_the_dbc_values_round_to_the_signals_resolution(tmp_path, capsys):
    """A value the DBC could not produce (finer than 0.01) shows at the signal's resolution with --dbc."""
    with Ledger.open(tmp_path / "s", "car-1") as ledger:
        ledger.writer("speed").add_sample(T0, "Vehicle.Speed", 58.4812345, "ABS_SPEED.VehicleSpeed")
    rows = run(capsys, "log", "export", str(tmp_path / "s"), "--stream", "speed", "--format", "csv")
    assert rows[1].endswith(",58.4812345")
    rows = run(capsys, "log", "export", str(tmp_path / "s"), "--stream", "speed", "--format", "csv", "--dbc", DBC)
    assert rows[1].endswith(",58.48")


def test_log_list_and_show_write_times_as_the_exports_do(store, capsys):
    path, _ = store
    lines = run(capsys, "log", "list", str(path))
    assert lines[1].split() == ["stream", "blocks", "records", "seq", "from", "to", "acked"]
    (speed,) = [line for line in lines if line.startswith("speed ")]
    assert speed.split() == ["speed", "3", "3", "0..2", "2023-11-14T22:13:20.000000Z", "2023-11-14T22:13:22.000000Z", "0"]
    (speed,) = [line for line in run(capsys, "log", "list", str(path), "--time", "epoch") if line.startswith("speed ")]
    assert speed.split()[4:6] == ["1700000000.000000", "1700000002.000000"]
    shown = run(capsys, "log", "show", str(path), "--stream", "speed", "--seq", "1")
    assert "      t0: 2023-11-14T22:13:21.000000Z" in shown
    assert shown[-1] == "  2023-11-14T22:13:21.000000Z  Vehicle.Speed = 59.48  (ABS_SPEED.VehicleSpeed)"


# -- crash captures: one count everywhere, and the same exports ------------------------------------


def crash_store(folder: Path, handler: logging.Handler | None = None) -> tuple[Path, Path]:
    """A real crash (the simulated car's `crash` scenario) through the agent, captured for the key `owner`."""
    create_private_key(folder / "owner.key")
    log = record(folder / "crash.log", "crash")
    keys = {"owner": folder / "owner.key"}
    config = agent_config(folder / "car", log, edr_policy(keys, "owner"))
    if handler is not None:
        logging.getLogger("carledger.edr").addHandler(handler)
    try:
        Pipeline(load_config(config)).run()
    finally:
        if handler is not None:
            logging.getLogger("carledger.edr").removeHandler(handler)
    return folder / "car" / "ledger", keys["owner"]


@pytest.fixture(scope="module")
def crash(tmp_path_factory) -> dict:
    """A real crash through the agent; the agent's own log line about the capture."""
    handler = _Lines()
    store, key = crash_store(tmp_path_factory.mktemp("crash"), handler)
    (line,) = [m for m in handler.lines if "complete (" in m]
    return {"store": store, "key": key, "log": line}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_capture_has_one_record_count_everywhere(crash, capsys):
    match = re.fullmatch(r"crash capture 1: complete \((\d+) records, blocks (\d+)-(\d+)\)", crash["log"])
    assert match, crash["log"]
    records, first, last = match.groups()
    store, key = str(crash["store"]), str(crash["key"])

    capsys.readouterr()
    assert main(["edr", "list", store, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["captures"]
    assert listed["records"] == int(records) and listed["data_seqs"] == [int(first), int(last)]
    table = run(capsys, "edr", "list", store)
    assert table[0].split()[:8] == ["capture", "trigger", "time", "(UTC)", "trigger", "delta-v", "records", "blocks"]
    assert table[1].split()[5:7] == [records, f"{first}-{last}"]

    assert main(["edr", "export", store, "--key", key, "--format", "csv", "-o", str(crash["store"].parent / "c.csv")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"capture 1: {records} records in blocks {first}-{last} (") and \
        err[-1].endswith("), signatures and chain verified")

    lines = run(capsys, "verify", store)
    assert f"crash capture 1: {records} records in blocks {first}-{last} (complete)" in lines
    (report,) = run(capsys, "verify", store, "--json")
    assert json.loads(report)["captures"] == [
        {"capture": 1, "records": int(records), "data_seqs": [int(first), int(last)], "status": "complete"}]


def test_edr_export_writes_the_common_columns_and_rounded_values(crash, capsys):
    out = crash["store"].parent / "crash.csv"
    assert main(["edr", "export", str(crash["store"]), "--key", str(crash["key"]), "--format", "csv", "-o", str(out)]) == 0
    rows = list(csv.reader(out.read_text().splitlines()))
    assert ",".join(rows[0]) == COLUMNS
    speeds = [r for r in rows[1:] if r[3] == "Vehicle.Speed"]
    assert speeds and all(r[1] == "crash" and r[4:6] == ["ABS_SPEED", "VehicleSpeed"] for r in speeds)
    assert all(re.fullmatch(r"-?\d+(\.\d{1,2})?", r[6]) for r in speeds), [r[6] for r in speeds if len(r[6]) > 6][:3]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r[0]) for r in rows[1:])


def test_edr_export_with_the_wrong_key_says_whose_keys_open_it(crash, tmp_path, capsys):
    stranger = create_private_key(tmp_path / "stranger.key")
    capsys.readouterr()
    assert main(["edr", "export", str(crash["store"]), "--key", str(tmp_path / "stranger.key")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"carledger: capture 1 is not encrypted to key {recipient_kid(stranger.public_key).hex()} (its keys: owner)"]


def test_log_export_leaves_out_blocks_that_fail_with_one_line_per_cause(tmp_path, capsys):
    import sqlite3

    with Ledger.open(tmp_path / "s", "car-1") as ledger:
        for seq in range(6):
            ledger.writer("speed").add_sample(T0 + seq, "Vehicle.Speed", float(seq), "ABS_SPEED.VehicleSpeed")
            ledger.seal()
    db = sqlite3.connect(tmp_path / "s" / "ledger.sqlite")
    with db:  # the last byte of the signatures of seqs 1..4 flipped: one cause, four blocks
        for row_id, sign1 in db.execute("SELECT id, sign1 FROM blocks WHERE stream = 'speed' AND seq BETWEEN 1 AND 4").fetchall():
            db.execute("UPDATE blocks SET sign1 = ? WHERE id = ?", (sign1[:-1] + bytes([sign1[-1] ^ 1]), row_id))
    db.close()
    capsys.readouterr()
    assert main(["log", "export", str(tmp_path / "s"), "--stream", "speed", "--format", "csv"]) == 1
    captured = capsys.readouterr()
    assert [row.split(",")[2] for row in captured.out.splitlines()[1:]] == ["0", "5"]
    (line,) = captured.err.splitlines()
    assert line == "carledger: left out: signature does not verify: 4 blocks (speed seq 1..4)"


def test_a_value_computed_from_a_vss_signal_names_that_signal(crash, capsys):
    """Delta-V is computed from Vehicle.Speed: no DBC message, the VSS path as its signal."""
    lines = run(capsys, "edr", "export", str(crash["store"]), "--key", str(crash["key"]), "--format", "jsonl")
    delta = [json.loads(line) for line in lines if '"edr.DeltaV.Longitudinal"' in line]
    assert delta and {(d["message"], d["signal"]) for d in delta} == {("", "Vehicle.Speed")}
