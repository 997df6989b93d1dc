"""carledger.decode.extract must give exactly what cantools' decode gives.

Property-style: every message of every DBC under ../shared/data that cantools
loads as-is, random payloads (fixed seed), full-length, short and over-long
frames, multiplexer fields steered to valid values most of the time; then the
real RAV4 log frame by frame.
"""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path

import cantools
import pytest
from cantools.database.can import Message
from cantools.database.errors import DecodeError
from cantools.database.utils import decode_data

from carledger.decode.dbcfile import DbcError, load_dbc
from carledger.decode.extract import compile_message
from carledger.sources.candump import read_candump_file
try:
    from conftest import SHARED_DATA, shared_path
except ImportError:  # tests/ imported as a package
    from tests.conftest import SHARED_DATA, shared_path

PAYLOADS_PER_MESSAGE = 30

DBC_DIRS = ["dbc/cantools", "dbc/model3", "dbc/opendbc"]


def _dbc_files() -> list[Path]:
    files: list[Path] = []
    for d in DBC_DIRS:
        files += sorted((SHARED_DATA / d).glob("*.dbc"))
    files += sorted(SHARED_DATA.glob("logs/*/*.dbc"))
    return files


_LOADED: dict[Path, object] = {}


def _load(path: Path):
    """The database as the agent loads it (files cantools rejects as they are, repaired)."""
    if path not in _LOADED:
        try:
            _LOADED[path] = load_dbc(path).database
        except DbcError as exc:
            _LOADED[path] = exc
    db = _LOADED[path]
    if isinstance(db, Exception):
        pytest.skip(f"the agent rejects {path.name}: {db}")
    return db


# -- an independent reference for the cases where cantools raises ------------


