"""Loading real, messy DBC files: repair what is broken, or reject in one line; never a traceback."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import cantools
import pytest

import carledger.cli as cli
from carledger.decode import dbcfile
from carledger.decode.dbcfile import DbcError, LoadedDbc, load_dbc

from conftest import SHARED_DATA, shared_path

# The opendbc files that cantools 45.1 cannot load as they are (../shared/data/README.md).
KNOWN_PROBLEM_FILES = (
    "_vw_meb_common.dbc",
    "vw_mqbevo.dbc",
    "toyota_2017_ref_pt.dbc",
    "honda_accord_2018_can_generated.dbc",
    "honda_civic_touring_2016_can_generated.dbc",
    "hyundai_kia_generic.dbc",
    "hyundai_canfd.dbc",
    "mazda_2017.dbc",
    "psa_aee2010_r3.dbc",
    "chrysler_pacifica_2017_hybrid_generated.dbc",
    "rivian_primary_actuator.dbc",
    "tesla_can.dbc",
    "toyota_nodsu_pt_generated.dbc",
)


def _shared_dbcs() -> list[str]:
    if not SHARED_DATA.is_dir():
        return ["dbc"]  # the test skips through shared_path()
    return sorted(str(p.relative_to(SHARED_DATA)) for p in SHARED_DATA.rglob("*.dbc"))


def _opendbc(name: str) -> Path:
    return shared_path("dbc", "opendbc", name)


def _assert_one_line_with_line_number(text: str, path: str) -> None:
    assert "\n" not in text and "\r" not in text, text
    assert text.startswith(f"{path}:"), text
    assert re.match(re.escape(path) + r":\d+: \S", text), f"no line number: {text}"


def _outcome(path: Path | str) -> LoadedDbc | DbcError:
    """load_dbc's result or its DbcError; any other exception fails the test."""
    try:
        return load_dbc(path)
    except DbcError as exc:
        return exc


