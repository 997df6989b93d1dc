"""OBD-II decoding against real third-party data: OBDb's captured adapter answers,
the CSS Electronics OBD-II polling log (with its GNSS channel and its OBD DBC),
and python-OBD's own decoders."""

from __future__ import annotations

import bisect
import glob
import json
import os
import random
import statistics
from collections import Counter, defaultdict

import pytest

from carledger.obd.dtc import decode_dtc, decode_dtc_list, encode_dtc
from carledger.obd.elmtext import parse_lines
from carledger.obd.messages import ResponseError, parse_response, request
from carledger.obd.passive import PassiveDecoder
from carledger.obd.pids import PIDS, bitmap_from_supported, decode_pid, supported_from_bitmap
from carledger.obd.reassembly import FrameError, Reassembler
from carledger.sources.candump import read_candump_file
from carledger.sources.frame import EFF_FLAG
from conftest import shared_path

yaml = pytest.importorskip("yaml")

# OBDb signal ids of the service 01 test cases -> our sample names
OBDB_NAMES = {
    "LOAD_PCT": "Vehicle.OBD.EngineLoad",
    "ECT": "Vehicle.Powertrain.CombustionEngine.ECT",
    "SHRTFT1": "Vehicle.OBD.ShortTermFuelTrim1",
    "VSS": "Vehicle.Speed",
    "MAF": "Vehicle.OBD.MAF",
    "TP": "Vehicle.OBD.ThrottlePosition",
    "CLR_DIST": "Vehicle.OBD.DistanceSinceDTCClear",
    "LAMBDA11_CURRENT": "Vehicle.OBD.O2WR.Sensor1.Lambda",
    "O2S11_CURRENT": "Vehicle.OBD.O2WR.Sensor1.Current",
    "VPWR": "Vehicle.OBD.ControlModuleVoltage",
    "EQ_RAT": "Vehicle.OBD.CommandedEquivalenceRatio",
    "AAT": "Vehicle.Exterior.AirTemperature",
    "EOT": "Vehicle.Powertrain.CombustionEngine.EOT",
    "FUEL_RATE": "Vehicle.OBD.FuelRate",
}


def obdb_cases(pattern: str):
    """(file, case index, command id, answer identifier, options, case) for OBDb test files."""
    root = shared_path("obd")
    for path in sorted(glob.glob(str(root / "*" / "tests" / "test_cases" / "*" / "commands" / pattern))):
        command_id, _, opts = os.path.basename(path)[:-5].partition("|")
        parts = command_id.split(".")
        rax = int(parts[1], 16) if len(parts) == 3 else int(parts[0], 16) + 8
        options = dict(o.split("=", 1) for o in opts.split(",") if "=" in o)
        with open(path, encoding="utf-8") as f:
            for i, case in enumerate(yaml.safe_load(f)["test_cases"]):
                yield path, i, parts[-1], rax, options, case


def answers(lines: list[str], rax: int, offset: int = 0):
    """(payloads from `rax`, frame rejections, line rejections) of an adapter printout."""
    frames, rejected = parse_lines(lines, id_bits=11)
    rx = Reassembler()
    payloads, errors = [], []
    for key, data in frames:
        if key != rax:
            continue
        try:
            payload = rx.feed(0.0, key, data, offset)
        except FrameError as exc:
            errors.append(str(exc))
            continue
        if payload is not None:
            payloads.append(payload)
    return payloads, errors, rejected


# -- OBDb: every single-frame service 01 answer --------------------------------------------


def test_every_obdb_single_frame_service01_answer_decodes_to_the_expected_value():
    checked, failures = 0, []
    for path, i, command, rax, _, case in obdb_cases("7E0.01*.yaml"):
        pid = int(command[2:], 16)
        payloads, _, _ = answers(str(case["response"]).split("\n"), rax)
        mine = None
        for payload in payloads:
            answer = parse_response(payload)
            if answer.service == 0x01 and answer.pid == pid:
                mine = {name: value for name, value, _ in answer.samples}
                break
        if mine is None:
            failures.append(f"{path}[{i}]: no answer to 01{pid:02X}")
            continue
        for obdb_id, expected in case["expected_values"].items():
            got = mine.get(OBDB_NAMES[obdb_id])
            if got is None or got != pytest.approx(expected, abs=1e-4):
                failures.append(f"{path}[{i}]: {obdb_id} expected {expected}, got {got}")
            checked += 1
    assert not failures, "\n".join(failures)
    assert checked == 93  # 90 answers, three of them with two signals (PID 34)