def _signal_end(sig) -> int:
    if sig.byte_order == "little_endian":
        return sig.start + sig.length
    return 8 * (sig.start // 8) + 7 - sig.start % 8 + sig.length


def _bit_set(sig) -> set[int]:
    if sig.byte_order == "little_endian":
        return set(range(sig.start, sig.start + sig.length))
    net = 8 * (sig.start // 8) + 7 - sig.start % 8
    return {8 * (n // 8) + 7 - n % 8 for n in range(net, net + sig.length)}


def _overlaps(codec) -> bool:
    seen: set[int] = set()
    for sig in codec["signals"]:
        bits = _bit_set(sig)
        if bits & seen:
            return True
        seen |= bits
    return any(
        _overlaps(sub) for branches in codec["multiplexers"].values() for sub in branches.values()
    )


def _sub_message(message, signals):
    return Message(
        message.frame_id, message.name, message.length, list(signals),
        is_extended_frame=message.is_extended_frame, strict=False,
    )


_PREPARED: dict[int, object] = {}


def _prepare(message):
    """What cantools can decode of `message`.

    Two kinds of broken messages make cantools refuse every frame ("unpacking
    failed"): signals defined past the message length (extract calls them
    absent: they are left out here) and signals overlapping others of the same
    multiplexer branch (GM "group" signals; extract reads each from its own
    bits: here each is decoded by cantools alone, with its multiplexers).
    Returns a message, or a list of (name, single-signal message)."""
    if id(message) not in _PREPARED:
        fits = [s for s in message.signals if _signal_end(s) <= 8 * message.length]
        msg = message if len(fits) == len(message.signals) else _sub_message(message, fits)
        if _overlaps(msg._codecs):
            by_name = {s.name: s for s in fits}
            singles = []
            for sig in fits:
                chain = [sig]
                while chain[-1].multiplexer_signal in by_name:
                    chain.append(by_name[chain[-1].multiplexer_signal])
                singles.append((sig.name, _sub_message(message, reversed(chain))))
            msg = singles
        _PREPARED[id(message)] = msg
    return _PREPARED[id(message)]


def reference_decode(message, data: bytes, allow_truncated: bool) -> dict:
    """cantools' decode, except that a multiplexer value nothing uses skips that
    branch instead of raising DecodeError for the whole frame, and broken
    messages are handled as `_prepare` says."""
    message = _prepare(message)
    if isinstance(message, list):
        out = {}
        for name, single in message:
            decoded = _reference_decode(single, data, allow_truncated)
            if name in decoded:
                out[name] = decoded[name]
        return out
    return _reference_decode(message, data, allow_truncated)


def _reference_decode(message, data: bytes, allow_truncated: bool) -> dict:
    try:
        return message.decode(
            data, decode_choices=False, scaling=True, allow_truncated=allow_truncated
        )
    except DecodeError:
        pass

    def rec(node) -> dict:
        decoded = decode_data(
            data, message.length, node["signals"], node["formats"], False, True,
            allow_truncated, True,
        )
        for name, branches in node["multiplexers"].items():
            if name not in decoded:
                continue
            sub = branches.get(int(decoded[name]))
            if sub is not None:
                decoded.update(rec(sub))
        return decoded

    return rec(message._codecs)


def same(got, expected) -> bool:
    if expected is None or got is None:
        return got is expected
    if type(got) is not type(expected):
        return False
    if isinstance(expected, float):
        if math.isnan(expected):
            return math.isnan(got)
        # bit-exact, sign of zero included (math.isclose rel 1e-12 was never needed)
        return got == expected and math.copysign(1.0, got) == math.copysign(1.0, expected)
    return got == expected


# -- payload generation -------------------------------------------------------


def _set_field(buf: bytearray, sig, raw: int) -> None:
    """Write raw (masked to the signal length) into buf, independent of extract.py."""
    n = len(buf)
    mask = (1 << sig.length) - 1
    raw &= mask
    if sig.byte_order == "little_endian":
        value = int.from_bytes(buf, "little")
        value = (value & ~(mask << sig.start)) | (raw << sig.start)
        buf[:] = value.to_bytes(n, "little")
    else:
        net = 8 * (sig.start // 8) + 7 - sig.start % 8
        shift = 8 * n - net - sig.length
        value = int.from_bytes(buf, "big")
        value = (value & ~(mask << shift)) | (raw << shift)
        buf[:] = value.to_bytes(n, "big")


def _mux_choices(message) -> list[tuple[object, list[int]]]:
    """Multiplexer signals (parents first) with the ids their children use."""
    out = []
    for sig in message.signals:
        if not sig.is_multiplexer:
            continue
        ids = set()
        for s in message.signals:
            if s.multiplexer_signal == sig.name and s.multiplexer_ids:
                ids.update(s.multiplexer_ids)
        if sig.conversion.scale == 1 and sig.conversion.offset == 0 and not sig.is_float and ids:
            out.append((sig, sorted(ids)))
    depth = {}

    def d(s):
        if s.name not in depth:
            parent = message.get_signal_by_name(s.multiplexer_signal) if s.multiplexer_signal else None
            depth[s.name] = 0 if parent is None or parent is s else d(parent) + 1
        return depth[s.name]

    out.sort(key=lambda t: d(t[0]))
    return out


def payloads(message, rng: random.Random) -> list[tuple[bytes, bool]]:
    """(data, allow_truncated) pairs: mostly full length, some short, some long."""
    length = message.length
    muxes = _mux_choices(message)
    out = []
    for i in range(PAYLOADS_PER_MESSAGE):
        buf = bytearray(rng.getrandbits(8) for _ in range(length))
        if i % 6 == 1:  # special patterns: all ones / all zeros
            buf = bytearray(b"\xff" * length)
        elif i % 6 == 2:
            buf = bytearray(length)
        for sig, ids in muxes:
            if rng.random() < 0.9:
                _set_field(buf, sig, rng.choice(ids))
        data = bytes(buf)
        if i % 5 == 4 and length > 0:
            out.append((data[: rng.randrange(length)], True))
        elif i == 7:
            out.append((data + b"\xa5\x5a", False))
        else:
            out.append((data, False))
    return out


def check_message(message, rng: random.Random) -> int:
    names = [s.name for s in message.signals]
    ext = compile_message(message, names)
    assert ext.names == tuple(names)
    assert ext.message is message
    checked = 0
    for data, truncated in payloads(message, rng):
        expected = reference_decode(message, data, truncated)
        got = ext.extract(data)
        assert isinstance(got, list) and len(got) == len(names)
        for name, value in zip(names, got):
            exp = expected.get(name)
            assert same(value, exp), (
                f"{message.name}.{name} data={data.hex()} got {value!r} expected {exp!r}"
                f"\n{ext.source}"
            )
            checked += 1
    return checked


@pytest.mark.parametrize(
    "path", _dbc_files(), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_every_message_matches_cantools(path: Path) -> None:
    db = _load(path)
    rng = random.Random(f"carledger-extract-{path.name}")
    checked = 0
    for message in db.messages:
        if message.is_container or not message.signals:
            continue
        checked += check_message(message, rng)
    assert checked > 0 or not db.messages


@pytest.mark.parametrize(
    "name",
    [
        "issue_184_extended_mux_cascaded.dbc",
        "issue_184_extended_mux_independent_multiplexors.dbc",
        "fd_test.dbc",
        "floating_point.dbc",
        "signed.dbc",
        "big_numbers.dbc",
        "j1939.dbc",
        "multiplex_2.dbc",
    ],
)
def test_edge_case_files_are_covered(name: str) -> None:
    """The parser-edge-case files load and are part of the sweep above."""
    path = shared_path("dbc", "cantools", name)
    assert path in _dbc_files()
    db = _load(path)
    assert db.messages


def test_subset_and_order() -> None:
    db = _load(shared_path("dbc", "cantools", "motohawk.dbc"))
    msg = db.get_message_by_name("ExampleMessage")
    ext = compile_message(msg, ["Temperature", "Enable"])
    data = bytes.fromhex("c00fa0000000000000")[:8]
    full = msg.decode(data, decode_choices=False)
    assert ext.extract(data) == [full["Temperature"], full["Enable"]]
    assert ext.names == ("Temperature", "Enable")
    with pytest.raises(KeyError):
        compile_message(msg, ["NoSuchSignal"])


def test_extended_mux_selects_through_both_levels() -> None:
    db = _load(shared_path("dbc", "cantools", "issue_184_extended_mux_cascaded.dbc"))
    msg = db.messages[0]
    names = [s.name for s in msg.signals]
    ext = compile_message(msg, names)
    # every combination of the two multiplexer bytes
    for top in range(4):
        for second in range(3):
            data = bytes([top, second, 0x11, 0x22, 0, 0, 0, 0])
            expected = reference_decode(msg, data, False)
            got = dict(zip(names, ext.extract(data)))
            assert {k: v for k, v in got.items() if v is not None} == expected


def test_float_signals_give_floats() -> None:
    db = _load(shared_path("dbc", "cantools", "floating_point.dbc"))
    for msg in db.messages:
        ext = compile_message(msg, [s.name for s in msg.signals])
        data = struct.pack("<d", 1.5) if msg.length == 8 else bytes(msg.length)
        for sig, value in zip(msg.signals, ext.extract(data.ljust(msg.length, b"\0"))):
            if sig.is_float:
                assert type(value) is float


def _parse_candump(path: Path):
    for _t, key, data in read_candump_file(str(path)):
        yield key, data


def test_rav4_log_frame_by_frame() -> None:
    folder = shared_path("logs", "comma2k19_rav4_2017")
    db = _load(folder / "toyota_rav4_2017_pt_generated.dbc")
    extractors = {}
    for msg in db.messages:
        key = msg.frame_id | (0x80000000 if msg.is_extended_frame else 0)
        extractors[key] = (msg, compile_message(msg, [s.name for s in msg.signals]))
    frames = 0
    for key, data in _parse_candump(folder / "comma2k19_rav4_2017_seg40_bus0.log"):
        entry = extractors.get(key)
        if entry is None:
            continue
        msg, ext = entry
        truncated = len(data) < msg.length
        expected = reference_decode(msg, data, truncated)
        got = ext.extract(data)
        for name, value in zip(ext.names, got):
            assert same(value, expected.get(name)), (msg.name, name, data.hex())
        frames += 1
    assert frames > 20_000


SYNTHETIC = """VERSION ""
NS_ :
BS_:
BU_: A
BO_ 100 WIDE: 32 A
 SG_ F32LE : 3|32@1- (1,0) [0|0] "" A
 SG_ F32BE : 45|32@0- (2,0.5) [0|0] "" A
 SG_ F64BE : 87|64@0- (1,0) [0|0] "" A
 SG_ S64LE : 144|64@1- (1,0) [0|0] "" A
 SG_ U48BE : 215|48@0+ (0.25,-3) [0|0] "" A
BO_ 101 SCALEDMUX: 8 A
 SG_ MUX M : 0|8@1+ (0.5,0) [0|0] "" A
 SG_ ONE m1 : 8|12@1- (-1,0) [0|0] "" A
 SG_ TWO m2 : 15|12@0+ (1.0,0.0) [0|0] "" A
 SG_ TWO_F m2 : 27|13@0- (3.0,-0.0) [0|0] "" A
SIG_VALTYPE_ 100 F32LE : 1;
SIG_VALTYPE_ 100 F32BE : 1;
SIG_VALTYPE_ 100 F64BE : 2;
"""


def test_calling_on_short_calls_back_for_short_payloads_only_and_decodes_as_the_extractor() -> None:
    """The crash ring's hook (carledger.edr): a compiled extractor's copy calls back before a short payload."""
    from carledger.decode.extract import calling_on_short

    db = cantools.database.load_string(SYNTHETIC, database_format="dbc", strict=False)
    rng = random.Random("carledger-short")
    for message in db.messages:
        ext = compile_message(message, [s.name for s in message.signals])
        calls: list[int] = []
        hooked = calling_on_short(ext.extract, message.length, lambda: calls.append(1))
        assert hooked.__code__ is ext.extract.__code__  # the copy, not a wrapper: a full payload runs as before
        for size in range(message.length + 3):
            data = bytes(rng.getrandbits(8) for _ in range(size))
            before = len(calls)
            assert [repr(v) for v in hooked(data)] == [repr(v) for v in ext.extract(data)], size
            assert len(calls) - before == (size < message.length), size
    plain: list[int] = []
    wrapped = calling_on_short(lambda data: [len(data)], 4, lambda: plain.append(1))  # any other function
    assert [wrapped(b"\x00" * n) for n in (2, 4, 6)] == [[2], [4], [6]] and plain == [1]


def test_synthetic_unaligned_floats_wide_fields_and_scaled_mux() -> None:
    db = cantools.database.load_string(SYNTHETIC, database_format="dbc", strict=False)
    rng = random.Random("carledger-synthetic")
    wide = db.get_message_by_name("WIDE")
    assert [s.is_float for s in wide.signals].count(True) == 3
    for _ in range(10):
        assert check_message(wide, rng)
    mux = db.get_message_by_name("SCALEDMUX")
    names = [s.name for s in mux.signals]
    ext = compile_message(mux, names)
    for raw in range(256):
        for tail in (b"\x00" * 7, b"\xff" * 7, bytes(rng.getrandbits(8) for _ in range(7))):
            data = bytes([raw]) + tail
            expected = reference_decode(mux, data, False)
            for name, value in zip(names, ext.extract(data)):
                assert same(value, expected.get(name)), (name, data.hex())