def _bo_names(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [n for n in re.findall(r"^\s*BO_ \d+ (\w+)\s*:", text, re.M) if n != "VECTOR__INDEPENDENT_SIG_MSG"]


def _write(tmp_path: Path, text: str, name: str = "test.dbc") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


HEADER = 'VERSION ""\n\nNS_ :\n\tCM_\n\tBA_DEF_\n\tVAL_\n\nBS_:\n\nBU_: ECU\n\n'  # lines 1-11


# --------------------------------------------------------------------------- every shared DBC


@pytest.mark.parametrize("relpath", _shared_dbcs())
def test_every_shared_dbc_loads_or_is_rejected_in_one_line(relpath: str) -> None:
    path = shared_path(*Path(relpath).parts)
    result = _outcome(path)
    if isinstance(result, DbcError):
        _assert_one_line_with_line_number(str(result), str(path))
        return
    assert isinstance(result.database, cantools.database.can.Database)
    assert result.path == str(path)
    for warning in result.warnings:
        _assert_one_line_with_line_number(warning, str(path))


def test_known_problem_files_outcomes(record_property) -> None:
    """The 13 opendbc files cantools refuses: each loads (with warnings) or is rejected in one line."""
    shared_path("dbc", "opendbc")
    table = []
    for name in KNOWN_PROBLEM_FILES:
        path = _opendbc(name)
        text = path.read_text(encoding="utf-8")
        with pytest.raises(Exception):  # still a problem file for plain cantools
            cantools.database.load_string(text, database_format="dbc", strict=False)
        result = _outcome(path)  # any exception other than DbcError fails here
        if isinstance(result, DbcError):
            _assert_one_line_with_line_number(str(result), str(path))
            table.append((name, "rejected", str(result)))
        else:
            assert result.warnings, f"{name} needed repairs, so it must say what they were"
            table.append((name, "loaded", f"{len(result.database.messages)} messages, {len(result.warnings)} warnings"))
    loaded = sum(1 for _, outcome, _ in table if outcome == "loaded")
    summary = f"known-problem opendbc files: {loaded} loaded, {len(table) - loaded} rejected"
    print(summary)
    for row in table:
        print("  %-45s %-8s %s" % row)
    record_property("dbc_problem_files_loaded", loaded)
    record_property("dbc_problem_files_rejected", len(table) - loaded)
    assert loaded == 13, summary


# --------------------------------------------------------------------------- what the repairs keep


def test_vw_mqbevo_extended_ids_get_the_flag() -> None:
    path = _opendbc("vw_mqbevo.dbc")
    db = load_dbc(path).database
    assert len(db.messages) == len(_bo_names(path)) == 136
    camera = db.get_message_by_name("CAMERA_NEW_6")
    assert camera.is_extended_frame is True
    assert camera.frame_id == 0x12DD54A7
    assert camera.length == 32
    assert db.get_message_by_frame_id(0x12DD54A7) is camera
    # Standard messages stay standard; already flagged ones stay extended.
    assert db.get_message_by_name("Airbag_01").is_extended_frame is False
    assert db.get_message_by_name("NMH_Getriebe_01").is_extended_frame is True


def test_vw_meb_references_follow_the_repaired_id_and_decode() -> None:
    result = load_dbc(_opendbc("_vw_meb_common.dbc"))
    db = result.database
    vze = db.get_message_by_name("VZE_04")
    assert (vze.is_extended_frame, vze.frame_id) == (True, 0x12DD54A7)
    # VAL_ lines that named the old id now name the message with the flag, so choices survive.
    assert vze.get_signal_by_name("VZE_Anzeigemodus").choices[1] == "USA"
    data = vze.encode({s.name: 0 for s in vze.signals} | {"VZE_Anzeigemodus": "USA"})
    assert db.decode_message(0x12DD54A7, data)["VZE_Anzeigemodus"] == "USA"
    assert any(":1917: message 'VZE_04'" in w for w in result.warnings)


@pytest.mark.parametrize("name", ["honda_accord_2018_can_generated.dbc", "honda_civic_touring_2016_can_generated.dbc"])
def test_honda_generated_files_keep_all_messages(name: str) -> None:
    path = _opendbc(name)
    result = load_dbc(path)
    db = result.database
    assert sorted(m.name for m in db.messages) == sorted(_bo_names(path))
    dropped = [w for w in result.warnings if "names no signal" in w]
    assert [w.split(":")[1] for w in dropped] == ["153", "154"]
    gas = db.get_message_by_name("GAS_PEDAL_2")
    frame = gas.encode({"ENGINE_TORQUE_ESTIMATE": -12, "ENGINE_TORQUE_REQUEST": 34, "CAR_GAS": 56, "COUNTER": 1, "CHECKSUM": 2})
    decoded = db.decode_message(304, frame)
    assert (decoded["ENGINE_TORQUE_ESTIMATE"], decoded["CAR_GAS"]) == (-12, 56)


def test_mazda_names_starting_with_a_digit_are_prefixed() -> None:
    path = _opendbc("mazda_2017.dbc")
    result = load_dbc(path)
    db = result.database
    assert len(db.messages) == len(_bo_names(path))
    assert db.get_message_by_name("_2017_5").frame_id == 1275
    assert "_5_SEC_DISABLE_TIMER" in [s.name for s in db.get_message_by_name("CRZ_CTRL").signals]
    assert any(":273: message name '2017_5' starts with a digit; renamed to '_2017_5'" in w for w in result.warnings)


def test_psa_signal_renamed_with_its_comment() -> None:
    result = load_dbc(_opendbc("psa_aee2010_r3.dbc"))
    signal = result.database.get_message_by_name("STEERING_ALT").get_signal_by_name("_0_CHECKSUM")
    assert signal.comment == "TODO: find checksum"  # the CM_ SG_ on line 836 followed the rename


def test_chrysler_leading_dot_factor_and_decode() -> None:
    result = load_dbc(_opendbc("chrysler_pacifica_2017_hybrid_generated.dbc"))
    message = result.database.get_message_by_name("ECM_TRQ")
    assert message.get_signal_by_name("ENGINE_TORQ_MAX").scale == 0.25
    data = message.encode({s.name: 0 for s in message.signals} | {"ENGINE_TORQ_MAX": 100.25})
    assert result.database.decode_message(280, data)["ENGINE_TORQ_MAX"] == 100.25
    assert any(":20: number '.25'" in w for w in result.warnings)


def test_hyundai_comment_without_bo_keyword_is_kept() -> None:
    db = load_dbc(_opendbc("hyundai_canfd.dbc")).database
    assert db.get_message_by_frame_id(272).comment.startswith("Alternative LKAS message")


def test_toyota_missing_semicolon_keeps_both_value_tables() -> None:
    result = load_dbc(_opendbc("toyota_nodsu_pt_generated.dbc"))
    db = result.database
    assert db.get_message_by_frame_id(865).get_signal_by_name("CLUTCH_RELEASED").choices[1] == "clutch released"
    assert db.get_message_by_frame_id(921).get_signal_by_name("CRUISE_CONTROL_STATE").choices[11] == "hold"
    assert [w.split(":")[1] for w in result.warnings] == ["569"]


def test_toyota_ref_drops_only_ids_that_fit_no_can_frame() -> None:
    path = _opendbc("toyota_2017_ref_pt.dbc")
    result = load_dbc(path)
    assert len(result.database.messages) == len(_bo_names(path)) - 32 == 111
    assert len(result.warnings) == 32 and all("does not fit in 29 bits" in w for w in result.warnings)
    assert all(m.frame_id <= 0x1FFFFFFF for m in result.database.messages)


@pytest.mark.parametrize(
    ("name", "line", "signal"),
    [("rivian_primary_actuator.dbc", 876, "ACM_VehicleHoldRequired"), ("tesla_can.dbc", 783, "UI_mapSpeedLimit")],
)
def test_value_tables_for_missing_signals_are_dropped(name: str, line: int, signal: str) -> None:
    result = load_dbc(_opendbc(name))
    assert len(result.warnings) == 1
    assert f":{line}: VAL_ for signal '{signal}'" in result.warnings[0]


# --------------------------------------------------------------------------- small files written here


def test_clean_file_costs_one_parse(tmp_path, monkeypatch) -> None:
    calls = []
    real = dbcfile._parse
    monkeypatch.setattr(dbcfile, "_parse", lambda text, strict: calls.append(1) or real(text, strict))
    path = _write(tmp_path, HEADER + 'BO_ 100 ENGINE: 8 ECU\n SG_ RPM : 0|16@1+ (0.25,0) [0|16383.75] "rpm" ECU\n')
    result = load_dbc(path)
    assert len(calls) == 1 and result.warnings == []
    assert result.database.decode_message(100, bytes([0x10, 0x27, 0, 0, 0, 0, 0, 0]))["RPM"] == 2500.0


def test_warnings_name_the_original_lines(tmp_path) -> None:
    text = (
        HEADER  # lines 1-11
        + "BO_ 100 ENGINE: 8 ECU\n"  # 12
        + ' SG_ RPM : 0|16@1+ (1,0) [0|65535] "rpm" ECU\n'  # 13
        + "\n"  # 14
        + "BO_ 419361024 EEC1: 8 ECU\n"  # 15: 0x18FEF100 without the extended flag
        + ' SG_ EngineSpeed : 24|16@1+ (0.125,0) [0|8031.875] "rpm" ECU\n'  # 16
        + "\n"  # 17
        + 'CM_ BO_ 100 "A comment\nthat spans\nthree lines";\n'  # 18-20
        + 'CM_ SG_ 100 "no signal name\nand two lines";\n'  # 21-22
        + 'VAL_ 100 NO_SUCH_SIGNAL 0 "off" 1 "on" ;\n'  # 23
        + 'VAL_ 419361024 EngineSpeed 0 "stopped" ;\n'  # 24
    )
    path = _write(tmp_path, text)
    result = load_dbc(path)
    lines = {int(w.split(":")[1]): w for w in result.warnings}
    assert sorted(lines) == [15, 21, 23], result.warnings
    assert "names no signal" in lines[21] and "lines 21-22" in lines[21]
    assert "0x18FEF100" in lines[15] and "1 statement(s) that refer to it" in lines[15]
    assert "NO_SUCH_SIGNAL" in lines[23]
    db = result.database
    eec1 = db.get_message_by_name("EEC1")
    assert (eec1.is_extended_frame, eec1.frame_id) == (True, 0x18FEF100)
    assert eec1.get_signal_by_name("EngineSpeed").choices[0] == "stopped"
    assert db.get_message_by_name("ENGINE").comment == "A comment\nthat spans\nthree lines"
    assert db.decode_message(0x18FEF100, bytes([0, 0, 0, 0x40, 0x1F, 0, 0, 0]))["EngineSpeed"] == 1000.0


def test_garbage_in_a_message_line_is_rejected_with_file_and_line(tmp_path) -> None:
    text = HEADER + "BO_ 100 ENGINE: 8 ECU\n" + ' SG_ RPM : 0|16@1+ (1,0) [0|65535] "rpm" ECU\n\n' + "BO_ 200 BR@KES: 8 ECU\n"
    path = _write(tmp_path, text)
    with pytest.raises(DbcError) as info:
        load_dbc(path)
    assert str(info.value).startswith(f"{path}:15: ")
    assert "'@KES" in str(info.value) and "\n" not in str(info.value)
    assert info.value.line == 15 and info.value.path == path


@pytest.mark.parametrize("scale, offset", [("1e308", "0"), ("1e+308", "0.5"), ("1e999", "0"), ("1", "1e999"),
                                           ("1" + "0" * 320, "0")])
def test_a_signal_whose_values_a_double_cannot_hold_is_rejected_at_its_line(tmp_path, capsys, scale, offset) -> None:
    """raw × 1e308 is infinite, or with an integral scale an exact integer no float arithmetic takes:
    a metric's sum over it raised OverflowError and stopped the agent. A double's worth is fine."""
    text = (HEADER + "BO_ 100 ENGINE: 8 ECU\n" + ' SG_ RPM : 0|16@1+ (1,0) [0|65535] "rpm" ECU\n'
            + f' SG_ HUGE : 16|16@1+ ({scale},{offset}) [0|0] "" ECU\n')
    path = _write(tmp_path, text)
    with pytest.raises(DbcError) as info:
        load_dbc(path)
    _assert_one_line_with_line_number(str(info.value), str(path))
    assert info.value.line == 14 and "signal 'HUGE' of message 'ENGINE'" in str(info.value)
    assert "beyond what a double holds" in str(info.value) and len(str(info.value)) < 300
    assert cli.main(["dbc", "check", str(path)]) == 1
    assert f"REJECTED {path}:14: signal 'HUGE'" in capsys.readouterr().out
    load_dbc(_write(tmp_path, text.replace(f"({scale},{offset})", "(1e300,0)"), "fine.dbc"))  # 6.6e304: a double holds it
    floats = _write(tmp_path, text.replace(f"({scale},{offset})", "(1e300,0)").replace("16|16", "0|32").replace(
        ' SG_ RPM : 0|16@1+ (1,0) [0|65535] "rpm" ECU\n', "") + "SIG_VALTYPE_ 100 HUGE : 1;\n", "float.dbc")
    assert load_dbc(floats).database.get_message_by_name("ENGINE").signals[0].is_float  # carries inf anyway


def test_truncated_signal_line_is_rejected_at_that_line(tmp_path) -> None:
    text = HEADER + "BO_ 100 ENGINE: 8 ECU\n" + " SG_ RPM : 0|16@1+ (1,0\n" + ' SG_ TEMP : 16|8@1+ (1,-40) [-40|215] "degC" ECU\n'
    path = _write(tmp_path, text)
    with pytest.raises(DbcError, match=re.escape(f"{path}:13: signal 'RPM' of message 'ENGINE' is incomplete")):
        load_dbc(path)


def test_broken_droppable_statements_are_dropped_alone(tmp_path) -> None:
    text = (
        HEADER
        + "BO_ 100 ENGINE: 8 ECU\n"  # 12
        + ' SG_ RPM : 0|16@1+ (1,0) [0|65535] "rpm" ECU\n'  # 13
        + 'BA_DEF_ BO_ "GenMsgCycleTime" INT 0 65535;\n'  # 14
        + 'BA_ "GenMsgCycleTime" BO_ 100 @@ 20;\n'  # 15: garbage
        + 'BA_ "NotDefined" BO_ 100 1;\n'  # 16: attribute never defined
        + 'VAL_ 100 RPM 0 "stopped"\n'  # 17: no ';'
        + 'CM_ SG_ 100 RPM "Engine speed";\n'  # 18
    )
    path = _write(tmp_path, text)
    result = load_dbc(path)
    lines = sorted(int(w.split(":")[1]) for w in result.warnings)
    assert lines == [15, 16, 17], result.warnings
    rpm = result.database.get_message_by_name("ENGINE").get_signal_by_name("RPM")
    assert rpm.choices[0] == "stopped" and rpm.comment == "Engine speed"


def test_unbalanced_quote_is_rejected_not_swallowed(tmp_path) -> None:
    text = HEADER + "BO_ 100 ENGINE: 8 ECU\n" + ' SG_ RPM : 0|16@1+ (1,0) [0|65535] "rpm" ECU\n' + 'CM_ BO_ 100 "oops;\nVAL_ 100 RPM 0 "stopped" ;\nCM_ SG_ 100 RPM "x";\n'
    path = _write(tmp_path, text)
    with pytest.raises(DbcError, match=re.escape(f"{path}:14: unbalanced quote")):
        load_dbc(path)


def test_message_with_impossible_id_is_dropped_with_its_references(tmp_path) -> None:
    text = HEADER + "BO_ 4294967295 BAD: 8 ECU\n" + ' SG_ X : 0|8@1+ (1,0) [0|255] "" ECU\n' + "BO_ 100 GOOD: 8 ECU\n" + ' SG_ Y : 0|8@1+ (1,0) [0|255] "" ECU\n' + 'VAL_ 4294967295 X 0 "zero" ;\n'
    path = _write(tmp_path, text)
    result = load_dbc(path)
    assert [m.name for m in result.database.messages] == ["GOOD"]
    assert len(result.warnings) == 1 and result.warnings[0].startswith(f"{path}:12: message 'BAD'")
    with pytest.raises(DbcError, match=re.escape(f"{path}:12: message 'BAD'")):
        load_dbc(path, strict=True)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", r":1: no DBC statements found"),
        (b"\x00\x81\x8d\xff binary", r":1: not text"),
        (b'VERSION ""\n\nNS_ :\n\tCM_\n', r":3: unexpected end of file in the NS_ statement"),
        (b'VERSION ""\nthis is not a dbc file\n', r":2: syntax error in VERSION statement at 'this is not a dbc file'"),
        (b'this is not a dbc file\n', r":1: syntax error in text that is not a DBC statement"),
    ],
)
def test_hostile_files_are_rejected_in_one_line(tmp_path, content: bytes, expected: str) -> None:
    path = tmp_path / "hostile.dbc"
    path.write_bytes(content)
    with pytest.raises(DbcError) as info:
        load_dbc(path)
    _assert_one_line_with_line_number(str(info.value), str(path))
    assert re.search(expected, str(info.value)), str(info.value)


