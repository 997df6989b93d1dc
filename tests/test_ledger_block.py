"""Records and block headers: encodings per docs/block-format.md and strict parsing."""

from __future__ import annotations

import hashlib

import cbor2
import nacl.signing
import pytest

from carledger.ledger import (
    BadMerkleRoot,
    BadSignature,
    Event,
    Header,
    MalformedBlock,
    Sample,
    ZERO_DIGEST,
    cbor,
    cose,
    decode_record,
    encode_event,
    encode_sample,
    kid,
    merkle,
    open_block,
    seal_block,
    split_records,
    with_records,
)

KEY = nacl.signing.SigningKey(b"\x07" * 32)


def test_sample_and_event_encodings():
    assert encode_sample(1_000_000, "Vehicle.Speed", 1.5) == cbor2.dumps([0, 1_000_000, "Vehicle.Speed", 1.5], canonical=True)
    assert encode_sample(1, "A.B", 2, "A.B") == encode_sample(1, "A.B", 2)  # source only when it differs
    five = encode_sample(1, "Vehicle.Speed", 3, "ESP.SPEED")
    assert cbor2.loads(five) == [0, 1, "Vehicle.Speed", 3, "ESP.SPEED"]
    assert decode_record(five) == Sample(1, "Vehicle.Speed", 3, "ESP.SPEED")
    assert decode_record(encode_sample(-5, "X", "on")) == Sample(-5, "X", "on", None)
    ev = encode_event(7, "policy", {"version": 3, "digest": b"\x01" * 32})
    assert decode_record(ev) == Event(7, "policy", {"version": 3, "digest": b"\x01" * 32})
    assert cbor.is_deterministic(ev) and cbor.is_deterministic(five)


@pytest.mark.parametrize(
    "obj",
    [
        [2, 1, "x", 1],  # unknown kind
        [0, 1.0, "x", 1],  # float time
        [0, 1, "", 1],
        [0, 1, "x"],
        [0, 1, "x", [1]],
        [0, 1, "x", True],
        [0, 1, "x", 1, "x"],  # source equal to name
        [0, 1, "x", 1, 5],
        [1, 1, "gap", [1]],
        [1, 1, "gap", {}, 5],
        {"t": 1},
    ],
)
def test_decode_record_rejects(obj):
    with pytest.raises(MalformedBlock):
        decode_record(cbor2.dumps(obj, canonical=True))


def test_decode_record_rejects_non_deterministic():
    with pytest.raises(MalformedBlock, match="deterministic"):
        decode_record(bytes.fromhex("84001801617801"))  # t=1 encoded in two bytes


def _header(**over):
    fields = dict(v=1, vid="VIN", stream="s", seq=0, prev=ZERO_DIGEST, t0=1, t1=2, policy=b"\x02" * 32, count=0, root=merkle.EMPTY_ROOT)
    fields.update(over)
    return Header(**fields)


def test_header_round_trip_and_key_order():
    h = _header(seq=5, count=3)
    data = h.encode()
    assert Header.decode(data) == h
    assert list(cbor2.loads(data)) == ["v", "t0", "t1", "seq", "vid", "prev", "root", "count", "policy", "stream"]


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(v=2), "v"),
        (dict(v=True), "v"),
        (dict(vid=""), "vid"),
        (dict(stream=5), "stream"),
        (dict(seq=-1), "seq"),
        (dict(seq=1.0), "seq"),
        (dict(prev=b"\x00" * 31), "prev"),
        (dict(t0="1"), "t0"),
        (dict(t0=3, t1=2), "t1"),
        (dict(policy="x" * 32), "policy"),
        (dict(count=2**64), "count"),
        (dict(root=None), "root"),
    ],
)
def test_header_validation_names_the_field(change, field):
    m = _header().to_map()
    m.update(change)
    data = cbor2.dumps(m, canonical=True)
    with pytest.raises(MalformedBlock, match=f"'{field}'"):
        Header.decode(data)