def test_the_obdb_session_log_answer_is_found_among_its_noise():
    # one case is a raw adapter session: prompts, NO DATA, voltages, then the answer
    (path, _, _, rax, _, case), = [c for c in obdb_cases("7E0.0131.yaml") if "ATRV" in str(c[5]["response"])]
    lines = str(case["response"]).split("\n")
    frames, rejected = parse_lines(lines, id_bits=11)
    assert frames == [(0x7E8, bytes.fromhex("044131FFFF"))]
    assert {reason for _, reason in rejected} == {"not a frame"}
    assert ("NO DATA", "not a frame") in rejected and ("13.1V", "not a frame") in rejected


# -- OBDb: multi-frame answers reassembled, malformed ones rejected with a reason -----------


def _obdb_signals() -> dict[str, list[dict]]:
    defs: dict[str, list[dict]] = defaultdict(list)
    for path in glob.glob(str(shared_path("obd") / "*" / "signalsets" / "v3" / "default.json")):
        with open(path, encoding="utf-8") as f:
            for command in json.load(f)["commands"]:
                for signal in command["signals"]:
                    defs[signal["id"]].append(signal["fmt"])
    return defs


def _obdb_value(fmt: dict, body: bytes) -> float | None:
    """OBDb's formula for a plain big-endian field (bix from the most significant bit), clamped."""
    bix, length = fmt.get("bix", 0), fmt["len"]
    total = len(body) * 8
    if bix + length > total:
        return None
    raw = (int.from_bytes(body, "big") >> (total - bix - length)) & ((1 << length) - 1)
    if fmt.get("sign") and raw >> (length - 1):
        raw -= 1 << length
    value = raw * fmt.get("mul", 1) / fmt.get("div", 1) + fmt.get("add", 0)
    if "max" in fmt:
        value = min(value, fmt["max"])
    if "min" in fmt:
        value = max(value, fmt["min"])
    return value


def _plain(fmt: dict) -> bool:
    # little-endian fields, enumerations, and add-with-mul (whose order OBDb leaves open) are not checked
    return "len" in fmt and "map" not in fmt and "blsb" not in fmt and not ("add" in fmt and "mul" in fmt)


def test_every_obdb_multi_frame_answer_is_reassembled_or_rejected_with_a_reason():
    defs = _obdb_signals()
    reassembled = unreassembled = values = 0
    reasons: list[str] = []
    failures = []
    for path, i, command, rax, options, case in obdb_cases("*.yaml"):
        offset = 1 if "e" in options else 0  # extended addressing: an address byte before the PCI
        lines = str(case["response"]).split("\n")
        frames, _ = parse_lines(lines, id_bits=11)
        if not any(len(d) > offset and d[offset] >> 4 == 1 for k, d in frames if k == rax):
            continue  # single-frame answers: the test above
        req = bytes.fromhex(command)
        payloads, errors, rejected = answers(lines, rax, offset)
        reasons += errors + [reason for _, reason in rejected]
        good = [p for p in payloads if p[0] == req[0] + 0x40 and p[1:len(req)] == req[1:]]
        if not good:
            unreassembled += 1
            if not errors and not rejected:
                failures.append(f"{path}[{i}]: no answer and no reason")
            continue
        reassembled += 1
        body = good[0][len(req):]
        for obdb_id, expected in (case.get("expected_values") or {}).items():
            fmts = [f for f in defs.get(obdb_id, []) if _plain(f)]
            if not fmts or not isinstance(expected, (int, float)):
                continue
            got = [_obdb_value(f, body) for f in fmts]
            if not any(v is not None and v == pytest.approx(expected, abs=1e-4, rel=1e-5) for v in got):
                failures.append(f"{path}[{i}]: {obdb_id} expected {expected}, reassembled gives {got}")
            values += 1
    assert not failures, "\n".join(failures[:20])
    assert (reassembled, unreassembled) == (1303, 8)
    assert values > 30000  # the reassembled bytes reproduce OBDb's expected values
    # the malformed printouts of the data set, each kind rejected with its reason
    for kind in ("without a first frame", "out of sequence", "odd number of data digits",
                 "16 data bytes (a CAN frame has at most 8)"):
        assert any(kind in reason for reason in reasons), kind


