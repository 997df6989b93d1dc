"""COSE_Sign1: the public cose-wg Ed25519 vector, malformed input, and pycose reading our blocks."""

from __future__ import annotations

import json

import cbor2
import nacl.signing
import pytest

from carledger.ledger import Ledger, MalformedBlock, cose, kid, split_records, with_records
from carledger.ledger.block import LABEL_RECORDS, Header, open_block
from conftest import shared_path


def test_eddsa_sig_01_byte_for_byte():
    vec = json.loads(shared_path("vectors", "cose", "eddsa-examples", "eddsa-sig-01.json").read_text())
    key_info = vec["input"]["sign0"]["key"]
    sk = nacl.signing.SigningKey(bytes.fromhex(key_info["d_hex"]))
    assert bytes(sk.verify_key).hex() == key_info["x_hex"]
    payload = vec["input"]["plaintext"].encode()
    protected = {1: -8, 3: 0}
    unprotected = {4: key_info["kid"].encode()}

    tbs = cose.sig_structure(cbor2.dumps(protected, canonical=True), payload)
    assert tbs.hex().upper() == vec["intermediates"]["ToBeSign_hex"]

    out = cose.sign1(payload, sk, protected, unprotected)
    assert out.hex().upper() == vec["output"]["cbor"]

    msg = cose.decode_sign1(out)
    assert msg.protected == protected and msg.unprotected == unprotected and msg.payload == payload
    assert cose.verify_sign1(out, sk.verify_key)
    assert not cose.verify_sign1(out, nacl.signing.SigningKey.generate().verify_key)


def test_verify_rejects_other_algorithms_and_bad_signatures():
    sk = nacl.signing.SigningKey(b"\x01" * 32)
    good = cose.sign1(b"payload", sk, {1: -8})
    msg = cose.decode_sign1(good)
    assert cose.verify_sign1(msg, sk.verify_key)
    flipped = msg._replace(signature=bytes([msg.signature[0] ^ 1]) + msg.signature[1:])
    assert not cose.verify_sign1(flipped, sk.verify_key)
    assert not cose.verify_sign1(msg._replace(payload=b"Payload"), sk.verify_key)
    es256 = cose.sign1(b"payload", sk, {1: -7})
    assert not cose.verify_sign1(es256, sk.verify_key)
    assert not cose.verify_sign1(msg._replace(signature=msg.signature[:10]), sk.verify_key)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        bytes.fromhex("d28443a10127a0f6"),  # 3 items
        bytes.fromhex("d28443a10127a0f640"),  # detached (nil) payload
        bytes.fromhex("d18443a10127a0414140"),  # tag 17 (COSE_Mac0)
        bytes.fromhex("8443a10127a0414140"),  # untagged
        bytes.fromhex("d2a0"),  # a map
        bytes.fromhex("d2840127a0414140"),  # protected not a bstr
        bytes.fromhex("d28442a101a0414140"),  # protected bstr is not CBOR
        bytes.fromhex("d2844101a0414140"),  # protected header not a map
        bytes.fromhex("d28443a1012781414140"),  # unprotected not a map
        bytes.fromhex("d28443a10127a101274141614140"),  # label in both headers
        bytes.fromhex("d28443a10127a041410a"),  # signature not a bstr
        bytes.fromhex("d28443a10127a0614140"),  # payload is text
        bytes.fromhex("d28443a10127a041414000"),  # trailing byte
        bytes.fromhex("d28441a0a0414140"),  # empty protected map not sent as empty bstr
        "not bytes",
    ],
)
def test_malformed_messages_raise_malformed_block(data):
    with pytest.raises(MalformedBlock):
        cose.decode_sign1(data)


def _pycose_verify(message: bytes, pub: bytes):
    from pycose.keys import OKPKey
    from pycose.messages import Sign1Message

    try:
        msg = Sign1Message.decode(message)
    except TypeError:
        # pycose 1.1 wants a list and dicts, but cbor2 >= 6 decodes the contents of a tag immutably
        # (tuple, frozendict): pycose issue #141, where pycose + cbor2 6 fails on every message.
        # Hand pycose the same items as list and dict; parsing headers and verifying stay pycose's.
        value = cbor2.loads(message)
        assert value.tag == 18 and len(value.value) == 4
        phdr, uhdr, payload, signature = value.value
        msg = Sign1Message.from_cose_obj([phdr, dict(uhdr), payload, signature], True)
    msg.key = OKPKey(crv="Ed25519", x=pub)
    return msg


def test_pycose_verifies_ledger_blocks_bare_and_with_records(tmp_path):
    pytest.importorskip("pycose")
    ledger = Ledger.open(tmp_path / "store", "VIN0001")
    w = ledger.writer("vault")
    for i in range(50):
        w.add_sample(1700000000.0 + i / 10, "Vehicle.Speed", 40.0 + i, "ESP_1.VehSpeed")
    w.add_event(1700000005.0, "policy", {"version": 2})
    (blk,) = ledger.seal()
    pub = bytes(ledger.verify_key)

    bare = _pycose_verify(blk.sign1, pub)
    assert bare.verify_signature()
    assert bare.payload == blk.payload
    assert Header.decode(bare.payload).count == 51

    carrying = blk.message()
    assert carrying != blk.sign1
    full = _pycose_verify(carrying, pub)
    assert full.verify_signature()
    records = cbor2.loads(carrying).value[1][LABEL_RECORDS]
    assert list(records) == blk.records

    # a third party's view: the bare message back, records apart, kid = our key id
    assert split_records(carrying) == (blk.sign1, blk.records)
    assert split_records(blk.sign1) == (blk.sign1, None)
    assert with_records(blk.sign1, blk.records) == carrying
    assert cose.decode_sign1(blk.sign1).protected == {1: -8, 4: kid(ledger.verify_key)}
    assert open_block(carrying, ledger.verify_key).records == blk.records

    tampered = bytearray(carrying)
    tampered[-70] ^= 1  # inside the signature
    assert not _pycose_verify(bytes(tampered), pub).verify_signature()
    ledger.close()
