"""Transport protocols before decoding (issue 17): ISO-TP and J1939 TP frames become whole messages,
decoded by DBC messages written for the whole message, and every broken transfer is an event, never a value.

Real answers: the OBDb test cases of a Hyundai Kona Electric (UDS 22 DIDs on
0x7EC, 0x7CE, 0x7A8, multi-frame), decoded with a DBC in the CSS Electronics
convention generated here from OBDb's own signal definitions, checked against
OBDb's expected values and against cantools' decode of the same payload.
Real J1939: the BAM transfers of the CSS J1939 log.
"""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import cantools
import pytest

from carledger.cli import main
from carledger.config import load_config
from carledger.decode import DecodeTable
from carledger.obd.elmtext import parse_lines
from carledger.pipeline import Pipeline
from carledger.sources.candump import read_candump_file
from carledger.sources.frame import EFF_FLAG
from carledger.transport import J1939Reassembler, TransportDecoder
from carledger.transport.j1939 import TransportError
from carledger_sim.ev import bam_frames
from conftest import REPO, shared_path
from test_obd_decode import obdb_cases
from test_obd_pipeline import agent, export

EV_DBC = REPO / "dbc" / "carledger_ev.dbc"
KONA_PAIRS = [(0x7C6, 0x7CE), (0x7A0, 0x7A8)]


# -- a CSS-convention DBC for the Kona, from OBDb's signal definitions ------------------------------

def _kona_commands() -> list[dict]:
    path = shared_path("obd", "Hyundai-Kona-Electric", "signalsets", "v3", "default.json")
    with open(path, encoding="utf-8") as f:
        return [c for c in json.load(f)["commands"] if "22" in c["cmd"]]


def _plain(fmt: dict) -> bool:
    return "len" in fmt and "blsb" not in fmt and "map" not in fmt


