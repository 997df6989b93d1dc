"""C2SP tlog-cosignature/v1: the signed message, the 0x04 key id, the timestamped payload, and public vectors.

Public vectors used: the spec's example cosignature line (its timestamp is
the spec's "time 1679315147"), and transparency-dev/formats' note_cosigv1_test.go
(a native 0x04 verifier key, and a cosignature whose timestamp is 1727964367).
"""

from __future__ import annotations

import base64
import hashlib

import nacl.signing
import pytest

from carledger.transparency import checkpoint, cosignature, note
from carledger.transparency.checkpoint import Checkpoint

SPEC_CP = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_COSIG = "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA=="
FORMATS_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
FORMATS_COSIG = "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA=="
SEED = bytes(range(32))
NAME = "witness.example/w1"


def _signer(t: int = 1679315147) -> cosignature.CosignatureSigner:
    return cosignature.CosignatureSigner(NAME, SEED, clock=lambda: t)


def test_spec_message_layout():
    assert cosignature.cosigned_message(SPEC_CP, 1679315147) == b"cosignature/v1\ntime 1679315147\n" + SPEC_CP.encode()
    assert cosignature.cosigned_message(SPEC_CP, 0).startswith(b"cosignature/v1\ntime 0\n")
    with pytest.raises(ValueError):
        cosignature.cosigned_message(SPEC_CP, 2**63)


def test_public_timestamps():
    assert cosignature.timestamp_of(note.Signature("witness.example.com/w1", 0, SPEC_COSIG)) == 1679315147
    assert cosignature.timestamp_of(note.Signature("x", 0, FORMATS_COSIG)) == 1727964367
    plain = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
    with pytest.raises(ValueError, match="not a cosignature"):
        cosignature.timestamp_of(note.Signature("PeterNeumann", 0, plain))  # a plain Ed25519 note signature


def test_formats_native_cosignature_key():
    v = note.parse_verifier_key(FORMATS_VKEY)
    assert isinstance(v, cosignature.CosignatureVerifier)
    assert (v.name, v.key_id) == ("remora.n621.de", 0xDA77ADE7) and v.vkey() == FORMATS_VKEY


def test_key_id_uses_type_0x04():
    s = _signer()
    pub = bytes(nacl.signing.SigningKey(SEED).verify_key)
    want = int.from_bytes(hashlib.sha256(NAME.encode() + b"\n\x04" + pub).digest()[:4], "big")
    assert s.key_id == want != note.Ed25519Signer(NAME, SEED).key_id
    assert note.parse_verifier_key(s.verifier().vkey()).key_id == want
    assert note.parse_signer_key(s.skey()).key_id == want


def test_payload_is_timestamp_then_ed25519_over_the_message():
    sig = note.signature_for(SPEC_CP, _signer())
    raw = base64.b64decode(sig.b64)
    assert raw[:4] == _signer().key_id.to_bytes(4, "big") and len(raw) == 4 + 8 + 64
    assert raw[4:12] == (1679315147).to_bytes(8, "big")
    expected = nacl.signing.SigningKey(SEED).sign(b"cosignature/v1\ntime 1679315147\n" + SPEC_CP.encode()).signature
    assert raw[12:] == expected


def test_cosigned_checkpoint_opens_with_log_and_witness_keys():
    log = note.Ed25519Signer("example.com/log", b"\x05" * 32)
    cp = Checkpoint("example.com/log", 7, b"\x11" * 32, ("ext",))
    signed = checkpoint.sign_checkpoint(cp, [log])
    line = note.signature_for(cp.text(), _signer(1700000000)).line()
    cosigned = signed + line.encode()  # what a client does with a witness's answer
    got, opened = checkpoint.open_checkpoint(cosigned, [log.verifier(), _signer().verifier()], origin=cp.origin)
    assert got == cp and len(opened.sigs) == 2
    assert cosignature.cosignature_times(opened, [_signer().verifier()]) == {NAME: 1700000000}


def test_cosignature_covers_time_and_extension_lines():
    text = Checkpoint("o", 1, b"\x00" * 32, ("ext",)).text()
    sig = note.signature_for(text, _signer())
    v = _signer().verifier()
    assert v.verify(text.encode(), sig.payload)
    assert not v.verify(text.replace("ext", "exu").encode(), sig.payload)
    bumped = (1679315148).to_bytes(8, "big") + sig.payload[8:]
    assert not v.verify(text.encode(), bumped)
    assert not v.verify(text.encode(), sig.payload[:-1])
    too_late = (2**63).to_bytes(8, "big") + sig.payload[8:]
    assert not v.verify(text.encode(), too_late)


def test_plain_key_does_not_accept_a_cosignature_and_back():
    text = "o\n1\n" + base64.b64encode(b"\x00" * 32).decode() + "\n"
    cosigned = note.sign_note(text, [_signer()])
    with pytest.raises(note.UnverifiedNoteError):
        note.open_note(cosigned, [note.Ed25519Signer(NAME, SEED).verifier()])
    plain = note.sign_note(text, [note.Ed25519Signer(NAME, SEED)])
    with pytest.raises(note.UnverifiedNoteError):
        note.open_note(plain, [_signer().verifier()])


def test_forged_cosignature_with_another_key_is_refused():
    text = "o\n1\n" + base64.b64encode(b"\x00" * 32).decode() + "\n"
    impostor = cosignature.CosignatureSigner(NAME, b"\x09" * 32, clock=lambda: 5)
    # Same name, other key: another key id, so it is merely unknown ...
    with pytest.raises(note.UnverifiedNoteError):
        note.open_note(note.sign_note(text, [impostor]), [_signer().verifier()])
    # ... and with the genuine key id forged in, the signature check fails.
    forged = note.signature_for(text, impostor)
    raw = _signer().key_id.to_bytes(4, "big") + forged.payload
    line = note.Signature(NAME, _signer().key_id, base64.b64encode(raw).decode()).line()
    with pytest.raises(note.InvalidSignatureError):
        note.open_note((text + "\n" + line).encode(), [_signer().verifier()])
