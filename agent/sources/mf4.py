"""CAN frames of an ASAM MDF 4 bus-logging file, read as a stream without asammdf.

python-can's MF4Reader goes through asammdf, which imports numpy and pandas
(about 75 MB of RSS before the first frame). Bus logging (ASAM MDF 4 bus
logging, as CANedge and python-can's MF4Writer write it) needs very little of
MDF: per data group one channel group of fixed-length records, a float or
integer time channel with at most a linear conversion, the `CAN_DataFrame` /
`CAN_RemoteFrame` / `CAN_ErrorFrame` structure with little-endian integer
fields, and the payload inline or variable-length in a signal-data block.
This reader does that and nothing more, in constant memory: records are read
a chunk at a time from DT blocks (or DL lists of them, deflated DZ blocks one
block at a time), and payloads from the SD stream as the records point to it.

The messages are the ones python-can's MF4Reader gives (same groups, same
fields, the same merge by time across groups, the same start time from the
header); `tests/test_sources.py` checks that against it. Whatever else a file
uses (unsorted data groups, other data types, other conversions) raises
`Unsupported`, and the caller reads the file through asammdf instead.
"""

from __future__ import annotations

import datetime
import heapq
import struct
import zlib
from typing import Any, BinaryIO, Iterator

from can.message import Message

_CHUNK = 1 << 16  # bytes read from the file at a time
_BUS_EVENT = 1 << 1  # cg_flags: the group holds bus events
_VLSD_GROUP = 1  # cg_flags: a variable-length signal-data group (only in unsorted files)
_SOURCE_BUS, _BUS_TYPE_CAN = 2, 2
_KINDS = ("CAN_DataFrame", "CAN_ErrorFrame", "CAN_RemoteFrame")  # python-can's order of preference in a group
_UINT_LE, _FLOAT_LE, _BYTES = 0, 4, 10


class Unsupported(Exception):
    """A valid MF4 file that uses more of MDF than this reader does; str() says what."""


class Mf4Error(Exception):
    """A damaged MF4 file; str() says where."""


class _Blocks:
    """Reads MDF 4 blocks: (id, links, data) at an address."""

    def __init__(self, file: BinaryIO):
        self.file = file

    def header(self, address: int) -> tuple[bytes, int, tuple[int, ...]]:
        self.file.seek(address)
        head = self.file.read(24)
        if len(head) < 24 or head[:2] != b"##":
            raise Mf4Error(f"no block at offset {address}")
        ident, length, count = head[2:4], *struct.unpack_from("<QQ", head, 8)
        links = self.file.read(8 * count)
        if len(links) < 8 * count or length < 24 + 8 * count:
            raise Mf4Error(f"truncated {ident.decode(errors='replace')} block at offset {address}")
        return ident, length, struct.unpack(f"<{count}Q", links)

    def read(self, address: int, limit: int = 1 << 20) -> tuple[bytes, tuple[int, ...], bytes]:
        """A small block whole (its data up to `limit` bytes)."""
        ident, length, links = self.header(address)
        size = min(length - 24 - 8 * len(links), limit)
        data = self.file.read(size)
        if len(data) < size:
            raise Mf4Error(f"truncated {ident.decode(errors='replace')} block at offset {address}")
        return ident, links, data

    def text(self, address: int) -> str:
        if not address:
            return ""
        _, _, data = self.read(address)
        return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")

    def chain(self, address: int) -> Iterator[tuple[int, tuple[int, ...], bytes]]:
        """(address, links, data) of each block in a list linked by its first link."""
        seen = set()
        while address:
            if address in seen:
                raise Mf4Error(f"a loop of blocks at offset {address}")
            seen.add(address)
            _, links, data = self.read(address, 4096)
            yield address, links, data
            address = links[0] if links else 0

    def stream(self, address: int) -> Iterator[bytes]:
        """The bytes of a data block (DT, SD, DZ, or a DL/HL list of them), in pieces of bounded size."""
        if not address:
            return
        ident, length, links = self.header(address)
        if ident in (b"DT", b"SD", b"DV"):
            start, remaining = address + 24 + 8 * len(links), length - 24 - 8 * len(links)
            while remaining > 0:
                self.file.seek(start)
                piece = self.file.read(min(_CHUNK, remaining))
                if not piece:
                    raise Mf4Error(f"truncated data block at offset {address}")
                start += len(piece)
                remaining -= len(piece)
                yield piece
        elif ident == b"DZ":
            yield self._inflate(address)
        elif ident == b"DL":
            for _, dl_links, data in self.chain(address):
                count = struct.unpack_from("<I", data, 4)[0]
                for member in dl_links[1:1 + count]:
                    yield from self.stream(member)
        elif ident == b"HL":
            yield from self.stream(links[0])
        else:
            raise Unsupported(f"{ident.decode(errors='replace')} data blocks")

    def _inflate(self, address: int) -> bytes:
        _, _, data = self.read(address, 1 << 40)
        zip_type, columns, original, size = data[2], *struct.unpack_from("<IQQ", data, 4)
        try:
            plain = zlib.decompress(data[24:24 + size])
        except zlib.error as exc:
            raise Mf4Error(f"DZ block at offset {address}: {exc}") from None
        if len(plain) != original:
            raise Mf4Error(f"DZ block at offset {address}: {len(plain)} bytes, not {original}")
        if zip_type == 0:
            return plain
        if zip_type != 1 or not columns:
            raise Unsupported(f"zip type {zip_type}")
        rows = len(plain) // columns  # transposed: column c of every record, then c + 1 ...
        out = bytearray(plain)
        for column in range(columns):
            out[column:rows * columns:columns] = plain[column * rows:(column + 1) * rows]
        return bytes(out)