def kona_dbc(tmp_path: Path) -> Path:
    """BO_ per answer identifier, multiplexed on Service (byte 1) and DID (bytes 2-3), each OBDb field
    at its bit index after the 4 bytes of length, service and DID."""
    by_id: dict[int, list[str]] = {}
    for command in _kona_commands():
        did = int(command["cmd"]["22"], 16)
        lines = by_id.setdefault(int(command["rax"], 16), [])
        for signal in command["signals"]:
            fmt = signal["fmt"]
            if not _plain(fmt):
                continue
            n = 32 + fmt["bix"]  # MSB-first bit number in the reassembled message
            start = 8 * (n // 8) + 7 - n % 8
            sign = "-" if fmt.get("sign") else "+"
            scale = fmt.get("mul", 1) / fmt.get("div", 1)
            lines.append(f' SG_ {signal["id"]} m{did} : {start}|{fmt["len"]}@0{sign} ({scale!r},{fmt.get("add", 0)})'
                         f' [0|0] "" Tester')
            lines.append(f"SG_MUL_VAL_ {{id}} {signal['id']} DID {did}-{did};")
    text = 'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: Tester\n\n'
    mux = []
    for rax, lines in by_id.items():
        text += f"BO_ {rax} KONA_{rax:X}: 64 Tester\n SG_ Service M : 15|8@0+ (1,0) [0|255] \"\" Tester\n"
        text += " SG_ DID m98M : 23|16@0+ (1,0) [0|65535] \"\" Tester\n"
        text += "\n".join(l for l in lines if l.startswith(" SG_")) + "\n\n"
        mux.append(f"SG_MUL_VAL_ {rax} DID Service 98-98;")
        mux += [l.replace("{id}", str(rax)) for l in lines if l.startswith("SG_MUL")]
    path = tmp_path / "kona_uds.dbc"
    path.write_text(text + "\n".join(mux) + "\n")
    return path


def kona_cases(damaged: bool = False):
    """(answer id, frames [(key, data)], expected values) of the Kona UDS test cases whose capture is whole,
    or (damaged=True) of those with a line cut short or two lines run together (so a frame is lost)."""
    for path, _, command, rax, _, case in obdb_cases("*.22*.yaml"):
        if "Kona" not in path:
            continue
        frames, rejected = parse_lines(case["response"].splitlines(), id_bits=11)
        if bool(rejected) == damaged:
            yield rax, frames, case["expected_values"]


def test_kona_ev_answers_reassemble_and_decode_as_obdb_and_cantools_say(tmp_path):
    dbc_path = kona_dbc(tmp_path)
    db = cantools.database.load_file(str(dbc_path))
    table = DecodeTable([db])
    transport = TransportDecoder(KONA_PAIRS)
    checked = compared = 0
    for rax, frames, expected in kona_cases():
        messages = [m for i, (key, data) in enumerate(frames) for m in transport.feed(i * 0.01, key, data)]
        assert len(messages) == 1, (rax, frames)
        _, key, data = messages[0]
        assert key == rax and data[1] == 0x62
        extractor = table.lookup(key)
        ours = dict(zip(extractor.names, extractor.extract(data)))
        message = db.get_message_by_frame_id(rax)
        theirs = message.decode(data[:message.length], decode_choices=False, allow_truncated=True)
        for name, value in theirs.items():
            assert ours[name] == pytest.approx(value), name
            compared += 1
        fmts = {s["id"]: s["fmt"] for c in _kona_commands() for s in c["signals"]}
        for name, value in expected.items():
            fmt = fmts[name]
            if name not in ours or ours[name] is None:
                continue
            if fmt.get("min", float("-inf")) < ours[name] < fmt.get("max", float("inf")):  # OBDb clamps at the limits
                assert ours[name] == pytest.approx(value), (rax, name)
                checked += 1
    assert checked > 300 and compared > 500
    leading = sum(next(i for i, (_, d) in enumerate(f) if d[0] >> 4 == 1) for _, f, _ in kona_cases())
    assert leading > 0  # some captures begin with the tail of an earlier answer: counted, never decoded
    assert transport.stats.events == {"without-first": leading}


def test_damaged_kona_captures_give_events_and_not_one_value():
    """OBDb's captures with a frame cut short or lost: per-frame decoding made values of them; we make events."""
    cases = list(kona_cases(damaged=True))
    assert len(cases) >= 15
    for rax, frames, _ in cases:
        transport = TransportDecoder(KONA_PAIRS)
        messages = [m for i, (key, data) in enumerate(frames) for m in transport.feed(i * 0.01, key, data)]
        transport.expire(10.0)
        firsts = sum(1 for _, d in frames if d[0] >> 4 == 1)
        assert len(messages) <= firsts - 1, frames  # the answer that lost a frame is not among them
        assert sum(transport.stats.events.values()) >= 1
        for _, _, data in messages:  # what does come out is a whole answer
            assert data[0] == (len(data) - 1) & 0xFF and data[1] == 0x62


def kona_log(tmp_path: Path) -> Path:
    """A candump log of every Kona answer, 50 ms apart, the way a logger polling the car records it."""
    lines, t = [], 1_700_000_000.0
    for rax, frames, _ in kona_cases():
        for key, data in frames:
            t += 0.005
            lines.append(f"({t:.6f}) can0 {key:03X}#{data.hex().upper()}")
        t += 0.05
    # and one answer that loses its second consecutive frame: an event in the health stream, no value
    broken = frames_of(bytes.fromhex("620101") + bytes((0, 0, 0, 0, 199)) + bytes(40))
    for data in broken[:2] + broken[3:]:
        t += 0.005
        lines.append(f"({t:.6f}) can0 7EC#{data.hex().upper()}")
    path = tmp_path / "kona.log"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_agent_never_decodes_a_transport_frame_as_the_whole_answer(tmp_path, capsys):
    """The issue's report: per-frame decoding stored `Service = 62` (a length byte) and never the state of charge."""
    expected_soc = sorted({e["KONAEV_HVBAT_SOC"] for _, _, e in kona_cases() if "KONAEV_HVBAT_SOC" in e})
    config = agent(tmp_path, f"""
        [[bus]]
        name = "ev"
        replay = "{kona_log(tmp_path)}"
        speed = 0
        dbc = ["{kona_dbc(tmp_path)}"]
        [bus.uds]
        pairs = [[0x7C6, 0x7CE], [0x7A0, 0x7A8]]
    """, """
        [[stream]]
        name = "battery"
        local = true
        signals = ["KONA_*"]
    """)
    Pipeline(load_config(config)).run()
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "ledger")]) == 0
    records = export(tmp_path / "ledger", "battery")
    services = {r["value"] for r in records if r["name"].endswith(".Service")}
    assert services == {0x62}
    dids = {r["value"] for r in records if r["name"].endswith(".DID")}
    assert dids <= {0x0101, 0x0102, 0x0103, 0x0104, 0x0105, 0xB002, 0xC00B}
    soc = sorted({r["value"] for r in records if r["name"] == "KONA_7EC.KONAEV_HVBAT_SOC"})
    assert soc == expected_soc  # nothing of the broken answer at the end of the log (state of charge 199 / 2)
    odometer = {r["value"] for r in records if r["name"] == "KONA_7CE.KONAEV_ODO_KM"}  # a configured pair
    assert odometer == {e["KONAEV_ODO_KM"] for _, _, e in kona_cases() if "KONAEV_ODO_KM" in e}
    out = tmp_path / "health.jsonl"
    assert main(["log", "export", str(tmp_path / "ledger"), "--stream", "health", "--events", "-o", str(out)]) == 0
    health = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [r for r in health if r.get("event") == "transport-error"]
    kinds = {(e["detail"]["kind"], e["detail"]["id"]) for e in errors}
    assert kinds == {("missing-consecutive", "7EC"), ("without-first", "7EC")}, kinds  # the broken answer, and tails


