"""carledger.decode.table: lookup by key, J1939 by PGN, filters, wanted signals."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import cantools
import pytest
from cantools.j1939 import pgn_from_frame_id

from carledger.decode.table import EFF_FLAG, DecodeTable
from carledger.sources.candump import read_candump_file

try:
    from conftest import shared_path
except ImportError:  # tests/ imported as a package
    from tests.conftest import shared_path

EXT_AND_STD = """VERSION ""
NS_ :
BS_:
BU_: A
BO_ 256 STD: 8 A
 SG_ S : 0|8@1+ (1,0) [0|255] "" A
BO_ 2147483904 EXT: 8 A
 SG_ E : 0|16@1+ (0.5,0) [0|255] "" A
"""

OTHER_STD = """VERSION ""
NS_ :
BS_:
BU_: A
BO_ 256 OTHER: 8 A
 SG_ O : 8|8@1+ (1,0) [0|255] "" A
"""


def _load(*parts: str):
    return cantools.database.load_file(str(shared_path(*parts)), strict=False)


def _candump(path: Path):
    return read_candump_file(str(path))


def _passes(filters, key: int) -> bool:
    """SocketCAN / python-can filter semantics for one frame key."""
    extended = bool(key & EFF_FLAG)
    can_id = key & 0x1FFFFFFF
    return any(
        (can_id & mask) == (fid & mask) and ext == extended for fid, mask, ext in filters
    )


def test_lookup_exact_rav4() -> None:
    db = _load("logs", "comma2k19_rav4_2017", "toyota_rav4_2017_pt_generated.dbc")
    table = DecodeTable([db])
    ext = table.lookup(0xAA)
    assert ext is not None and ext.message.name == "WHEEL_SPEEDS"
    assert table.lookup(0xAA) is ext
    assert table.lookup(0x7FF) is None and table.lookup(0x7FF) is None
    assert table.lookup(0xAA | EFF_FLAG) is None  # same number, 29-bit: another frame
    assert len(table) == len(db.messages)
    assert sorted(table.keys()) == sorted(m.frame_id for m in db.messages)
    assert len(table.signals()) == sum(len(m.signals) for m in db.messages)
    assert all((k, 0x7FF, False) in table.filters() for k in table.keys())


def test_extended_and_standard_same_number_are_distinct() -> None:
    db = cantools.database.load_string(EXT_AND_STD, database_format="dbc")
    table = DecodeTable([db])
    assert table.lookup(0x100).message.name == "STD"
    assert table.lookup(0x100 | EFF_FLAG).message.name == "EXT"
    assert sorted(table.keys()) == [0x100, 0x100 | EFF_FLAG]
    assert sorted(table.filters()) == [(0x100, 0x7FF, False), (0x100, 0x1FFFFFFF, True)]
    assert table.can_filters()[0].keys() == {"can_id", "can_mask", "extended"}
    data = bytes([7, 9, 0, 0, 0, 0, 0, 0])
    assert table.lookup(0x100).extract(data) == [7]
    assert table.lookup(0x100 | EFF_FLAG).extract(data) == [(9 * 256 + 7) * 0.5]


def test_duplicate_key_first_database_wins_with_warning(caplog) -> None:
    first = cantools.database.load_string(EXT_AND_STD, database_format="dbc")
    second = cantools.database.load_string(OTHER_STD, database_format="dbc")
    with caplog.at_level(logging.WARNING, logger="carledger.decode.table"):
        table = DecodeTable([first, second])
    assert table.lookup(0x100).message.name == "STD"
    assert "OTHER.O" not in table.signals()
    text = caplog.text
    assert "OTHER (database #1)" in text and "STD (database #0)" in text


def test_wanted_compiles_only_wanted_signals() -> None:
    db = _load("logs", "comma2k19_rav4_2017", "toyota_rav4_2017_pt_generated.dbc")
    wanted = {"WHEEL_SPEEDS.WHEEL_SPEED_FL", "SPEED.SPEED", "GEAR_PACKET.GEAR"}
    table = DecodeTable([db], wanted.__contains__)
    assert sorted(table.signals()) == sorted(wanted)
    assert sorted(table.keys()) == sorted(
        db.get_message_by_name(n.split(".")[0]).frame_id for n in wanted
    )
    assert table.lookup(0xAA).names == ("WHEEL_SPEED_FL",)
    assert table.lookup(0x25) is None  # STEER_ANGLE_SENSOR: nothing wanted
    # filters admit exactly the wanted messages, on the real log
    filters = table.filters()
    msg = db.get_message_by_name("WHEEL_SPEEDS")
    seen = 0
    for _t, key, data in _candump(
        shared_path("logs", "comma2k19_rav4_2017", "comma2k19_rav4_2017_seg40_bus0.log")
    ):
        ext = table.lookup(key)
        assert _passes(filters, key) == (ext is not None)
        if key == 0xAA:
            expected = msg.decode(data, decode_choices=False)["WHEEL_SPEED_FL"]
            assert ext.extract(data) == [expected]
            seen += 1
    assert seen > 1000


def test_wanted_deep_multiplexed_signal_keeps_its_selectors_internal() -> None:
    db = _load("dbc", "cantools", "issue_184_extended_mux_cascaded.dbc")
    msg = db.messages[0]
    deep = next(s for s in msg.signals if s.multiplexer_signal and
                msg.get_signal_by_name(s.multiplexer_signal).multiplexer_signal)
    table = DecodeTable([db], lambda n: n == f"{msg.name}.{deep.name}")
    assert table.signals() == [f"{msg.name}.{deep.name}"]
    ext = table.lookup(msg.frame_id | (EFF_FLAG if msg.is_extended_frame else 0))
    assert ext.names == (deep.name,)
    hits = 0
    for top in range(4):
        for second in range(3):
            data = bytes([top, second, 0x7A, 0x7B, 0, 0, 0, 0])
            try:
                expected = msg.decode(data, decode_choices=False).get(deep.name)
            except cantools.database.errors.DecodeError:
                expected = None
            assert ext.extract(data) == [expected]
            hits += expected is not None
    assert hits


def test_j1939_matches_by_pgn_real_log() -> None:
    folder = shared_path("logs", "css_j1939")
    db = _load("logs", "css_j1939", "CSS-Electronics-SAE-J1939-DEMO.dbc")
    table = DecodeTable([db])
    eec1 = db.get_message_by_name("EEC1")
    assert eec1.frame_id == 0x0CF004FE  # the DBC's source address: FE
    # any priority, any source address: EEC1 (PGN 61444)
    for frame_id in (0x0CF00400, 0x0CF004FE, 0x18F00417, 0x00F004FF, 0x1CF00401):
        ext = table.lookup(frame_id | EFF_FLAG)
        assert ext is not None and ext.message is eec1, hex(frame_id)
        assert table.lookup(frame_id | EFF_FLAG) is ext  # cached
    assert table.lookup(0x0CF00400) is None  # 11-bit key: no PGN matching
    assert table.lookup(0x0CF10400 | EFF_FLAG) is None  # another PGN
    assert table.lookup(0x0DF00400 | EFF_FLAG) is None  # data page 1: another PGN

    assert sorted(table.filters()) == [
        (0x00F00400, 0x03FFFF00, True),
        (0x00FEF100, 0x03FFFF00, True),
    ]
    eec1_ext = table.lookup(eec1.frame_id | EFF_FLAG)
    rpm = []
    for _t, key, data in _candump(folder / "j1939_gnss_11111111_00000012.log"):
        ext = table.lookup(key)
        matches = key & EFF_FLAG and pgn_from_frame_id(key & 0x1FFFFFFF) in (61444, 65265)
        assert (ext is not None) == bool(matches)
        assert _passes(table.filters(), key) == bool(matches)
        if ext is eec1_ext:
            (value,) = ext.extract(data)
            assert value == eec1.decode(data, decode_choices=False)["EngineSpeed"]
            rpm.append(value)
    assert len(rpm) > 10_000
    assert 600 < statistics.median(rpm) < 700


def test_j1939_pdu1_ignores_destination_address() -> None:
    db = _load("dbc", "cantools", "j1939.dbc")  # no ProtocolType; VFrameFormat J1939PG
    table = DecodeTable([db])
    m1 = db.get_message_by_name("Message1")  # 0x15340201: PF 0x34 < 240, DA 02, SA 01
    m2 = db.get_message_by_name("Message2")  # 0x15F01002: PF 0xF0, PDU2
    assert table.lookup(0x0D34FF99 | EFF_FLAG).message is m1  # other priority, DA, SA
    assert table.lookup(0x15F01099 | EFF_FLAG).message is m2
    assert table.lookup(0x15F01199 | EFF_FLAG) is None  # PDU2: PS is part of the PGN
    assert sorted(table.filters()) == [
        (0x01340000, 0x03FF0000, True),
        (0x01F01000, 0x03FFFF00, True),
    ]
    assert DecodeTable([db], j1939=False).lookup(0x0D34FF99 | EFF_FLAG) is None
    assert DecodeTable([db], j1939=False).filters() == [
        (m.frame_id, 0x1FFFFFFF, True) for m in db.messages
    ]


def test_j1939_forced_on_plain_database() -> None:
    db = cantools.database.load_string(EXT_AND_STD, database_format="dbc")
    table = DecodeTable([db], j1939=True)
    # 0x100 as a 29-bit id: PF 0x00 (PDU1), so DA 0x01 and SA 0x00 are masked
    assert table.lookup(0x1C0077AB | EFF_FLAG).message.name == "EXT"
    assert table.lookup(0x1C0000AB | EFF_FLAG).message.name == "EXT"
    assert table.lookup(0x1C0177AB | EFF_FLAG) is None  # PF 0x01
    assert table.lookup(0x1D0077AB | EFF_FLAG) is None  # data page 1
    assert table.lookup(0x100).message.name == "STD"  # 11-bit stays exact
    assert (0x100, 0x7FF, False) in table.filters()
    assert (0x0, 0x03FF0000, True) in table.filters()


@pytest.mark.parametrize("j1939", [None, False])
def test_lookup_unknown_keys_do_not_grow_without_bound(j1939) -> None:
    db = cantools.database.load_string(EXT_AND_STD, database_format="dbc")
    table = DecodeTable([db], j1939=j1939)
    for key in range(0x200, 0x200 + 10_000):
        assert table.lookup(key | EFF_FLAG) is None
    assert len(table._cache) < 5_000
