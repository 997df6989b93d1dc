"""Ed25519 strictness (docs/ledger-keys.md) against every published edge-case vector: Wycheproof and C2SP CCTV.

All 150 Wycheproof tests and all 914 CCTV vectors (tests/data/ed25519/) run
through the one check the ledger and the collector use (keys.verify_signature,
behind cose.verify_sign1 and open_block), and each outcome is asserted together
with the documented reason. Blocks then show the same rule end to end: a block
whose signature is re-encoded is refused by open_block and by the collector,
and `collect enroll` refuses every weak key the vectors use.
"""

from __future__ import annotations

import functools
import hashlib
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
# Each reason keys.public_key_problem gives, and the CCTV flag that says the same of the key.
KEY_REASON_FLAG = {
    "a small-order point": "low_order_A",
    "a non-canonical encoding (y >= 2^255 - 19)": "non_canonical_A",
    "a point with a small-order component (outside the prime-order subgroup)": "low_order_component_A",
}
# Why a Wycheproof signature is refused before any curve arithmetic, by the file's flag for it.
WYCHEPROOF_DEFECT = {
    "TruncatedSignature": "not 64 bytes", "SignatureWithGarbage": "not 64 bytes", "CompressedSignature": "not 64 bytes",
    "SignatureMalleability": "S >= L", "InvalidKtv": "S >= L",
    "InvalidEncoding": None, "Valid": None, "Ktv": None, "TinkOverflow": None,
}


@functools.cache
def _wycheproof_doc() -> dict:
    return json.loads((DATA / "wycheproof_ed25519_test.json").read_text())


def _wycheproof():
    return [(g["publicKey"]["pk"], t) for g in _wycheproof_doc()["testGroups"] for t in g["tests"]]


@functools.cache
def _cctv() -> list[dict]:
    return json.loads((DATA / "cctv_ed25519vectors.json").read_text())


def _low_order_points():
    lines = (DATA / "cctv_low_order_points.txt").read_text().splitlines()
    return [line.split()[0] for line in lines if line and not line.startswith("#")]