# -- every way a transfer breaks: an event, never a value -------------------------------------------

ANSWER = bytes.fromhex("620101") + bytes(range(20))  # 23 bytes: a first frame and three consecutive frames


def frames_of(payload: bytes) -> list[bytes]:
    if len(payload) <= 7:
        return [bytes((len(payload),)) + payload]
    out = [bytes((0x10 | len(payload) >> 8, len(payload) & 0xFF)) + payload[:6]]
    rest, seq = payload[6:], 1
    while rest:
        out.append(bytes((0x20 | seq,)) + rest[:7])
        rest, seq = rest[7:], (seq + 1) & 0x0F
    return out


class Recorder:
    def __init__(self, pairs=()):
        self.events: list[tuple[str, dict]] = []
        self.transport = TransportDecoder(pairs, lambda kind, detail: self.events.append((kind, detail)))

    def feed(self, frames, key=0x7EC, t0=0.0, step=0.01):
        out = []
        for i, item in enumerate(frames):
            k, data = item if isinstance(item, tuple) else (key, item)
            out += self.transport.feed(t0 + i * step, k, data)
        return out

    def kinds(self) -> set[str]:
        return {d["kind"] for _, d in self.events}


def test_a_whole_answer_is_its_length_byte_and_payload():
    r = Recorder()
    f = frames_of(ANSWER)
    assert len(f) == 4
    assert r.feed(f) == [(0.03, 0x7EC, bytes((23,)) + ANSWER)]
    assert r.feed([frames_of(b"\x62\x01\x05\x03\xc0")[0] + b"\xaa\xaa"], t0=1.0) == [(1.0, 0x7EC, b"\x05\x62\x01\x05\x03\xc0")]
    assert r.feed([b"\x30\x00\x00"], key=0x7E4) == []  # flow control
    assert r.events == []


@pytest.mark.parametrize("order, kind", [
    ([0, 1, 3, 2], "missing-consecutive"),  # out of order: the gap is seen first, then a frame without a first
    ([0, 1, 3], "missing-consecutive"),  # a consecutive frame lost
    ([0, 1, 2, 1, 3], "out-of-order"),  # a repeated (wrong, earlier) sequence number
])
def test_a_broken_sequence_is_an_event_and_no_message(order, kind):
    r = Recorder()
    f = frames_of(ANSWER)
    assert r.feed([f[i] for i in order]) == []
    assert kind in r.kinds()
    assert r.transport.stats.events[kind] == 1
    assert r.transport.stats.messages == 0


def test_a_wrong_sequence_number_is_an_event():
    r = Recorder()
    f = frames_of(ANSWER)
    assert r.feed([f[0], b"\x25" + f[1][1:], f[2], f[3]]) == []
    assert r.transport.stats.events == {"missing-consecutive": 1, "without-first": 2}


def test_an_answer_that_never_completes_is_reported_even_if_the_bus_goes_quiet():
    r = Recorder()
    f = frames_of(ANSWER)
    assert r.feed(f[:2]) == []
    r.transport.expire(0.5)
    assert r.transport.stats.events == {}
    r.transport.expire(5.0)
    assert r.transport.stats.events == {"incomplete": 1}
    assert r.transport.open_receptions() == 0
    assert r.feed(f[2:], t0=5.0) == []  # its late frames are orphans, not a message
    assert r.transport.stats.events["without-first"] == 2


def test_a_stalled_answer_and_a_new_answer_over_an_open_one_are_events():
    r = Recorder()
    f = frames_of(ANSWER)
    assert r.feed([f[0], f[1]]) == [] and r.feed([f[2]], t0=3.0) == []
    assert r.transport.stats.events == {"incomplete": 1, "without-first": 1}
    assert r.feed([f[0], f[1]] + f, t0=10.0) == [(10.05, 0x7EC, bytes((23,)) + ANSWER)]
    assert r.transport.stats.events["interrupted"] == 1