def test_reassembler_rejects_what_iso_tp_does_not_allow():
    rx = Reassembler(timeout=1.0)
    with pytest.raises(FrameError, match="without a first frame"):
        rx.feed(0.0, 0x7E8, bytes.fromhex("2131323334353637"))
    with pytest.raises(FrameError, match="says 7 bytes but carries 3"):
        rx.feed(0.0, 0x7E8, bytes.fromhex("07410D00"))
    with pytest.raises(FrameError, match="unknown ISO-TP frame type"):
        rx.feed(0.0, 0x7E8, bytes.fromhex("F000"))
    with pytest.raises(FrameError, match="would fit a single frame"):
        rx.feed(0.0, 0x7E8, bytes.fromhex("1005490201313233"))
    assert rx.feed(0.0, 0x7E8, bytes.fromhex("1014490201314434")) is None
    with pytest.raises(FrameError, match="out of sequence"):
        rx.feed(0.1, 0x7E8, bytes.fromhex("2247503332"))
    assert rx.feed(0.2, 0x7E8, bytes.fromhex("1014490201314434")) is None
    with pytest.raises(FrameError, match="after the previous one"):
        rx.feed(1.5, 0x7E8, bytes.fromhex("2131323334353637"))
    assert rx.feed(2.0, 0x7E9, bytes.fromhex("3000000000000000")) is None  # flow control: ignored


def test_a_vin_is_reassembled_across_frames_and_senders_do_not_mix():
    rx = Reassembler()
    vin = b"1HGCM82633A004352"
    payload = b"\x49\x02\x01" + vin
    first, rest = payload[:6], payload[6:]
    assert rx.feed(0.0, 0x7E8, bytes([0x10, len(payload)]) + first) is None
    assert rx.feed(0.0, 0x7E9, bytes.fromhex("03410D21")) == bytes.fromhex("410D21")  # another ECU in between
    assert rx.feed(0.01, 0x7E8, bytes([0x21]) + rest[:7]) is None
    assert rx.feed(0.02, 0x7E8, bytes([0x22]) + rest[7:] + b"\x00" * (14 - len(rest))) == payload  # padding cut
    assert parse_response(payload).samples == [("Vehicle.VehicleIdentification.VIN", vin.decode(), "OBD.09.02")]


# -- answers, DTCs, requests ---------------------------------------------------------------


def test_dtcs_decode_to_their_letters_and_round_trip():
    assert decode_dtc(0x01, 0x33) == "P0133"
    assert decode_dtc(0x41, 0x23) == "C0123"
    assert decode_dtc(0x82, 0x34) == "B0234"
    assert decode_dtc(0xC1, 0x00) == "U0100"
    assert decode_dtc(0x3F, 0xFF) == "P3FFF"
    for code in ("P0301", "C1234", "B0A1F", "U3000"):
        assert decode_dtc(*encode_dtc(code)) == code
    assert decode_dtc_list(bytes.fromhex("0301000004200000")) == ["P0301", "P0420"]
    with pytest.raises(ValueError):
        encode_dtc("X0301")


def test_dtc_answers_of_services_03_07_0a():
    answer = parse_response(bytes.fromhex("4302030104200000"))
    assert answer.service == 0x03 and answer.dtcs == ["P0301", "P0420"]
    assert answer.samples == [("Vehicle.OBD.DTCList", "P0301,P0420", "OBD.03")]
    assert parse_response(bytes.fromhex("4700")).samples == [("OBD.PENDING_DTCS", "", "OBD.07")]
    assert parse_response(bytes.fromhex("4A01C100")).samples == [("OBD.PERMANENT_DTCS", "U0100", "OBD.0A")]
    with pytest.raises(ResponseError, match="says 3 DTCs but carries 2 bytes"):
        parse_response(bytes.fromhex("43030301"))


def test_negative_answers_keep_their_code():
    for code in (0x12, 0x31, 0x78):
        answer = parse_response(bytes([0x7F, 0x01, code]))
        assert answer.service == 0x01 and answer.negative == code
        assert answer.pending == (code == 0x78)
    with pytest.raises(ResponseError, match="negative answer of 2 bytes"):
        parse_response(bytes.fromhex("7F01"))


def test_malformed_service01_answers_are_rejected_with_a_reason():
    with pytest.raises(ResponseError, match=r"PID 0C \(RPM\) needs 2 data bytes, got 1"):
        parse_response(bytes.fromhex("410C1A"))
    with pytest.raises(ResponseError, match="PID 9A at byte 1 is not a standard PID"):
        parse_response(bytes.fromhex("419A0102"))
    with pytest.raises(ResponseError, match="not an answer to a read-only OBD request"):
        parse_response(bytes.fromhex("620101FFFF"))
    with pytest.raises(ResponseError, match="not 17 VIN characters"):
        parse_response(b"\x49\x02\x01SHORT")


