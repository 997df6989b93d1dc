"""Ed25519 strictness (docs/ledger-keys.md) against the published edge-case vectors: Wycheproof and C2SP CCTV.

Each vector runs through the one check the ledger and the collector use
(keys.verify_signature, behind cose.verify_sign1 and open_block), and its
outcome is asserted together with the documented reason. Blocks then show
the same rule end to end: a block whose signature is re-encoded is refused by
open_block and by the collector, and `collect enroll` refuses every weak key.
"""

from __future__ import annotations

import json
from pathlib import Path

import nacl.exceptions
import nacl.signing
import pytest

from carledger.cli import main
from carledger.collect import Collector
from carledger.ledger import BadSignature, Ledger, Store, cose, open_block
from carledger.ledger.keys import public_key_problem, verify_signature
from carledger.sync import topics
from carledger.sync.wire import BlockPacker

DATA = Path(__file__).parent / "data" / "ed25519"
L = 2**252 + 27742317777372353535851937790883648493  # the prime order of the base point
KEY_FLAGS = {"low_order_A", "non_canonical_A", "low_order_component_A"}
# What libsodium's crypto_sign_verify_detached refuses on its own (docs/ledger-keys.md).
LIBSODIUM_REFUSES = {"low_order_A", "non_canonical_A", "low_order_R", "non_canonical_R", "low_order_residue"}


def _wycheproof():
    doc = json.loads((DATA / "wycheproof_ed25519_test_1-63.json").read_text())
    return [(g["publicKey"]["pk"], t) for g in doc["testGroups"] for t in g["tests"]]


def _cctv():
    return json.loads((DATA / "cctv_ed25519vectors_0-39.json").read_text())


def _low_order_points():
    lines = (DATA / "cctv_low_order_points.txt").read_text().splitlines()
    return [line.split()[0] for line in lines if line and not line.startswith("#")]