def test_unreadable_files_are_rejected_without_a_line(tmp_path) -> None:
    missing = tmp_path / "missing.dbc"
    with pytest.raises(DbcError) as info:
        load_dbc(missing)
    assert str(info.value) == f"{missing}: cannot read: No such file or directory"
    assert info.value.line is None
    with pytest.raises(DbcError, match="cannot read"):
        load_dbc(tmp_path)


def test_cp1252_file_loads_with_a_warning_naming_the_line(tmp_path) -> None:
    text = HEADER + "BO_ 100 ENGINE: 8 ECU\n" + ' SG_ TEMP : 0|8@1+ (1,-40) [-40|215] "\xb0C" ECU\n'
    path = tmp_path / "latin.dbc"
    path.write_bytes(text.encode("cp1252"))
    result = load_dbc(path)
    assert result.warnings == [f"{path}:13: not valid UTF-8 (byte 0xb0); read the file as cp1252"]
    assert result.database.get_message_by_name("ENGINE").get_signal_by_name("TEMP").unit == "\N{DEGREE SIGN}C"


def test_strict_rejects_what_would_be_repaired() -> None:
    path = _opendbc("mazda_2017.dbc")
    with pytest.raises(DbcError) as info:
        load_dbc(path, strict=True)
    assert str(info.value) == f"{path}:273: message name '2017_5' starts with a digit (strict: not repaired)"


