"""`carledger run`'s summary says what happened to the log's frames and why a stream recorded nothing."""

from __future__ import annotations

import json

import pytest

from carledger.cli import main
from carledger.dbc import path as dbc_path
from carledger_sim.cli import main as sim
from conftest import REPO, shared_path

DEMO_DBC = dbc_path("carledger_demo.dbc")
EXAMPLE_POLICY = str(REPO / "docs" / "policy.example.toml")


@pytest.fixture
def old_drive(tmp_path):
    """A 20-second city drive recorded in 2023, years before the example policy's consents begin (2026)."""
    path = tmp_path / "drive.log"
    assert sim(["record", "--scenario", "city", "--seed", "1", "--duration", "20", "-o", str(path),
                "--start-time", "2023-11-15T12:00:00Z"]) == 0
    return path


def _run(capsys, *args: str) -> list[str]:
    capsys.readouterr()
    assert main(["run", *args]) == 0
    return [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]


def test_the_example_policy_on_an_old_log_says_which_streams_recorded_nothing_and_why(old_drive, tmp_path, capsys):
    store = tmp_path / "ledger"
    lines = _run(capsys, "--replay", str(old_drive), "--dbc", DEMO_DBC, "--store", str(store),
                 "--policy", EXAMPLE_POLICY, "--fast")
    assert "  stream fleet: nothing recorded, its consent starts 2026-11-01 and the log ends 2023-11-15" in lines
    assert "  stream insurer: nothing recorded, its consent starts 2026-11-01 and the log ends 2023-11-15" in lines
    assert "  stream workshop: nothing recorded, its consent starts 2026-11-15 and the log ends 2023-11-15" in lines
    assert "  stream vault: 244 records (243 samples, 1 declared event)" in lines  # local: no consent to miss


def test_the_summary_counts_the_log_s_frames_step_by_step(old_drive, tmp_path, capsys):
    # Half the frames on another channel: read, but not on the channel the replay reads.
    lines = old_drive.read_text().splitlines()
    two = tmp_path / "two.log"
    two.write_text("".join(line + "\n" + line.replace(" can0 ", " can1 ") + "\n" for line in lines))
    out = _run(capsys, "--replay", str(two), "--channel", "can1", "--dbc", DEMO_DBC, "--store", str(tmp_path / "l"),
               "--stream", "speed=Vehicle.Speed", "--fast")
    assert out[0] == "read 21,400 frames, 10,700 on channel can1, 10,700 matched the DBC, 2,000 decoded for a stream"
    assert out[1] == f"sealed 1,193 records (1,192 samples, 1 declared event) in 19 blocks into {tmp_path / 'l'}"
    assert out[2] == "  stream speed: 1,193 records (1,192 samples, 1 declared event)"
    assert out[3].startswith("took ")


def test_a_dbc_that_matches_no_frame_of_the_log_is_called_probably_the_wrong_one(old_drive, tmp_path, capsys):
    wrong = str(shared_path("dbc", "opendbc", "ESR.dbc").resolve())
    out = _run(capsys, "--replay", str(old_drive), "--dbc", wrong, "--store", str(tmp_path / "l"),
               "--stream", "all=*", "--fast")
    assert out[0] == "read 10,700 frames, 0 matched the DBC, 0 decoded for a stream"
    assert f"warning: the DBC ({wrong}) matches not one of the 10,700 frames read: it is probably the wrong DBC for this car" in out


def test_run_json_prints_the_summary_as_one_object(old_drive, tmp_path, capsys):
    store = tmp_path / "ledger"
    capsys.readouterr()
    assert main(["run", "--replay", str(old_drive), "--dbc", DEMO_DBC, "--store", str(store),
                 "--policy", EXAMPLE_POLICY, "--fast", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    bus = summary["buses"]["replay"]
    assert (bus["frames_in_log"], bus["frames_on_channels"], bus["frames_matched_dbc"], bus["wrong_dbc"]) == \
        (10_700, 10_700, 10_700, False)
    assert (summary["records"], summary["samples"], summary["events"]) == (244, 243, 1)
    assert summary["streams"]["vault"] == {"records": 244, "samples": 243, "events": 1}
    assert summary["streams"]["insurer"]["nothing_recorded"] == {
        "consent_starts": "2026-11-01", "consent_ended": None, "data_starts": "2023-11-15", "data_ends": "2023-11-15",
    }
    assert summary["store"] == str(store) and summary["blocks"] > 0


def test_an_encrypted_stream_counts_the_records_it_recorded_not_its_sealed_containers(tmp_path, capsys):
    import time
    from datetime import datetime, timezone

    from carledger.ledger.encrypt import create_private_key

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

    now = time.time()
    key = create_private_key(tmp_path / "fleet.key")
    drive = tmp_path / "drive.log"
    assert sim(["record", "--scenario", "city", "--seed", "1", "--duration", "20", "-o", str(drive)]) == 0  # now
    (tmp_path / "policy.toml").write_text(f"""version = 1
[[stream]]
name = "fleet"
recipient = "Fleet Ops"
purpose = "maintenance"
signals = ["Vehicle.Speed"]
encrypt_to = "{bytes(key.public_key).hex()}"
consent = {{ granted = {iso(now - 86400)}, expires = {iso(now + 30 * 86400)} }}
[[stream]]
name = "mine"
local = true
signals = ["Vehicle.Speed"]
""")
    summary = _run(capsys, "--replay", str(drive), "--dbc", DEMO_DBC, "--store", str(tmp_path / "l"),
                   "--policy", str(tmp_path / "policy.toml"), "--fast")
    mine = next(line for line in summary if line.startswith("  stream mine: "))
    assert mine == "  stream mine: 1,193 records (1,192 samples, 1 declared event)"
    assert mine.replace("mine", "fleet") in summary