def test_multi_pid_answers_decode_every_record():
    answer = parse_response(bytes.fromhex("410C1AF80D3205 7B".replace(" ", "")))
    assert answer.samples == [
        ("Vehicle.Powertrain.CombustionEngine.Speed", 1726.0, "OBD.01.0C"),
        ("Vehicle.Speed", 0x32, "OBD.01.0D"),
        ("Vehicle.Powertrain.CombustionEngine.ECT", 0x7B - 40, "OBD.01.05"),
    ]


def test_supported_pid_bitmaps():
    data = bytes.fromhex("BE3FA813")  # a common engine ECU
    supported = supported_from_bitmap(0x00, data)
    assert {0x01, 0x03, 0x04, 0x05, 0x0C, 0x0D, 0x20} <= supported and 0x02 not in supported
    assert bitmap_from_supported(0x00, supported) == data
    assert parse_response(bytes.fromhex("4100BE3FA813")).supported == supported
    assert supported_from_bitmap(0x20, bytes.fromhex("80000001")) == {0x21, 0x40}


def test_only_read_only_services_can_be_requested():
    assert request(0x01, 0x0D) == b"\x01\x0d"
    assert request(0x09, 0x02) == b"\x09\x02"
    assert request(0x03) == b"\x03"
    assert request(0x02, 0x0D, 0) == b"\x02\x0d\x00"  # freeze frame data: read-only too
    for service in (0x04, 0x08, 0x10, 0x11, 0x27, 0x2E, 0x31, 0x3E):
        with pytest.raises(ValueError, match="not a read-only OBD service"):
            request(service)


def test_pid_table_agrees_with_python_obd():
    obd = pytest.importorskip("obd")
    from obd.protocols.protocol import ECU, Frame, Message

    # python-OBD differs on purpose here: it reads PID 32's two bytes as two signed halves,
    # and PID 54 as offset binary; J1979 and OBDb read both as one 16-bit two's complement.
    differs = {0x32, 0x54}
    second = set(range(0x24, 0x2C)) | set(range(0x34, 0x3C))  # python-OBD gives the voltage/current only
    rng = random.Random(5)
    compared = 0
    for pid, entry in PIDS.items():
        if pid in differs or not obd.commands.has_pid(1, pid):
            continue
        command = obd.commands[1][pid]
        for _ in range(40):
            data = bytes(rng.randrange(256) for _ in range(entry.length))
            message = Message([Frame("")])
            message.data, message.ecu = bytearray([0x41, pid]) + data, ECU.ENGINE
            try:
                theirs = getattr(command([message]).value, "magnitude", None)
            except IndexError:  # python-OBD's AIR_STATUS decoder fails on some bit patterns
                break
            if not isinstance(theirs, (int, float)) or isinstance(theirs, bool):
                break  # status words, bitmaps, enumerations: python-OBD gives objects
            mine = dict(decode_pid(pid, data))
            signal = entry.signals[1 if pid in second else 0]
            # python-OBD rounds some scalings (2/65536 is its 0.0000305): 0.1 % still catches a wrong formula
            assert mine[signal] == pytest.approx(theirs, rel=1e-3, abs=1e-9), (hex(pid), data.hex())
            compared += 1
    assert compared >= 60 * 40


# -- the CSS Electronics OBD-II polling log ----------------------------------------------------


@pytest.fixture(scope="module")
def css_log():
    folder = shared_path("logs", "css_obd2_gnss")
    frames = list(read_candump_file(str(folder / "obd2_gnss_3BA199E2_session164.log")))
    return folder, frames


def test_css_log_every_answer_decodes(css_log):
    _, frames = css_log
    events = []
    decoder = PassiveDecoder(on_event=lambda kind, detail: events.append(kind))
    names = Counter(s[1] for t, k, d in frames for s in decoder.feed(t, k, d))
    assert decoder.answers == 28930 and decoder.malformed == 0 and not events
    assert set(names) == {
        "Vehicle.OBD.EngineLoad", "Vehicle.Powertrain.CombustionEngine.ECT",
        "Vehicle.Powertrain.CombustionEngine.MAP", "Vehicle.Powertrain.CombustionEngine.Speed",
        "Vehicle.Speed", "Vehicle.OBD.ThrottlePosition", "Vehicle.Powertrain.FuelSystem.RelativeLevel",
        "Vehicle.OBD.BarometricPressure", "Vehicle.OBD.ControlModuleVoltage", "OBD.ACTUAL_ENGINE_TORQUE",
    }