def test_interleaved_answers_of_several_ecus_each_complete_and_are_counted():
    r = Recorder()
    other = bytes.fromhex("620105") + bytes(range(100, 130))
    a, b = frames_of(ANSWER), frames_of(other)
    mixed = [(0x7EC, a[0]), (0x7ED, b[0]), (0x7EC, a[1]), (0x7ED, b[1]), (0x7ED, b[2]), (0x7EC, a[2]),
             (0x7EC, a[3]), (0x7ED, b[3]), (0x7ED, b[4])]
    out = r.feed(mixed)
    assert sorted((k, d) for _, k, d in out) == [(0x7EC, bytes((23,)) + ANSWER), (0x7ED, bytes((len(other),)) + other)]
    assert r.transport.stats.events["interleaved"] >= 3
    assert "interleaved" in r.kinds()


def test_two_ecus_on_one_identifier_make_events_not_a_mixed_message():
    r = Recorder()
    other = bytes.fromhex("620105") + bytes(range(100, 120))
    a, b = frames_of(ANSWER), frames_of(other)
    assert r.feed([a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3]]) == []
    assert r.transport.stats.messages == 0 and r.transport.stats.events.get("interrupted") == 1


def test_malformed_frames_are_events():
    r = Recorder()
    for data in (b"", b"\x45\x00", b"\x10\x05abcdef", b"\x09abc", b"\x00"):
        assert r.feed([data]) == []
    assert r.transport.stats.events == {"malformed": 5}


def test_reports_are_bounded_and_counting_goes_on():
    r = Recorder()
    r.feed([b"\x21abcdefg"] * 500)
    assert r.transport.stats.events == {"without-first": 500}
    assert len(r.events) == 10 and "more" in r.events[-1][1]


def test_fuzz_100k_random_transport_frames_no_crash_and_bounded_memory():
    rng = random.Random(17)
    transport = TransportDecoder(KONA_PAIRS)
    keys = [0x7DF, *range(0x7E0, 0x7F0), 0x7CE, 0x7A8, EFF_FLAG | 0x18DAF110, EFF_FLAG | 0x18DA10F1,
            EFF_FLAG | 0x1CECFF00, EFF_FLAG | 0x1CEBFF00, EFF_FLAG | 0x18EC00F9, EFF_FLAG | 0x18EBF900,
            EFF_FLAG | 0x18ECF900]
    heads = [0x00, 0x10, 0x20, 0x30, 0x07, 0x21, 0x22, 0x1F, 0x20, 0x10, 0x11, 0x13, 0xFF, 0x01, 0x02]
    tracemalloc.start()
    t, messages, peak_open = 0.0, 0, 0
    for i in range(100_000):
        t += rng.random() * 0.02
        data = bytearray(rng.randbytes(rng.randint(0, 8)))
        if data and rng.random() < 0.7:
            data[0] = rng.choice(heads)
        if i == 20_000:
            baseline = tracemalloc.get_traced_memory()[0]
        messages += len(transport.feed(t, rng.choice(keys), bytes(data)))
        peak_open = max(peak_open, transport.open_receptions())
    grown = tracemalloc.get_traced_memory()[0] - baseline
    tracemalloc.stop()
    assert peak_open <= len(keys) + 8  # one reception per identifier (and J1939 sender/destination pair)
    assert grown < 200_000, grown
    assert sum(transport.stats.events.values()) > 10_000 and messages > 0


# -- J1939 TP ---------------------------------------------------------------------------------------

def bam(pgn: int, source: int, payload: bytes):
    return bam_frames(pgn, source, payload)


def feed_j1939(reassembler, frames, t0=0.0, step=0.05):
    out, errors = [], []
    for i, (can_id, data) in enumerate(frames):
        try:
            message = reassembler.feed(t0 + i * step, can_id, data)
        except TransportError as exc:
            errors.append(exc.kind)
            continue
        if message is not None:
            out.append(message)
    return out, errors


def test_the_real_bam_transfers_of_a_truck_reassemble_and_decode_by_pgn_like_cantools():
    log = shared_path("logs", "css_j1939", "j1939_gnss_11111111_00000012.log")
    db = cantools.database.load_file(str(EV_DBC))
    table = DecodeTable([db])
    dm1 = db.get_message_by_name("DM1")
    transport = TransportDecoder()
    decoded = 0
    pgns = set()
    for frame in read_candump_file(str(log)):
        t, key, data = frame[0], frame[1], frame[2]
        if not (key & EFF_FLAG and (key >> 16) & 0xFF in (0xEB, 0xEC)):
            continue
        for _, mkey, message in transport.feed(t, key, data):
            pgns.add((mkey >> 8) & 0x3FFFF)
            extractor = table.lookup(mkey)
            if extractor is None:
                continue
            ours = dict(zip(extractor.names, extractor.extract(message)))
            assert ours == pytest.approx(dm1.decode(message, decode_choices=False))
            assert ours["DTC1_SPN_Low"] == 980 and ours["DTC1_FMI"] == 9  # 43 FF D4 03 09 7E ...: SPN 980, FMI 9
            decoded += 1
    assert pgns == {0xFECA, 0xFEE3}
    assert decoded > 100
    assert transport.stats.events == {}


