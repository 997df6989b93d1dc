"""The collector's faster paths give exactly the answers of the ledger's own checks they stand in for.

`open_received` checks a block's records all at once (the fleet's plain samples): compared here with
`open_block` on valid blocks and on every kind of broken record. `AckSigner` signs acks and receipts with
what does not change made once: compared with the generic COSE and note constructions.
"""

from __future__ import annotations

import random

import cbor2
import pytest

from carledger.collect.collector import Collector, open_received
from carledger.ledger import ZERO_DIGEST, MalformedBlock, encode_event, encode_sample, open_block, seal_block
from carledger.ledger.keys import SigningKey
from carledger.sync.ack import cosign_tree

SK = SigningKey.generate()
T = 1_700_000_000_000_000


def seal(records: list[bytes]) -> bytes:
    return seal_block(vid="car-1", stream="fleet", seq=0, prev=ZERO_DIGEST, t0=T, t1=T + 10, policy=bytes(32),
                      records=records, signing_key=SK).message()


def outcome(fn, message: bytes):
    try:
        b = fn(message, SK.verify_key)
        return ("ok", b.header, b.digest, b.sign1, b.records)
    except MalformedBlock as exc:
        return (type(exc).__name__, str(exc))


def samples(n: int = 50) -> list[bytes]:
    return [encode_sample(T + i, "Vehicle.Speed", float(i % 90)) for i in range(n)]


# Records each of which decode_record refuses (or, for the last ones, accepts on the slow path).
ODD = [
    cbor2.dumps([0, T, "Vehicle.Speed", 1.0]) + b"\x00",  # trailing byte
    bytes.fromhex("84") + bytes.fromhex("00") + cbor2.dumps(T) + cbor2.dumps("a") + bytes.fromhex("fb3ff0000000000000"),  # 1.0 as float64
    bytes.fromhex("9f00") + cbor2.dumps(T) + cbor2.dumps("a") + cbor2.dumps(1) + b"\xff",  # indefinite array
    cbor2.dumps([0, T, "", 1]),  # empty name
    cbor2.dumps([0, T, "a", True]),  # bool value
    cbor2.dumps([0, T, "a", None]),
    cbor2.dumps([False, T, "a", 1]),  # kind False
    cbor2.dumps([0.0, T, "a", 1]),
    cbor2.dumps([0, 1.5, "a", 1]),  # float time
    cbor2.dumps([0, T, b"a", 1]),  # bytes name
    cbor2.dumps([0, T, "a"]),  # 3 items
    cbor2.dumps([2, T, "a", 1]),  # unknown kind
    cbor2.dumps({0: 1}),
    cbor2.dumps([0, T, "a", [1]]),
    b"\x84\x00",  # truncated
    b"",
    b"\xd8\x1c" + cbor2.dumps([0, T, "a", 1]),  # value-sharing tag around a sample
    cbor2.dumps([0, T, "a", 1, "a"]),  # source equal to the name
    encode_sample(T, "a", 1, "b"),  # a valid 5-item sample: slow path, accepted
    encode_event(T, "retention", {"stream": "fleet", "seqs": [[0, 3]]}),  # a valid event: slow path, accepted
    encode_sample(T, "a", "text"),
    encode_sample(T, "a", -(1 << 63)),
]


def test_valid_blocks_open_the_same():
    for records in (samples(), samples(1), [], samples(3) + [encode_event(T, "note", {"a": 1})], samples(280)):
        m = seal(records)
        assert outcome(open_received, m) == outcome(lambda m, k: open_block(m, k, allow_bare=True), m)
        assert outcome(open_received, m)[0] == "ok"


@pytest.mark.parametrize("i", range(len(ODD)))
def test_each_odd_record_gets_open_blocks_answer(i):
    rng = random.Random(i)
    for pos in (0, 7, 49):
        records = samples()
        records[pos] = ODD[i]
        m = seal(records)
        want = outcome(lambda m, k: open_block(m, k, allow_bare=True), m)
        assert outcome(open_received, m) == want
        # and among other broken records: the first one is named
        records[rng.randrange(pos, 50)] = ODD[rng.randrange(len(ODD))]
        m = seal(records)
        assert outcome(open_received, m) == outcome(lambda m, k: open_block(m, k, allow_bare=True), m)


def test_random_byte_flips_get_open_blocks_answer():
    rng = random.Random(15)
    m = seal(samples())
    seen = set()
    for _ in range(400):
        b = bytearray(m)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        got = outcome(open_received, bytes(b))
        assert got == outcome(lambda m, k: open_block(m, k, allow_bare=True), bytes(b))
        seen.add(got[0])
    assert "ok" not in seen and "BadSignature" in seen