def test_css_vehicle_speed_tracks_gnss_speed(css_log):
    import cantools

    folder, frames = css_log
    gnss = cantools.database.load_file(str(folder / "canmod-gps.dbc")).get_message_by_name("gnss_speed")
    gnss_t, gnss_kmh = [], []
    decoder = PassiveDecoder()
    obd_speed = []
    for t, key, data in frames:
        if key == gnss.frame_id:  # can1's GNSS module
            fields = gnss.decode(data, decode_choices=False)
            if fields["SpeedValid"]:
                gnss_t.append(t)
                gnss_kmh.append(fields["Speed"] * 3.6)
            continue
        obd_speed.extend((t, value) for t, name, value, _ in decoder.feed(t, key, data) if name == "Vehicle.Speed")
    pairs = []
    for t, kmh in obd_speed:
        i = bisect.bisect_left(gnss_t, t)
        if 0 < i < len(gnss_t) and gnss_t[i] - gnss_t[i - 1] < 1.5:  # GNSS fixes come about once a second
            w = (t - gnss_t[i - 1]) / (gnss_t[i] - gnss_t[i - 1])
            pairs.append((kmh, gnss_kmh[i - 1] + w * (gnss_kmh[i] - gnss_kmh[i - 1])))
    assert len(pairs) > 4000
    correlation = statistics.correlation([a for a, _ in pairs], [b for _, b in pairs])
    assert correlation >= 0.99, correlation
    assert statistics.median(abs(a - b) for a, b in pairs) < 1.0


def test_css_decoded_values_match_the_css_obd_dbc(css_log):
    import cantools

    folder, frames = css_log
    rx = cantools.database.load_file(str(folder / "OBD-v4.4.dbc"), strict=False).get_message_by_frame_id(0x7E8)
    decoder = PassiveDecoder()
    compared = Counter()
    for t, key, data in frames:
        if key != 0x7E8:
            continue
        samples = decoder.feed(t, key, data)
        pid = data[2]
        theirs = {n: v for n, v in rx.decode(data).items() if n.startswith(f"S01PID{pid:02X}_")}
        assert len(samples) == len(theirs) == 1, (data.hex(), samples, theirs)
        assert samples[0][2] == pytest.approx(next(iter(theirs.values())), rel=1e-5, abs=1e-6), data.hex()  # the DBC rounds its factors
        compared[pid] += 1
    assert sorted(compared) == [0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x11, 0x2F, 0x33, 0x42, 0x62]
    assert sum(compared.values()) == 28930


def test_passive_decoder_ignores_requests_and_other_traffic_and_survives_junk():
    events = []
    decoder = PassiveDecoder(on_event=lambda kind, detail: events.append((kind, detail)))
    assert decoder.feed(0.0, 0x7DF, bytes.fromhex("02010D0000000000")) == []  # a request
    assert decoder.feed(0.0, 0x7E0, bytes.fromhex("3000000000000000")) == []  # flow control
    assert decoder.feed(0.0, 0x0B4, bytes.fromhex("03410D2200000000")) == []  # not an OBD identifier
    junk = [b"", b"\xff", bytes.fromhex("0741"), bytes.fromhex("2100"), bytes.fromhex("03410C01"), bytes(8)]
    for data in junk:
        assert decoder.feed(0.0, 0x7E8, data) == []
    assert decoder.malformed == len(junk) and [k for k, _ in events] == ["obd-malformed"] * len(junk)
    assert all(d["reason"] for _, d in events)
    assert decoder.feed(1.0, 0x7E9, bytes.fromhex("03410D2200000000")) == [(1.0, "Vehicle.Speed", 0x22, "OBD.01.0D")]
    rng = random.Random(11)  # and random junk on an answer identifier never raises
    for _ in range(5000):
        decoder.feed(3.0, 0x7E8, rng.randbytes(rng.randint(0, 8)))
    ext = 0x18DAF110 | EFF_FLAG
    assert decoder.feed(2.0, ext, bytes.fromhex("03410D2300000000")) == [(2.0, "Vehicle.Speed", 0x23, "OBD.01.0D")]
    assert decoder.feed(2.0, 0x18DB33F1 | EFF_FLAG, bytes.fromhex("02010D0000000000")) == []