def _libsodium_alone(key: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(key).verify(msg, sig)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def test_wycheproof_every_vector_as_the_file_says():
    cases = _wycheproof()
    assert [t["tcId"] for _, t in cases] == list(range(1, 64))
    for pk, t in cases:
        key = nacl.signing.VerifyKey(bytes.fromhex(pk))
        ok = verify_signature(key, bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"]))
        assert ok is (t["result"] == "valid"), f"tcId {t['tcId']} ({t['flags']}, {t['comment']!r})"
    assert public_key_problem(bytes.fromhex(cases[0][0])) is None


def test_wycheproof_subset_is_what_its_comments_say():
    """The committed subset was copied by hand: its R bit flips and s + L must be exactly what each vector claims."""
    sig = {t["tcId"]: bytes.fromhex(t["sig"]) for _, t in _wycheproof()}
    for _, t in _wycheproof():
        if t["comment"].startswith("modified bit "):
            bit = int(t["comment"].split()[2])
            flipped = int.from_bytes(sig[t["tcId"]][:32], "little") ^ int.from_bytes(sig[5][:32], "little")
            assert flipped == 1 << bit, t["tcId"]
    assert sig[63][:32] == sig[3][:32]
    assert int.from_bytes(sig[63][32:], "little") == int.from_bytes(sig[3][32:], "little") + L


@pytest.mark.parametrize("vector", _cctv(), ids=lambda v: f"cctv-{v['number']}")
def test_cctv_vector_refused_for_the_documented_reason(vector):
    key, sig, msg = bytes.fromhex(vector["key"]), bytes.fromhex(vector["sig"]), vector["msg"].encode()
    flags = set(vector["flags"])
    # libsodium alone refuses exactly what its rule names: small-order or non-canonical A or R, or a residue.
    assert _libsodium_alone(key, msg, sig) is not (flags & LIBSODIUM_REFUSES), vector["number"]
    # Every CCTV key has a low-order part, so our key rule refuses it, and with it every signature under it.
    assert bool(flags & KEY_FLAGS) and public_key_problem(key) is not None
    assert verify_signature(nacl.signing.VerifyKey(key), msg, sig) is False


def test_cctv_what_libsodium_alone_would_have_let_through():
    """Vectors 7 and 29 (mixed-order A and R whose low-order parts cancel) verify in libsodium: our key rule stops them."""
    let_through = [v["number"] for v in _cctv()
                   if _libsodium_alone(bytes.fromhex(v["key"]), v["msg"].encode(), bytes.fromhex(v["sig"]))]
    assert let_through == [7, 29]
    assert "small-order component" in public_key_problem(bytes.fromhex(_cctv()[7]["key"]))


def test_every_low_order_encoding_is_refused_as_a_key():
    points = _low_order_points()
    assert len(points) == 14
    for hexkey in points:
        problem = public_key_problem(bytes.fromhex(hexkey))
        assert problem in ("a small-order point", "a non-canonical encoding (y >= 2^255 - 19)"), hexkey


# -- blocks: the ledger's open_block and the collector ---------------------------------------------------------------


def _blocks(store: Path, n: int = 2) -> list[bytes]:
    with Ledger.open(store, "car-1") as ledger:
        w = ledger.writer("speed")
        out = []
        for b in range(n):
            for i in range(5):
                w.add_sample(1_700_000_000.0 + b + i / 10, "Vehicle.Speed", float(i))
            out.append(ledger.seal()[0].message())
    return out


def _with_signature(message: bytes, signature: bytes) -> bytes:
    msg = cose.decode_sign1(message)
    return cose.encode_sign1(msg.protected_bytes, msg.unprotected, msg.payload, signature)


def _s_plus_l(signature: bytes) -> bytes:
    """The same signature with S re-encoded as S + L: the same scalar, a second (non-canonical) encoding."""
    s = int.from_bytes(signature[32:], "little") + L
    return signature[:32] + s.to_bytes(32, "little")


def test_open_block_refuses_a_re_encoded_signature(tmp_path):
    store = tmp_path / "car"
    message = _blocks(store, 1)[0]
    key = Store.open_readonly(store).verify_key
    assert open_block(message, key).header.seq == 0
    malleated = _with_signature(message, _s_plus_l(cose.decode_sign1(message).signature))
    with pytest.raises(BadSignature):
        open_block(malleated, key)


def test_open_block_refuses_the_identity_key_forgery(tmp_path):
    """Key = identity, R = identity, S = 0 satisfies [S]B = R + [k]A for every message: a forgery without a key."""
    store = tmp_path / "car"
    message = _blocks(store, 1)[0]
    identity = bytes.fromhex(_low_order_points()[4])
    forged = _with_signature(message, identity + bytes(32))
    msg = cose.decode_sign1(forged)
    assert not cose.verify_sign1(msg, nacl.signing.VerifyKey(identity))
    with pytest.raises(BadSignature):
        open_block(forged, nacl.signing.VerifyKey(identity))


def test_collect_enroll_refuses_weak_keys(tmp_path, capsys):
    where = str(tmp_path / "collected")
    weak = sorted({v["key"] for v in _cctv()} | set(_low_order_points()))
    for hexkey in weak:
        capsys.readouterr()
        assert main(["collect", "enroll", where, "car-1", hexkey]) == 1, hexkey
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refused" in err[0] and hexkey in err[0], err
    good = _wycheproof()[0][0]
    assert main(["collect", "enroll", where, "car-1", good]) == 0


def test_collector_rejects_a_re_encoded_block_and_keeps_the_real_one(tmp_path):
    store = tmp_path / "car-1"
    messages = _blocks(store, 2)
    collector = Collector(tmp_path / "collected", clock=lambda: 1_700_000_100.0)
    try:
        collector.registry.enroll("car-1", store / "keys" / "vehicle.pub")
        packer = BlockPacker(0)
        topic = topics.block("car-1", "speed")
        malleated = _with_signature(messages[0], _s_plus_l(cose.decode_sign1(messages[0]).signature))
        collector.receive(topic, packer.pack(malleated))
        collector.flush()
        kinds = {p["kind"]: p["count"] for p in collector.registry.problems()}
        assert kinds == {"bad-signature": 1}
        for m in messages:
            collector.receive(topic, packer.pack(m))
        collector.flush()
    finally:
        collector.close()
    replica = Store.open_readonly(tmp_path / "collected" / "vehicles" / "car-1")
    try:
        stored = [row.sign1 for row in replica.iter_blocks("speed")]
    finally:
        replica.close()
    assert [cose.decode_sign1(s).signature for s in stored] == [cose.decode_sign1(m).signature for m in messages]
