"""A minimal ASAM MDF 4 bus-logging writer, so tests can make MF4 files of any size without asammdf.

One sorted data group of CAN_DataFrame records (time float64 seconds, ID, IDE,
BusChannel, DataLength, 8 data bytes inline) in one DT block: the layout
carledger.sources.mf4 reads, and python-can's MF4Reader (asammdf) reads too.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable

_RECORD = struct.Struct("<dIB8s")  # time; IDE bit 0, BusChannel bits 1-2, ID bits 3-31; DataLength; DataBytes


def _channel(name: str, next_cn: object, child: object, cn_type: int, data_type: int, bit: int, byte: int,
             bits: int, sync: int = 0) -> list:
    data = struct.pack("<BBBBIIIIBBH6d", cn_type, sync, data_type, bit, byte, bits, 0, 0, 0, 0, 0, *([0.0] * 6))
    return [("CN", [next_cn, child, f"tx:{name}", 0, 0, 0, 0, 0], data), (f"tx:{name}", name)]


def write_mf4(path: Path, frames: Iterable[tuple[float, int, bool, int, bytes]], start_ns: int) -> None:
    """frames: (seconds after start, identifier, extended, channel 0-3, payload of up to 8 bytes)."""
    records = bytearray()
    count = 0
    for t, ident, extended, channel, data in frames:
        records += _RECORD.pack(t, (ident << 3) | (channel << 1) | int(extended), len(data), data.ljust(8, b"\0"))
        count += 1
    prefix = "CAN_DataFrame."
    children = [("ID", 0, 3, 8, 29), ("IDE", 0, 0, 8, 1), ("BusChannel", 0, 1, 8, 2), ("DataLength", 0, 0, 12, 7),
                ("DataBytes", 10, 0, 13, 64)]
    blocks: list = [
        ("hd", ("HD", ["dg", 0, 0, 0, 0, 0], struct.pack("<QhhBBBBdd", start_ns, 0, 0, 2, 0, 0, 0, 0.0, 0.0))),
        ("dg", ("DG", [0, "cg", "dt", 0], bytes(8))),
        ("cg", ("CG", [0, "cn:time", 0, "si", 0, 0], struct.pack("<QQHHIII", 0, count, 2, 0, 0, _RECORD.size, 0))),
        ("si", ("SI", [0, 0, 0], bytes([2, 2]) + bytes(6))),
        ("dt", ("DT", [], bytes(records))),
    ]
    (cn, tx) = _channel("Timestamp", "cn:frame", 0, 2, 4, 0, 0, 64, sync=1)
    blocks += [("cn:time", cn), (tx[0], ("TX", [], tx[1].encode() + b"\0"))]
    (cn, tx) = _channel("CAN_DataFrame", 0, f"cn:{children[0][0]}", 0, 10, 0, 8, 13 * 8)
    blocks += [("cn:frame", cn), (tx[0], ("TX", [], tx[1].encode() + b"\0"))]
    for i, (name, data_type, bit, byte, bits) in enumerate(children):
        after = f"cn:{children[i + 1][0]}" if i + 1 < len(children) else 0
        (cn, tx) = _channel(prefix + name, after, 0, 0, data_type, bit, byte, bits)
        blocks += [(f"cn:{name}", cn), (tx[0], ("TX", [], tx[1].encode() + b"\0"))]
    at, where = 64, {}
    for name, (ident, links, data) in blocks:
        where[name] = at
        at += (24 + 8 * len(links) + len(data) + 7) // 8 * 8
    out = bytearray(b"MDF     4.10    carledgr" + bytes(4) + struct.pack("<H", 410) + bytes(34))
    for name, (ident, links, data) in blocks:
        resolved = [where[link] if isinstance(link, str) else link for link in links]
        size = 24 + 8 * len(links) + len(data)
        out += b"##" + ident.encode() + bytes(4) + struct.pack("<QQ", size, len(links))
        out += struct.pack(f"<{len(links)}Q", *resolved) + data
        out += bytes(-len(out) % 8)
    path.write_bytes(bytes(out))