class _Field:
    """One integer field of a record: little-endian, `bits` wide at `byte`.`bit`."""

    __slots__ = ("byte", "end", "shift", "mask")

    def __init__(self, byte: int, bit: int, bits: int):
        self.byte, self.end, self.shift, self.mask = byte, byte + (bit + bits + 7) // 8, bit, (1 << bits) - 1

    def __call__(self, record: bytes) -> int:
        return (int.from_bytes(record[self.byte:self.end], "little") >> self.shift) & self.mask


class _SignalData:
    """Variable-length values of an SD stream, read forward as the records ask for them."""

    def __init__(self, blocks: _Blocks, address: int):
        self.blocks, self.address = blocks, address
        self._restart()

    def _restart(self) -> None:
        self.pieces = self.blocks.stream(self.address)
        self.buffer, self.start = b"", 0  # self.buffer holds the stream's bytes from offset self.start

    def _take(self, offset: int, size: int) -> bytes:
        if offset < self.start:  # backwards: rare (records point forward), so read from the start again
            self._restart()
        while self.start + len(self.buffer) < offset + size:
            piece = next(self.pieces, None)
            if piece is None:
                raise Mf4Error(f"signal data ends before offset {offset + size}")
            keep = max(0, offset - self.start)
            self.buffer, self.start = self.buffer[keep:] + piece, self.start + keep
        at = offset - self.start
        return self.buffer[at:at + size]

    def at(self, offset: int) -> bytes:
        size = struct.unpack("<I", self._take(offset, 4))[0]
        return self._take(offset + 4, size)