def test_mutated_files_never_raise_anything_but_dbc_error(tmp_path) -> None:
    """Random damage to real files: every outcome is a load or a one-line DbcError with a line."""
    source = shared_path("dbc", "opendbc", "honda_civic_touring_2016_can_generated.dbc").read_bytes()
    rnd = random.Random(20240601)
    path = tmp_path / "mutated.dbc"
    outcomes = {"loaded": 0, "rejected": 0}
    for _ in range(120):
        lines = source.split(b"\n")
        for _ in range(rnd.randint(1, 3)):
            k = rnd.randrange(len(lines))
            op = rnd.randrange(5)
            if op == 0:
                del lines[k]
            elif op == 1:
                lines[k] = lines[k][: rnd.randrange(len(lines[k]) + 1)]
            elif op == 2:
                at = rnd.randrange(len(lines[k]) + 1)
                lines[k] = lines[k][:at] + bytes(rnd.choice(b'";:,()[]|@+-.x09 \xff') for _ in range(2)) + lines[k][at:]
            elif op == 3:
                lines.insert(k, lines[rnd.randrange(len(lines))])
            else:
                lines = lines[: max(k, 1)]
        path.write_bytes(b"\n".join(lines))
        result = _outcome(path)
        if isinstance(result, DbcError):
            outcomes["rejected"] += 1
            _assert_one_line_with_line_number(str(result), str(path))
        else:
            outcomes["loaded"] += 1
            for warning in result.warnings:
                _assert_one_line_with_line_number(warning, str(path))
    assert outcomes["loaded"] and outcomes["rejected"], outcomes


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def run_cli(monkeypatch, capsys):
    # Only our subcommand: the others are other people's modules and may not exist yet.
    monkeypatch.setattr(cli, "SUBCOMMANDS", ("dbc",))

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["dbc", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_check_ok_and_warnings(run_cli, tmp_path) -> None:
    good = _write(tmp_path, HEADER + 'BO_ 100 ENGINE: 8 ECU\n SG_ RPM : 0|16@1+ (1,0) [0|65535] "rpm" ECU\n', "good.dbc")
    repaired = _write(tmp_path, HEADER + 'BO_ 100 ENGINE: 8 ECU\n SG_ RPM : 0|16@1+ (1,0) [0|65535] "rpm" ECU\nCM_ SG_ 100 "x";\n', "fixed.dbc")
    code, out, _ = run_cli("check", good, repaired)
    assert code == 0
    assert out.splitlines() == [
        f"OK {good} (1 messages, 1 signals)",
        f"OK {repaired} (1 messages, 1 signals)",
        f"  warning: {repaired}:14: signal comment for message 100 (ENGINE) names no signal; dropped the comment (line 14): CM_ SG_ 100 \"x\";",
    ]


def test_cli_check_rejected_exits_1(run_cli, tmp_path) -> None:
    good = _write(tmp_path, HEADER + 'BO_ 100 ENGINE: 8 ECU\n SG_ RPM : 0|16@1+ (1,0) [0|65535] "rpm" ECU\n', "good.dbc")
    bad = _write(tmp_path, HEADER + "BO_ 100 EN GINE: 8 ECU\n", "bad.dbc")
    code, out, _ = run_cli("check", good, bad)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"OK {good} (1 messages, 1 signals)"
    assert lines[1].startswith(f"REJECTED {bad}:12: ") and len(lines) == 2


def test_cli_check_json(run_cli, tmp_path) -> None:
    bad = _write(tmp_path, HEADER + "BO_ 100 EN GINE: 8 ECU\n", "bad.dbc")
    code, out, _ = run_cli("check", "--json", bad, str(tmp_path / "missing.dbc"))
    assert code == 1
    reports = json.loads(out)
    assert [r["status"] for r in reports] == ["rejected", "rejected"]
    assert reports[0]["line"] == 12 and reports[1]["line"] is None


def test_cli_check_shared_problem_files(run_cli) -> None:
    paths = [str(_opendbc(name)) for name in ("honda_civic_touring_2016_can_generated.dbc", "tesla_can.dbc", "mazda_2017.dbc")]
    code, out, _ = run_cli("check", *paths)
    assert code == 0
    assert [line.split(" (")[0] for line in out.splitlines() if not line.startswith("  ")] == [f"OK {p}" for p in paths]


def test_cli_show_lists_messages(run_cli, tmp_path) -> None:
    text = (
        HEADER
        + "BO_ 100 ENGINE: 8 ECU\n SG_ RPM : 0|16@1+ (1,0) [0|65535] \"rpm\" ECU\n SG_ TEMP : 16|8@1+ (1,-40) [-40|215] \"degC\" ECU\n"
        + "BO_ 2566844672 EEC1: 8 ECU\n SG_ EngineSpeed : 24|16@1+ (0.125,0) [0|8031.875] \"rpm\" ECU\n"
        + 'BA_DEF_ BO_ "GenMsgCycleTime" INT 0 65535;\nBA_DEF_DEF_ "GenMsgCycleTime" 0;\nBA_ "GenMsgCycleTime" BO_ 100 20;\n'
    )
    path = _write(tmp_path, text)
    code, out, _ = run_cli("show", path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{path}: 2 messages, 3 signals"
    assert lines[1].split() == ["ID", "FRAME", "NAME", "LEN", "CYCLE", "SIGNALS"]
    assert lines[2].split() == ["0x064", "std", "ENGINE", "8", "20", "ms", "2"]
    assert lines[3].split() == ["0x18FEF100", "ext", "EEC1", "8", "-", "1"]


def test_cli_show_rejected_and_usage(run_cli, tmp_path) -> None:
    bad = _write(tmp_path, HEADER + "BO_ 100 EN GINE: 8 ECU\n", "bad.dbc")
    code, out, _ = run_cli("show", bad)
    assert code == 1 and out.startswith(f"REJECTED {bad}:12: ")
    code, out, _ = run_cli()
    assert code == 2 and "carledger dbc check" in out