def test_bam_and_rts_cts_transfers_and_every_way_they_break():
    payload = bytes(range(30))
    ok, errors = feed_j1939(J1939Reassembler(), bam(0xFECA, 0x00, payload))
    assert [(m.pgn, m.source, m.destination, m.data) for m in ok] == [(0xFECA, 0, 255, payload)] and not errors

    rts = bytes((0x10, 30, 0, 5, 2)) + (0xFEE3).to_bytes(3, "little")
    cts = lambda n, nxt: (0x1CEC0017, bytes((0x11, n, nxt, 0xFF, 0xFF)) + (0xFEE3).to_bytes(3, "little"))  # noqa: E731
    dt = lambda i: (0x1CEB1700, bytes((i,)) + payload[7 * (i - 1):7 * i].ljust(7, b"\xff"))  # noqa: E731
    eoma = (0x1CEC0017, bytes((0x13, 30, 0, 5, 0xFF)) + (0xFEE3).to_bytes(3, "little"))
    # 0x00 sends to 0x17; 0x17 paces it, asks for packet 2 again once, then acknowledges
    frames = [(0x1CEC1700, rts), cts(2, 1), dt(1), dt(2), cts(2, 2), dt(2), dt(3), cts(2, 4), dt(4), dt(5), eoma]
    ok, errors = feed_j1939(J1939Reassembler(), frames)
    assert [(m.pgn, m.source, m.destination, m.data) for m in ok] == [(0xFEE3, 0x00, 0x17, payload)] and not errors

    frames = bam(0xFECA, 0x00, payload)
    broken = {
        "missing-packet": frames[:2] + frames[3:],
        "out-of-order": frames[:3] + [frames[2]] + frames[3:],
        "without-announce": frames[1:],
        "aborted": [(0x1CEC1700, rts), (0x1CEC0017, b"\xff\x01\xff\xff\xff" + (0xFEE3).to_bytes(3, "little")), dt(1)],
        "interrupted": frames[:2] + frames,
        "malformed": [(0x1CECFF00, bytes((0x20, 30, 0, 3, 0xFF, 0xCA, 0xFE, 0)))],  # 30 bytes do not fit 3 packets
    }
    for kind, sequence in broken.items():
        ok, errors = feed_j1939(J1939Reassembler(), sequence)
        assert kind in errors, (kind, errors)
        if kind != "interrupted":
            assert ok == [], kind
    stalled = J1939Reassembler()
    assert feed_j1939(stalled, frames[:2]) == ([], [])
    assert stalled.expire(10.0) == [(0x00, 0xFF)]
    ok, errors = feed_j1939(stalled, frames[2:], t0=10.0)
    assert ok == [] and set(errors) == {"without-announce"}


def test_an_rts_cts_transfer_through_the_bus_decoder_is_decoded_by_pgn():
    table = DecodeTable([cantools.database.load_file(str(EV_DBC))])
    payload = bytes.fromhex("0400") + bytes.fromhex("1F171201") * 4  # DM1, four DTCs: 18 bytes, 3 packets
    pgn = (0xFECA).to_bytes(3, "little")
    frames = [(0x1CEC1700, bytes((0x10, 18, 0, 3, 3)) + pgn), (0x1CEC0017, bytes((0x11, 3, 1, 0xFF, 0xFF)) + pgn)]
    frames += [(0x1CEB1700, bytes((i + 1,)) + payload[7 * i:7 * i + 7].ljust(7, b"\xff")) for i in range(3)]
    frames.append((0x1CEC0017, bytes((0x13, 18, 0, 3, 0xFF)) + pgn))
    transport = TransportDecoder()
    out = [m for i, (can_id, data) in enumerate(frames) for m in transport.feed(i * 0.01, EFF_FLAG | can_id, data)]
    assert len(out) == 1 and out[0][2] == payload
    extractor = table.lookup(out[0][1])
    values = dict(zip(extractor.names, extractor.extract(out[0][2])))
    assert values["DTC4_SPN_Low"] == 5919 and values["DTC4_FMI"] == 18 and values["AmberWarningLamp"] == 1
    assert transport.stats.events == {}
