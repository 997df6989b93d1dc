"""`carledger policy check|show|diff`: exit codes, problem lines, plain-language summaries, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carledger import cli
from carledger.dbc import path as shipped

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "policy.example.toml"
AT = ["--at", "2026-12-01"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["policy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


BAD = """\
version = 0
[[stream]]
name = "a"
recipient = "R"
purpose = "p"
signals = ["Vehicle.Speed", "Vehicle.CurrentLocation.Latitude"]
consent = { granted = 2026-11-01T00:00:00Z }
"""


def test_check_valid_example(capsys) -> None:
    code, out, _ = run(capsys, "check", str(EXAMPLE), *AT)
    assert code == 0
    assert out.startswith(f"OK {EXAMPLE} (version 3, 4 streams, crash capture; digest ")


def test_check_prints_every_problem_and_exits_1(tmp_path: Path, capsys) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(BAD)
    code, out, _ = run(capsys, "check", str(path), *AT)
    assert code == 1
    assert out.splitlines() == [
        f"{path}:1: version: must be an integer of at least 1 (it only goes up), got 0",
        f"{path}:6: stream[0].signals[1]: class not allowed: 'Vehicle.CurrentLocation.Latitude' names location "
        "signals, which stream 'a' does not allow; add allow = [\"location\"] to send them",
        f"{path}:7: stream[0].consent.expires: required: consent must expire (no consent is forever; at most 2 years)",
    ]
    code, out, _ = run(capsys, "check", "--json", str(path), *AT)
    report = json.loads(out)
    assert code == 1 and report["valid"] is False
    assert [(p["line"], p["field"]) for p in report["problems"]] == [
        (1, "version"), (6, "stream[0].signals[1]"), (7, "stream[0].consent.expires")]


def test_check_exit_codes_for_unreadable_and_syntax(tmp_path: Path, capsys) -> None:
    code, out, err = run(capsys, "check", str(tmp_path / "missing.toml"))
    assert code == 2 and "no such file" in err and out == ""
    syntax = tmp_path / "syntax.toml"
    syntax.write_text("version = 1\n[[stream]\n")
    code, out, _ = run(capsys, "check", str(syntax))
    assert code == 1 and out.startswith(f"{syntax}:2: TOML syntax")
    code, _, err = run(capsys, "check", "--dbc", str(tmp_path / "nope.dbc"), str(EXAMPLE), *AT)
    assert code == 2 and "cannot read the vehicle's signals" in err
    assert cli.main(["policy"]) == 2


def test_signal_names_are_checked_against_the_dbc(tmp_path: Path, capsys) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('version = 1\n[[stream]]\nname = "mine"\nlocal = true\nsignals = ["MY_ECU.Boost"]\n')
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1 and "unknown signal pattern 'MY_ECU.Boost'" in out
    assert run(capsys, "check", "--no-dbc", str(path))[0] == 0
    code, out, _ = run(capsys, "check", "--dbc", shipped("carledger_demo.dbc"), str(EXAMPLE), *AT)
    assert code == 0


def test_show_says_what_goes_where_and_what_never_leaves(capsys) -> None:
    code, out, _ = run(capsys, "show", "--dbc", shipped("carledger_demo.dbc"), str(EXAMPLE), *AT)
    assert code == 0
    assert 'Stream "insurer" goes to Acme Insurance, for "pay-how-you-drive premium"' in out
    assert 'Stream "fleet" goes to Fleet Ops B.V.' in out
    assert "expires 2027-11-01" in out and "expires 2027-05-01" in out
    assert "Vehicle.Speed (rounded to 5)" in out
    assert "location: rounded to 2 decimal places (about 1.11 km)" in out
    assert "share of driving between 22:00 and 05:00" in out
    assert 'Stream "vault" stays in the car' in out
    never = out.split("Never leaves the car:")[1]
    assert "personal signals" in never
    assert "inside privacy zone home" in never and "inside privacy zone work" in never
    assert "the VIN" in never


def test_show_json_and_expired_consent(tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "show", "--json", str(EXAMPLE), *AT)
    document = json.loads(out)
    assert code == 0 and document["version"] == 3 and len(document["digest"]) == 64
    fleet = next(s for s in document["streams"] if s["name"] == "fleet")
    assert fleet["recipient"] == "Fleet Ops B.V." and fleet["consent"]["expires"] == "2027-05-01T00:00:00Z"
    assert fleet["precision"] == [["Vehicle.Speed", 5], ["Vehicle.Powertrain.CombustionEngine.ECT", 1.0]]
    assert any("personal signals" in line for line in document["never_leaves"])
    code, out, _ = run(capsys, "show", str(EXAMPLE), "--at", "2027-06-01")
    assert code == 0 and "expires 2027-05-01 - EXPIRED" in out


def test_show_empty_policy(tmp_path: Path, capsys) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    code, out, _ = run(capsys, "show", str(path))
    assert code == 0 and "nothing is collected but the agent's own health" in out


def test_diff_in_plain_language(tmp_path: Path, capsys) -> None:
    text = EXAMPLE.read_text()
    new = (
        text.replace("version = 3", "version = 4")
        .replace('"Vehicle.Speed" = 5,', '"Vehicle.Speed" = 10,')
        .replace("location = { decimals = 2 }", "location = { geohash = 5 }")
        .replace('  "BCM_STATUS.BatteryVoltage",\n', '  "Vehicle.Exterior.AirTemperature",\n')
        .replace("expires = 2027-05-01T00:00:00Z", "expires = 2027-08-01T00:00:00Z")
        .replace('name = "workshop"', 'name = "dealer"')
    )
    path = tmp_path / "new.toml"
    path.write_text(new)
    code, out, _ = run(capsys, "diff", str(EXAMPLE), str(path), *AT)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "version 3 -> 4"
    assert 'stream "fleet" changed:' in lines
    for expected in (
        "  signals added: Vehicle.Exterior.AirTemperature",
        "  signals removed: BCM_STATUS.BatteryVoltage",
        "  precision of Vehicle.Speed: 5 -> 10 (coarser)",
        "  location: rounded to 2 decimal places (about 1.11 km) -> as a geohash of 5 characters (cells about 4.89 km) (coarser)",
        "  consent expires 2027-05-01 -> 2027-08-01 (extended)",
    ):
        assert expected in lines, out
    assert any(line.startswith('stream "dealer" added: to Garage Janssen') for line in lines)
    assert 'stream "workshop" removed: Garage Janssen no longer receives anything from it' in lines

    code, out, _ = run(capsys, "diff", "--json", str(EXAMPLE), str(path), *AT)
    report = json.loads(out)
    assert code == 0 and report["old_version"] == 3 and report["new_version"] == 4
    assert {"scope": "stream", "name": "fleet", "field": "consent.expires", "old": "2027-05-01T00:00:00Z",
            "new": "2027-08-01T00:00:00Z", "text": "consent expires 2027-05-01 -> 2027-08-01 (extended)"} in report["changes"]


def test_diff_without_changes_and_version_not_up(tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "diff", str(EXAMPLE), str(EXAMPLE), *AT)
    assert code == 0 and out.strip() == "no changes"
    path = tmp_path / "new.toml"
    path.write_text(EXAMPLE.read_text().replace('retention = "30d"', 'retention = "60d"'))
    code, out, _ = run(capsys, "diff", str(EXAMPLE), str(path), *AT)
    assert "  kept in the car: 30 days -> 60 days" in out.splitlines()
    assert "note: the version did not go up (3 -> 3)" in out


def test_diff_with_an_invalid_policy_exits_1(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    code, out, _ = run(capsys, "diff", str(EXAMPLE), str(path), *AT)
    assert code == 1 and f"{path}:1: version:" in out
    assert run(capsys, "diff", str(EXAMPLE), str(tmp_path / "missing.toml"))[0] == 2


@pytest.mark.parametrize("action", ["check", "show", "diff"])
def test_help(action: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["policy", action, "--help"])
    assert info.value.code == 0
    assert "--json" in capsys.readouterr().out