def _libsodium_alone(key: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(key).verify(msg, sig)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def _signature_defect(sig: bytes) -> str | None:
    if len(sig) != 64:
        return "not 64 bytes"
    return "S >= L" if int.from_bytes(sig[32:], "little") >= L else None


# -- Wycheproof: 150 tests ---------------------------------------------------------------------------------------------


def test_wycheproof_file_is_whole():
    doc = _wycheproof_doc()
    assert [t["tcId"] for _, t in _wycheproof()] == list(range(1, doc["numberOfTests"] + 1))
    assert doc["numberOfTests"] == 150


@pytest.mark.parametrize("vector", _wycheproof(), ids=lambda v: f"tcId-{v[1]['tcId']}")
def test_wycheproof_vector_as_the_file_says(vector):
    pk, t = vector
    key, msg, sig = nacl.signing.VerifyKey(bytes.fromhex(pk)), bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"])
    # Every Wycheproof key is a valid one, so every outcome here is decided on the signature.
    assert public_key_problem(bytes(key)) is None
    assert verify_signature(key, msg, sig) is (t["result"] == "valid"), f"{t['flags']} {t['comment']!r}"
    (flag,) = t["flags"]
    if flag in WYCHEPROOF_DEFECT:  # "InvalidSignature" (special R and S values) mixes S >= L with bad points
        assert _signature_defect(sig) == WYCHEPROOF_DEFECT[flag]


def test_wycheproof_copy_is_what_its_comments_say():
    """The copy was reassembled from pages: its bit flips of R and its malleated S must be what each test claims."""
    sig = {t["tcId"]: bytes.fromhex(t["sig"]) for _, t in _wycheproof()}
    flips = [t for _, t in _wycheproof() if t["comment"].startswith("modified bit ")]
    assert len(flips) == 18
    for t in flips:
        bit = int(t["comment"].split()[2])
        flipped = int.from_bytes(sig[t["tcId"]][:32], "little") ^ int.from_bytes(sig[5][:32], "little")
        assert flipped == 1 << bit and sig[t["tcId"]][32:] != sig[5][32:], t["tcId"]
    s3 = int.from_bytes(sig[3][32:], "little")
    for tc, k in zip(range(63, 67), (1, 2, 4, 8)):  # S + kL: the same scalar, another encoding
        assert sig[tc][:32] == sig[3][:32] and int.from_bytes(sig[tc][32:], "little") == s3 + k * L, tc
    for tc, bit in zip(range(67, 70), (253, 254, 255)):
        assert int.from_bytes(sig[tc][32:], "little") == s3 | (1 << bit), tc


# -- CCTV: 914 vectors -------------------------------------------------------------------------------------------------


def test_cctv_file_is_whole():
    vectors = _cctv()
    assert [v["number"] for v in vectors] == list(range(914))
    assert [v["number"] for v in vectors if v["flags"] is None] == [305]


@pytest.mark.parametrize("vector", _cctv(), ids=lambda v: f"cctv-{v['number']}")
def test_cctv_vector_refused_for_the_documented_reason(vector):
    key, sig, msg = bytes.fromhex(vector["key"]), bytes.fromhex(vector["sig"]), vector["msg"].encode()
    flags = set(vector["flags"] or ())
    # libsodium alone refuses exactly what its rule names: small-order or non-canonical A or R, or a residue.
    assert _libsodium_alone(key, msg, sig) is not bool(flags & LIBSODIUM_REFUSES)
    # Our key rule refuses exactly the keys the flags call weak, for the reason the flags give.
    problem = public_key_problem(key)
    if flags & KEY_FLAGS:
        assert problem is not None and KEY_REASON_FLAG[problem] in flags, problem
    else:
        assert problem is None
    # Together: every flagged vector is refused, and the one plain valid signature (vector 305) is accepted.
    assert verify_signature(nacl.signing.VerifyKey(key), msg, sig) is (not flags)


def test_cctv_what_libsodium_alone_would_have_let_through():
    """libsodium alone accepts a key and an R whose low-order parts cancel; our key rule stops every such vector."""
    harmless = {"low_order_component_R", "low_order_component_A"}
    let_through = [v for v in _cctv()
                   if _libsodium_alone(bytes.fromhex(v["key"]), v["msg"].encode(), bytes.fromhex(v["sig"]))]
    assert [v["number"] for v in let_through] == [v["number"] for v in _cctv() if set(v["flags"] or ()) <= harmless]
    assert len(let_through) == 43 and [v["number"] for v in let_through][:2] == [7, 29]
    for v in let_through:
        if v["flags"]:
            assert "low_order_component_A" in v["flags"], v["number"]
            assert "small-order component" in public_key_problem(bytes.fromhex(v["key"]))
    assert [v["number"] for v in let_through if public_key_problem(bytes.fromhex(v["key"])) is None] == [305]


def test_every_low_order_encoding_is_refused_as_a_key():
    points = _low_order_points()
    assert len(points) == 14
    for hexkey in points:
        problem = public_key_problem(bytes.fromhex(hexkey))
        assert problem in ("a small-order point", "a non-canonical encoding (y >= 2^255 - 19)"), hexkey


# -- the copy of the CCTV file is genuine ------------------------------------------------------------------------------
# A few lines of edwards25519 arithmetic (RFC 8032, section 5.1), used only to check the data: each vector must be a
# real signature under the most permissive rule, and carry exactly the point flags its own bytes imply. A byte lost
# or changed while the file was copied would fail this, rather than pass as one more refusal.

_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_O = (0, 1, 1, 0)  # the identity in extended coordinates


def _add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    p, q = (y1 - x1) * (y2 - x2) % _P, (y1 + x1) * (y2 + x2) % _P
    r, s = 2 * t1 * t2 * _D % _P, 2 * z1 * z2 % _P
    e, f, g, h = q - p, s - r, s + r, q + p
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _mul(k, a):
    out = _O
    while k:
        if k & 1:
            out = _add(out, a)
        a, k = _add(a, a), k >> 1
    return out


def _is_identity(a) -> bool:
    return a[0] % _P == 0 and (a[1] - a[2]) % _P == 0


def _decode(raw: bytes):
    """Permissive decoding: y >= p is reduced and x = -0 is taken as x = 0, as the most lenient verifiers do."""
    v = int.from_bytes(raw, "little")
    y = (v & ((1 << 255) - 1)) % _P
    u = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(u, (_P + 3) // 8, _P)
    if (x * x - u) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    assert (x * x - u) % _P == 0, "not a point"
    if x & 1 != v >> 255:
        x = -x % _P
    return x, y, 1, x * y % _P


def _encode(a) -> bytes:
    zi = pow(a[2], _P - 2, _P)
    x, y = a[0] * zi % _P, a[1] * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def test_cctv_copy_is_genuine():
    base = _decode((4 * pow(5, _P - 2, _P) % _P).to_bytes(32, "little"))
    wrong = []
    for v in _cctv():
        key, sig, flags = bytes.fromhex(v["key"]), bytes.fromhex(v["sig"]), set(v["flags"] or ())
        a, r, s = _decode(key), _decode(sig[:32]), int.from_bytes(sig[32:], "little")
        raw = sig[:32] + key
        k_bytes = _encode(r) + _encode(a) if "reencoded_k" in flags else raw  # the k the vector was made with
        k = int.from_bytes(hashlib.sha512(k_bytes + v["msg"].encode()).digest(), "little") % L
        x, y, z, t = _add(r, _mul(k, a))
        residue = _add(_mul(s, base), (-x % _P, y, z, -t % _P))  # [S]B - R - [k]A
        implied = {name for name, holds in (
            ("low_order_R", _is_identity(_mul(8, r))), ("low_order_A", _is_identity(_mul(8, a))),
            ("low_order_component_R", not _is_identity(_mul(L, r))),
            ("low_order_component_A", not _is_identity(_mul(L, a))),
            ("non_canonical_R", _encode(r) != sig[:32]), ("non_canonical_A", _encode(a) != key)) if holds}
        if s >= L or not _is_identity(_mul(8, residue)) or flags - {"low_order_residue", "reencoded_k"} != implied:
            wrong.append(v["number"])
        elif "reencoded_k" not in flags and ("low_order_residue" in flags) is _is_identity(residue):
            wrong.append(v["number"])  # CCTV sets the residue flag with k over the bytes as given
    assert wrong == []


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
    weak = sorted({v["key"] for v in _cctv() if set(v["flags"] or ()) & KEY_FLAGS} | set(_low_order_points()))
    assert len(weak) == 21  # the 14 low-order encodings (all used as CCTV keys) and 7 mixed-order keys
    for hexkey in weak:
        capsys.readouterr()
        assert main(["collect", "enroll", where, "car-1", hexkey]) == 1, hexkey
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refused" in err[0] and hexkey in err[0], err
    # CCTV's one prime-order key (the key of vector 305) and a Wycheproof key are enrolled.
    for number, good in enumerate((_cctv()[305]["key"], _wycheproof()[0][0])):
        assert main(["collect", "enroll", where, f"car-{number + 2}", good]) == 0, good


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
