"""Deterministic CBOR against an independent RFC 8949 §4.2.1 reference encoder."""

from __future__ import annotations

import math
import random
import struct

import pytest

from carledger.ledger import cbor
from carledger.ledger.errors import CBOREncodeError, MalformedBlock


# -- a tiny reference encoder, written from RFC 8949 §3 and §4.2.1 only -----------------------


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")
    raise ValueError("too big")


def _float(x: float) -> bytes:
    if math.isnan(x):
        return b"\xf9\x7e\x00"
    want = struct.pack(">d", x)
    for fmt, ib in ((">e", 0xF9), (">f", 0xFA)):
        try:
            packed = struct.pack(fmt, x)
        except (OverflowError, struct.error):
            continue
        if struct.pack(">d", struct.unpack(fmt, packed)[0]) == want:
            return bytes([ib]) + packed
    return b"\xfb" + want


def ref(obj) -> bytes:
    if obj is None:
        return b"\xf6"
    if obj is False:
        return b"\xf4"
    if obj is True:
        return b"\xf5"
    if isinstance(obj, int):
        return _head(0, obj) if obj >= 0 else _head(1, -1 - obj)
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, str):
        b = obj.encode("utf-8")
        return _head(3, len(b)) + b
    if isinstance(obj, bytes):
        return _head(2, len(obj)) + obj
    if isinstance(obj, (list, tuple)):
        return _head(4, len(obj)) + b"".join(ref(x) for x in obj)
    if isinstance(obj, dict):
        items = sorted((ref(k), ref(v)) for k, v in obj.items())  # bytewise order of the encoded keys
        return _head(5, len(items)) + b"".join(k + v for k, v in items)
    raise TypeError(type(obj))


def _random_value(rng: random.Random, depth: int = 0):
    choice = rng.randrange(10 if depth < 3 else 7)
    if choice == 0:
        return rng.choice([None, True, False])
    if choice == 1:
        return rng.choice([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, -1, -24, -25, -256, -257, -(2**32) - 1])
    if choice == 2:
        return rng.randint(-(2**40), 2**40)
    if choice == 3:
        return rng.choice([0.0, -0.0, 1.5, 0.1, 65504.0, 1e-8, 3.4e38, 1e300, float("inf"), -float("inf"), float("nan"), 100000.0, 5.960464477539063e-08])
    if choice == 4:
        return "".join(rng.choice("abcé€😀") for _ in range(rng.randrange(30)))
    if choice == 5:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    if choice == 6:
        return rng.uniform(-1e6, 1e6)
    if choice == 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = [rng.randint(-24, 23) for _ in range(3)] + ["".join(rng.choice("abz") for _ in range(rng.randrange(23))) for _ in range(3)]
    return {k: _random_value(rng, depth + 1) for k in rng.sample(keys, rng.randrange(len(keys)))}


def _same(a, b) -> bool:
    return ref(a) == ref(b)


def test_matches_reference_encoder_on_random_values():
    rng = random.Random(8949)
    for _ in range(3000):
        value = _random_value(rng)
        data = cbor.encode(value)
        assert data == ref(value), value
        assert cbor.is_deterministic(data)
        assert _same(cbor.decode(data), value)


def test_key_order_is_bytewise():
    m = {"aa": 1, "b": 2, 1: 3, -1: 4, 23: 5, -24: 6, "": 7, "z" * 23: 8}
    assert cbor.encode(m) == ref(m)
    assert cbor.encode(m).hex().startswith("a8" "0103" "1705" "2004" "3706" "6007" "616202")


@pytest.mark.parametrize(
    "value",
    [{100: 1, 1: 2}, {-25: 1, 2: 2}, {b"x": 1, "a": 2}, {"a" * 24: 1, "b": 2}, {1.5: 1, 2: 2}, {(1,): 1, 2: 2},
     [{"ok": {24: 1, 0: 2}}], {"é" * 12: 1, "a": 2}, object(), {1, 2}],
)
def test_guard_rejects_keys_where_orders_differ(value):
    with pytest.raises(CBOREncodeError):
        cbor.encode(value)


def test_single_entry_map_may_use_any_int_or_text_key():
    m = {-65537: [b"rec"]}
    assert cbor.encode(m) == ref(m) == bytes.fromhex("a13a000100008143726563")
    assert cbor.encode({"x" * 40: 1}) == ref({"x" * 40: 1})


@pytest.mark.parametrize(
    "hexdata",
    [
        "1801",  # 1 not in its shortest form
        "fb3ff8000000000000",  # 1.5 as float64
        "fa3fc00000",  # 1.5 as float32
        "a2616201616101",  # {"b": 1, "a": 1}: keys out of order
        "a2200101 02".replace(" ", ""),  # {-1: 1, 1: 2}: keys out of order
        "9f01ff",  # indefinite array
        "7f6161ff",  # indefinite text
        "a201010102",  # duplicate key
        "0102",  # trailing bytes
        "",
        "ff",
        "5affffffff",  # byte string longer than the data
        "c24101",  # bignum 1 (fits a plain integer)
        "d81c8101",  # shared value tag
    ],
)
def test_is_deterministic_rejects(hexdata):
    assert not cbor.is_deterministic(bytes.fromhex(hexdata))


@pytest.mark.parametrize("bits", ["7fc00000", "ffc00000", "7fc00001", "7f800001", "ffffffff"])
def test_every_nan_is_the_one_nan(bits):
    """A float signal's NaN, whatever its sign and payload (quiet, signalling, negative), is written as f97e00.

    So a block says that the bus sent NaN, not which NaN (docs/block-format.md); any other NaN encoding
    of it, a half with a payload or the float64 the decoder holds, is not deterministic.
    """
    value = struct.unpack(">f", bytes.fromhex(bits))[0]
    assert math.isnan(value) and cbor.encode(value) == bytes.fromhex("f97e00")
    assert math.isnan(cbor.decode(bytes.fromhex("f97e00")))
    assert not cbor.is_deterministic(b"\xfb" + struct.pack(">d", value))
    for other in ("f9fe00", "f97e01", "fa7fc00000"):
        assert not cbor.is_deterministic(bytes.fromhex(other))


def test_decode_errors_are_malformed_block():
    for bad in (b"", b"\xff", b"\x5b" + b"\xff" * 8, b"\x81" * 1000 + b"\x01", b"\x01\x02", "text", None):
        with pytest.raises(MalformedBlock):
            cbor.decode(bad)