class _Group:
    """One channel group of bus events: its records read as python-can's messages of that kind."""

    def __init__(self, blocks: _Blocks, data: int, kind: str, size: int, count: int, time: tuple, fields: dict):
        self.blocks, self.data, self.kind, self.size, self.count = blocks, data, kind, size, count
        self.time, self.fields = time, fields

    def records(self) -> Iterator[bytes]:
        left, rest = self.count, b""
        for piece in self.blocks.stream(self.data):
            piece = rest + piece if rest else piece
            whole = min(len(piece) // self.size, left)
            for at in range(0, whole * self.size, self.size):
                yield piece[at:at + self.size]
            left -= whole
            if not left:
                return
            rest = piece[whole * self.size:]
        if left:
            raise Mf4Error(f"{self.kind}: {left} of {self.count} records missing")

    def __iter__(self) -> Iterator[Message]:
        (t_byte, t_type, t_bits), (factor, offset), start = self.time
        unpack_time = struct.Struct("<d" if t_bits == 64 else "<f").unpack_from if t_type == _FLOAT_LE else None
        fields, kind = self.fields, self.kind
        for record in self.records():
            if unpack_time is not None:
                raw: Any = unpack_time(record, t_byte)[0]
            else:
                raw = int.from_bytes(record[t_byte:t_byte + t_bits // 8], "little")
            t = raw if factor is None else (raw * factor + offset if offset else raw * factor)
            values = {name: read(record) for name, read in fields.items()}
            yield _message(kind, float(t) + start, values)


def _message(kind: str, timestamp: float, v: dict) -> Message:
    """The Message python-can's MF4Reader makes of the same record (can/io/mf4.py)."""
    kw: dict[str, Any] = {"timestamp": timestamp}
    if kind == "CAN_DataFrame":
        kw["arbitration_id"] = v["ID"] & 0x1FFFFFFF
        kw["data"] = v["DataBytes"][:v["DataLength"]]
    elif kind == "CAN_RemoteFrame":
        kw.update(arbitration_id=v["ID"] & 0x1FFFFFFF, dlc=v["DLC"], is_remote_frame=True)
    else:
        kw["is_error_frame"] = True
        if "ID" in v:
            kw["arbitration_id"] = v["ID"] & 0x1FFFFFFF
        if "RTR" in v:
            kw["is_remote_frame"] = bool(v["RTR"])
        if "DataLength" in v and "DataBytes" in v:
            kw["data"] = v["DataBytes"][:v["DataLength"]]
    if "BusChannel" in v:
        kw["channel"] = v["BusChannel"]
    if "Dir" in v:
        kw["is_rx"] = v["Dir"] == 0
    for name, key in (("IDE", "is_extended_id"), ("EDL", "is_fd"), ("BRS", "bitrate_switch"),
                      ("ESI", "error_state_indicator")):
        if name in v:
            kw[key] = bool(v[name])
    return Message(**kw)


_WANTED = {"BusChannel", "ID", "IDE", "DLC", "DataLength", "DataBytes", "Dir", "EDL", "BRS", "ESI", "RTR"}


class Mf4Reader:
    """python-can's messages of an MF4 bus-logging file; `Unsupported` or `Mf4Error` on open."""

    def __init__(self, path: str):
        self.file = open(path, "rb")
        try:
            self.blocks = _Blocks(self.file)
            self.groups = self._groups()
        except BaseException:
            self.file.close()
            raise

    def __iter__(self) -> Iterator[Message]:
        return heapq.merge(*self.groups, key=lambda msg: msg.timestamp)

    def stop(self) -> None:
        self.file.close()

    def _groups(self) -> list[_Group]:
        ident = self.file.read(64)
        if len(ident) < 64 or not ident.startswith(b"MDF"):
            raise Mf4Error("not an MDF file")
        version = struct.unpack_from("<H", ident, 28)[0]
        if version < 400:
            raise Unsupported(f"MDF version {version}")
        _, hd_links, hd = self.blocks.read(64)
        start = _start_time(*struct.unpack_from("<QhhB", hd))
        groups = []
        for _, dg_links, dg in self.blocks.chain(hd_links[0]):
            cgs = list(self.blocks.chain(dg_links[1]))
            if dg[0] != 0 or len(cgs) > 1:
                raise Unsupported("unsorted data groups")
            for _, cg_links, cg in cgs:
                group = self._group(dg_links[2], cg_links, cg, start)
                if group is not None:
                    groups.append(group)
        return groups

    def _group(self, data: int, cg_links: tuple, cg: bytes, start: float) -> _Group | None:
        count, flags = struct.unpack_from("<QH", cg, 8)
        size, invalid = struct.unpack_from("<II", cg, 24)  # after record id, cycles, flags, separator, reserved
        if not flags & _BUS_EVENT or count == 0 or not cg_links[3]:
            return None
        _, _, si = self.blocks.read(cg_links[3])
        if not si[0] & _SOURCE_BUS or si[1] != _BUS_TYPE_CAN:
            return None
        if flags & _VLSD_GROUP:
            raise Unsupported("variable-length channel groups")
        channels = list(self._channels(cg_links[1]))
        names = {name for name, _, _, _ in channels}
        kind = next((k for k in _KINDS if k in names), None)
        if kind is None:
            return None
        time = None
        fields: dict = {}
        for name, links, cn, conversion in channels:
            cn_type, _, data_type, bit, byte, bits = struct.unpack_from("<BBBBII", cn)
            if cn_type == 2:  # the master channel: time
                if conversion is None:
                    raise Unsupported(f"a non-linear conversion of {name}")
                if data_type not in (_FLOAT_LE, _UINT_LE) or bit or bits not in (32, 64):
                    raise Unsupported(f"time channel of data type {data_type}, {bits} bits")
                time = ((byte, data_type, bits), conversion, start)
                continue
            part = name[len(kind) + 1:] if name.startswith(kind + ".") else ""
            if part not in _WANTED:
                continue
            if conversion != (None, 0.0) and part != "Dir":
                raise Unsupported(f"a conversion on {name}")
            if part == "Dir" and conversion != (None, 0.0):
                continue  # a text table ("Rx"/"Tx"): python-can compares it with b"Rx"; not needed for frames
            if part == "DataBytes":
                fields[part] = self._bytes(name, links, cn_type, data_type, bit, byte, bits)
            elif cn_type == 0 and data_type == _UINT_LE and bits <= 64:
                fields[part] = _Field(byte, bit, bits)
            else:
                raise Unsupported(f"{name} of channel type {cn_type}, data type {data_type}")
        if time is None:
            raise Unsupported("a group without a time channel")
        return _Group(self.blocks, data, kind, size + invalid, count, time, fields)

    def _bytes(self, name: str, links: tuple, cn_type: int, data_type: int, bit: int, byte: int, bits: int) -> Any:
        if data_type != _BYTES or bit:
            raise Unsupported(f"{name} of data type {data_type}")
        if cn_type == 0:
            end = byte + bits // 8
            return lambda record: record[byte:end]
        if cn_type == 1 and links[5]:
            ident, _, _ = self.blocks.header(links[5])
            if ident == b"CG":
                raise Unsupported("variable-length channel groups")
            sd = _SignalData(self.blocks, links[5])
            offset = _Field(byte, 0, 64)
            return lambda record: sd.at(offset(record))
        raise Unsupported(f"{name} of channel type {cn_type}")

    def _channels(self, address: int) -> Iterator[tuple[str, tuple, bytes, Any]]:
        """(name, links, data, (factor, offset)) of each channel and the members of its structure, in order."""
        for _, links, cn in self.blocks.chain(address):
            yield self.blocks.text(links[2]), links, cn, self._conversion(links[4])
            if links[1]:
                ident, _, _ = self.blocks.header(links[1])
                if ident == b"CN":
                    yield from self._channels(links[1])

    def _conversion(self, address: int) -> tuple[float | None, float] | None:
        """(factor, offset) of a linear conversion (asammdf: value * factor, + offset if any); (None, 0.0) for
        none; None for any other kind."""
        if not address:
            return None, 0.0
        _, _, cc = self.blocks.read(address)
        kind, _, _, _, values = struct.unpack_from("<BBHHH", cc)
        if kind == 0:
            return None, 0.0
        if kind == 1 and values == 2:
            offset, factor = struct.unpack_from("<dd", cc, 24)
            return factor, offset
        return None  # any other kind: refused by the caller unless the channel is not needed


def _start_time(nanoseconds: int, tz_minutes: int, dst_minutes: int, flags: int) -> float:
    """The header's start as asammdf gives it to python-can (a naive local time when the file says so)."""
    seconds = nanoseconds / 10**9
    local = bool(flags & 1)
    zone = datetime.timezone.utc if local else datetime.timezone(datetime.timedelta(minutes=tz_minutes + dst_minutes))
    try:
        start = datetime.datetime.fromtimestamp(seconds, zone)
        if local:
            start = start.replace(tzinfo=None)
    except OverflowError:
        start = datetime.datetime.fromtimestamp(0, zone) + datetime.timedelta(seconds=seconds)
    return start.timestamp()