def test_header_missing_unknown_and_non_deterministic():
    m = _header().to_map()
    del m["root"]
    with pytest.raises(MalformedBlock, match="missing field 'root'"):
        Header.decode(cbor2.dumps(m, canonical=True))
    m = _header().to_map()
    m["extra"] = 1
    with pytest.raises(MalformedBlock, match="unknown field 'extra'"):
        Header.decode(cbor2.dumps(m, canonical=True))
    with pytest.raises(MalformedBlock, match="deterministic"):
        Header.decode(cbor2.dumps(_header().to_map()))  # insertion order, not sorted
    with pytest.raises(MalformedBlock):
        Header.decode(cbor2.dumps([1, 2]))


def test_seal_open_split():
    records = [encode_sample(i, "Vehicle.Speed", float(i)) for i in range(10)]
    blk = seal_block(vid="VIN", stream="s", seq=3, prev=b"\x01" * 32, t0=0, t1=9, policy=b"\x02" * 32, records=records, signing_key=KEY)
    assert blk.header.count == 10 and blk.header.root == merkle.root(records)
    assert blk.digest == hashlib.sha256(blk.payload).digest()
    msg = cose.decode_sign1(blk.sign1)
    assert msg.unprotected == {} and msg.protected == {1: -8, 4: kid(KEY.verify_key)} and msg.payload == blk.payload
    full = with_records(blk.sign1, records)
    assert split_records(full) == (blk.sign1, records)
    opened = open_block(full, KEY.verify_key)
    assert opened.header == blk.header and opened.records == records
    with pytest.raises(MalformedBlock, match="without its records"):
        open_block(blk.sign1, KEY.verify_key)  # a bare header is read only where its drop is declared
    assert open_block(blk.sign1, KEY.verify_key, allow_bare=True).records == []

    with pytest.raises(BadMerkleRoot):
        open_block(with_records(blk.sign1, records[:-1]), KEY.verify_key)
    with pytest.raises(BadMerkleRoot):
        open_block(with_records(blk.sign1, records[:-1] + [encode_sample(9, "Vehicle.Speed", 9.5)]), KEY.verify_key)
    with pytest.raises(BadSignature):
        open_block(full, nacl.signing.SigningKey(b"\x08" * 32).verify_key)


def test_open_block_on_random_mutations_raises_only_malformed_block():
    import random

    rng = random.Random(6962)
    records = [encode_sample(i, "Vehicle.Speed", float(i)) for i in range(5)] + [encode_event(9, "pause", {"a": [1, {"b": 2}]})]
    blk = seal_block(vid="VIN", stream="s", seq=0, prev=ZERO_DIGEST, t0=0, t1=9, policy=bytes(32), records=records, signing_key=KEY)
    full = with_records(blk.sign1, records)
    for _ in range(2000):
        data = bytearray(full)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data))
            if rng.random() < 0.7:
                data[at] = rng.randrange(256)
            else:
                del data[at : at + rng.randrange(1, 5)]
        try:
            open_block(bytes(data), KEY.verify_key)
        except MalformedBlock:
            pass


def test_fast_record_encoding_is_byte_identical_to_cbor2_canonical():
    import random

    import cbor2

    from carledger.ledger.writer import _encode_fast

    rng = random.Random(7)
    values = [0, 1, -1, 23, 24, 255, 256, 65535, 65536, 2**32, -(2**40), 0.0, -0.0, 1.5, 0.1, 1e300,
              float("inf"), float("-inf"), float("nan"), 3.4028234663852886e38, 65504.0, "x", "", "Ω"]
    names = ["Vehicle.Speed", "A.B", "x" * 30]
    recs = []
    for _ in range(3000):
        t = rng.choice([0.0, 1.5, 46408.589503, 1_700_000_000.123456, rng.uniform(0, 2e9), -5.0])
        name = rng.choice(names)
        src = rng.choice([None, name, "MSG.SIG"])
        recs.append((t, name, rng.choice(values + [rng.uniform(-1e6, 1e6), rng.randint(-2**63, 2**64 - 1)]), src))
    for _ in range(2):  # the second pass hits the cache
        encoded, tus = _encode_fast(recs)
        for (t, name, value, src), data, tu in zip(recs, encoded, tus):
            expected = cbor2.dumps((0, tu, name, value) if src in (None, name) else (0, tu, name, value, src), canonical=True)
            assert data == expected, (t, name, value, src)