def test_bare_block_opens_the_same():
    from carledger.ledger.block import split_records

    m = seal(samples())
    bare = split_records(m)[0]
    assert outcome(open_received, bare) == outcome(lambda m, k: open_block(m, k, allow_bare=True), bare)


def test_receipts_are_the_generic_note_cosignature(tmp_path):
    """AckSigner.receipt (the collector's, its cosigner made once) is note.signature_for's line, byte for byte."""
    from carledger.sync.ack import cosigner_name
    from carledger.transparency import note
    from carledger.transparency.checkpoint import Checkpoint
    from carledger.transparency.cosignature import CosignatureSigner

    c = Collector(tmp_path / "c", clock=lambda: 1_700_000_123.9)
    generic = CosignatureSigner(cosigner_name(bytes(c.ack_key.verify_key)), c.ack_key, c.clock)
    root = bytes(range(32))
    for size in (1, 2, 1000):
        line = note.signature_for(Checkpoint(f"o/{size}", size, root).text(), generic).line().rstrip("\n")
        assert c.signer.receipt(f"o/{size}", size, root) == line
        assert cosign_tree(c.ack_key, f"o/{size}", size, root, c.clock) == line
    c.close()


def test_acks_are_the_generic_cose_sign1(tmp_path):
    """AckSigner.ack (its protected header encoded once, the body by canonical CBOR) is cose.sign1's message."""
    import os

    from carledger.ledger import cbor, cose
    from carledger.ledger.keys import kid
    from carledger.sync.ack import ACK_TYPE, Ack, open_ack, sign_ack

    c = Collector(tmp_path / "c")
    protected = {cose.HDR_ALG: cose.ALG_EDDSA, 3: ACK_TYPE, cose.HDR_KID: kid(c.ack_key.verify_key)}
    for ack in (Ack("car-1", "fleet", 0, os.urandom(32), None), Ack("car-1", "s.2", (1 << 63) - 1, os.urandom(32), "x y"),
                Ack("p:q", "fleet", 300, bytes(32), "— carledger.example/collector/ab " + "A" * 96)):
        body = {"vehicle": ack.vehicle, "stream": ack.stream, "seq": ack.seq, "digest": ack.digest}
        if ack.cosignature is not None:
            body["cosignature"] = ack.cosignature
        generic = cose.sign1(cbor.encode(body), c.ack_key, protected)
        assert c.signer.ack(ack) == sign_ack(c.ack_key, ack) == generic
        assert open_ack(generic, c.ack_key.verify_key, ack.vehicle, ack.stream) == ack
    c.close()


def test_received_message_is_the_blocks():
    from carledger.ledger.block import split_records

    for records in (samples(), samples(1), []):
        m = seal(records)
        got, want = open_received(m, SK.verify_key), open_block(m, SK.verify_key, allow_bare=True)
        assert got.message() == want.message() and got.message(False) == want.message(False)
        assert got == want
        bare = split_records(m)[0]
        assert open_received(bare, SK.verify_key).message() == open_block(bare, SK.verify_key, allow_bare=True).message()


def test_read_buffer_gives_paho_the_same_bytes():
    import socket
    import threading

    from carledger.collect.service import _ReadBuffer

    a, b = socket.socketpair()
    try:
        data = bytes(range(256)) * 5000
        threading.Thread(target=a.sendall, args=(data[:300_000],), daemon=True).start()
        b.setblocking(False)
        r = _ReadBuffer(b)
        got, sizes = bytearray(), [1, 1, 7, 300, 70_000, 1, 2]
        i = 0
        import time
        deadline = time.monotonic() + 5
        while len(got) < 300_000 and time.monotonic() < deadline:
            try:
                piece = r.recv(sizes[i % len(sizes)])
            except BlockingIOError:
                continue
            assert len(piece) <= sizes[i % len(sizes)]
            got += piece
            i += 1
        assert bytes(got) == data[:300_000] and r.pending() == 0
        with pytest.raises(BlockingIOError):
            r.recv(1)
        a.sendall(b"xyz")
        time.sleep(0.05)
        assert r.recv(1) == b"x" and r.pending() == 2 and r.recv(5) == b"yz"
        assert r.fileno() == b.fileno()
        a.close()
        time.sleep(0.05)
        assert r.recv(1) == b""
    finally:
        b.close()
