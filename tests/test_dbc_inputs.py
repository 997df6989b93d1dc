"""DBC inputs that used to pass silently: a file cut off mid-statement, one message name with two ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from carledger.decode.dbcfile import DbcError, check_message_names, load_dbc

from conftest import REPO, shared_path

RAV4_DBC = ("logs", "comma2k19_rav4_2017", "toyota_rav4_2017_pt_generated.dbc")


def cut_inside_signal(tmp_path: Path, signal_number: int = 40) -> tuple[Path, int, str]:
    """The real RAV4 DBC cut in the middle of its n-th SG_ line: (file, that line's number, the signal)."""
    lines = shared_path(*RAV4_DBC).read_text().splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if line.lstrip().startswith("SG_ ")][signal_number]
    signal = lines[at].split()[1]
    path = tmp_path / "cut.dbc"
    path.write_text("".join(lines[:at]) + lines[at][:25])
    return path, at + 1, signal


def carledger(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carledger", *args], capture_output=True, text=True, timeout=120)


# -- item 10: a DBC cut off in the middle of a signal --------------------------------------------


def test_dbc_cut_inside_a_signal_warns_with_the_line(tmp_path):
    path, line, signal = cut_inside_signal(tmp_path)
    loaded = load_dbc(path)
    assert loaded.warnings == [
        f"{path}:{line}: the file ends inside signal '{signal}' of message 'ENGINE_RPM' (cut off?); "
        "the partial signal is not loaded"
    ]


def test_dbc_cut_inside_a_signal_is_rejected_when_strict(tmp_path):
    path, line, signal = cut_inside_signal(tmp_path)
    with pytest.raises(DbcError) as caught:
        load_dbc(path, strict=True)
    assert caught.value.line == line
    assert str(caught.value) == (
        f"{path}:{line}: the file ends inside signal '{signal}' of message 'ENGINE_RPM' (cut off?) (strict: not repaired)"
    )


def test_dbc_check_shows_the_cut(tmp_path):
    path, line, _ = cut_inside_signal(tmp_path)
    result = carledger("dbc", "check", str(path))
    assert result.returncode == 0
    assert f"  warning: {path}:{line}: the file ends inside signal" in result.stdout
    strict = carledger("dbc", "check", "--strict", str(path))
    assert strict.returncode == 1
    assert strict.stdout.startswith(f"REJECTED {path}:{line}: the file ends inside signal")


def test_dbc_cut_inside_a_message_line_warns(tmp_path):
    lines = shared_path(*RAV4_DBC).read_text().splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if line.startswith("BO_ ")][5]
    path = tmp_path / "cut.dbc"
    path.write_text("".join(lines[:at]) + "BO_ 37 STEER")
    assert load_dbc(path).warnings == [
        f"{path}:{at + 1}: the file ends inside message 'STEER' (cut off?); the partial message is not loaded"
    ]


def test_a_complete_dbc_without_a_final_newline_has_no_warning(tmp_path):
    text = shared_path(*RAV4_DBC).read_text()
    path = tmp_path / "whole.dbc"
    path.write_text(text.rstrip("\n"))
    assert load_dbc(path).warnings == []


# -- item 7: one message name, two ids ------------------------------------------------------------


def _bo_line(path: Path, name: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith("BO_ ") and f" {name}:" in line)


def test_one_message_name_with_two_ids_is_refused_naming_both_files_and_lines():
    first = shared_path("dbc", "cantools", "floating_point.dbc")  # Message1 is 0x400
    second = shared_path("dbc", "cantools", "multiplex.dbc")  # Message1 is 0x123456, extended
    with pytest.raises(DbcError) as caught:
        check_message_names([load_dbc(first), load_dbc(second)])
    assert str(caught.value) == (
        f"{second}:{_bo_line(second, 'Message1')}: message 'Message1' has id 0x00123456 (extended) here and 0x400 in "
        f"{first}:{_bo_line(first, 'Message1')}; their samples would share the name: rename the message in one of the files"
    )


def test_the_same_message_in_two_files_is_one_message():
    demo = REPO / "dbc" / "carledger_demo.dbc"
    check_message_names([load_dbc(demo), load_dbc(demo)])  # no error: same names, same ids


def test_replay_with_clashing_dbcs_exits_2_with_one_line(tmp_path):
    demo = REPO / "dbc" / "carledger_demo.dbc"
    clash = tmp_path / "other.dbc"
    clash.write_text(demo.read_text().replace("BO_ 180 ABS_SPEED:", "BO_ 181 ABS_SPEED:"))
    log = tmp_path / "drive.log"
    log.write_text("(1700000000.000000) can0 0B4#0000000000000000\n")
    result = carledger("run", "--replay", str(log), "--dbc", str(demo), "--dbc", str(clash),
                       "--store", str(tmp_path / "ledger"), "--stream", "all=*", "--fast")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]
    line = _bo_line(demo, "ABS_SPEED")
    assert errors == [
        f"carledger: {clash}:{line}: message 'ABS_SPEED' has id 0x0B5 here and 0x0B4 in {demo}:{line}; "
        "their samples would share the name: rename the message in one of the files"
    ]
