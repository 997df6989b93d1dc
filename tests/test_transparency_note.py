"""C2SP signed notes against the published vectors of Go's golang.org/x/mod/sumdb/note (note_test.go).

The keys, texts and signatures below are copied from that test file; what
each case expects is what Go's note.Open and note.NewVerifier answer there.
"""

from __future__ import annotations

import base64

import pytest

from carledger.transparency import note
from carledger.transparency.note import (
    AmbiguousKeyError,
    InvalidSignatureError,
    KeyFormatError,
    MalformedNoteError,
    UnverifiedNoteError,
)

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
PETER = note.Signature("PeterNeumann", 0xC74F20A3, PETER_SIG.split()[2])
ENOCH = note.Signature("EnochRoot", 0xAF0CFE78, ENOCH_SIG.split()[2])


@pytest.fixture
def peter():
    return note.parse_verifier_key(PETER_VKEY)


@pytest.fixture
def enoch():
    return note.parse_verifier_key(ENOCH_VKEY)


def test_go_verifier_key(peter):
    assert (peter.name, peter.key_id) == ("PeterNeumann", 0xC74F20A3)
    assert peter.verify(b"hi", b"\0" * 64) is False
    assert peter.vkey() == PETER_VKEY


@pytest.mark.parametrize(
    "bad",
    [
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # Go: wrong length key
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # Go: unknown algorithm
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # key id off by one
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # 7 hex digits
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in the name
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # empty name
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",  # not base64
    ],
)
def test_go_bad_verifier_keys(bad):
    with pytest.raises(KeyFormatError):
        note.parse_verifier_key(bad)


def test_go_signer_key_signs_the_published_signature(peter):
    signer = note.parse_signer_key(PETER_SKEY)
    assert (signer.name, signer.key_id) == ("PeterNeumann", 0xC74F20A3)
    assert signer.skey() == PETER_SKEY
    assert signer.verifier().vkey() == PETER_VKEY
    assert note.sign_note(TEXT, [signer]) == (TEXT + "\n" + PETER_SIG).encode()


def test_go_example_sign_keeps_other_signatures():
    """Go's ExampleSign_add_signatures: Enoch's signature kept after Peter's."""
    signer = note.parse_signer_key(PETER_SKEY)
    assert note.sign_note(TEXT, [signer], keep=[ENOCH, PETER]) == (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()


def test_signer_key_with_wrong_id_or_prefix():
    with pytest.raises(KeyFormatError):
        note.parse_signer_key(PETER_SKEY.replace("c74f20a3", "c74f20a4"))
    with pytest.raises(KeyFormatError):
        note.parse_signer_key(PETER_SKEY.replace("PRIVATE+KEY+", "PRIVATE+"))


def test_generate_key_round_trip():
    skey, vkey = note.generate_key("example.com/log")
    signer = note.parse_signer_key(skey)
    verifier = note.parse_verifier_key(vkey)
    n = note.open_note(note.sign_note("hello\n", [signer]), [verifier])
    assert n.text == "hello\n" and [s.name for s in n.sigs] == ["example.com/log"]


def test_go_open_one_verified_one_not(peter):
    n = note.open_note((TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode(), [peter])
    assert n.text == TEXT and n.sigs == [PETER] and n.unverified_sigs == [ENOCH]


def test_go_open_both_verified(peter, enoch):
    n = note.open_note((TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode(), [peter, enoch])
    assert n.sigs == [PETER, ENOCH] and n.unverified_sigs == []


def test_go_open_none_known():
    with pytest.raises(UnverifiedNoteError) as exc:
        note.open_note((TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode(), [])
    assert str(exc.value) == "note has no verifiable signatures"
    assert exc.value.note.sigs == [] and exc.value.note.unverified_sigs == [PETER, ENOCH]


def test_go_open_ambiguous(peter, enoch):
    with pytest.raises(AmbiguousKeyError, match="ambiguous key EnochRoot\\+af0cfe78"):
        note.open_note((TEXT + "\n" + ENOCH_SIG).encode(), [enoch, peter, enoch])
    assert note.open_note((TEXT + "\n" + PETER_SIG).encode(), [enoch, peter, enoch]).sigs == [PETER]


def test_go_open_too_many_signatures(peter):
    for known in ([peter], []):
        with pytest.raises(MalformedNoteError):
            note.open_note((TEXT + "\n" + PETER_SIG * 101).encode(), known)
    assert note.open_note((TEXT + "\n" + PETER_SIG * 100).encode(), [peter]).sigs == [PETER]


def test_go_open_invalid_signature(peter):
    msg = TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(InvalidSignatureError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        note.open_note(msg.encode(), [peter])


def test_go_open_duplicates(peter):
    enoch_abcd = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    n = note.open_note((TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + enoch_abcd).encode(), [peter])
    assert n.sigs == [PETER]
    assert n.unverified_sigs == [ENOCH, note.Signature("EnochRoot", 0xAF0CFE78, enoch_abcd.split()[2])]


@pytest.mark.parametrize(
    "msg",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + "— Bad Name " + PETER_SIG.split()[2] + "\n",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\r\n" + PETER_SIG,
        TEXT + "\n" + PETER_SIG.replace("AM=", "AN="),  # non-canonical base64 (stricter than Go)
        TEXT + "\n" + "— PeterNeumann " + base64.b64encode(b"\xc7\x4f\x20\xa3").decode() + "\n",  # key id only
    ],
)
def test_go_open_malformed(peter, msg):
    with pytest.raises(MalformedNoteError):
        note.open_note(msg.encode(), [peter])


def test_open_not_utf8(peter):
    with pytest.raises(MalformedNoteError, match="UTF-8"):
        note.open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), [peter])


def test_open_size_limit(peter):
    with pytest.raises(MalformedNoteError, match="bytes"):
        note.open_note(b"x" * note.MAX_NOTE_SIZE + (TEXT + "\n" + PETER_SIG).encode(), [peter])


def test_text_with_blank_lines_splits_at_the_last_one(peter):
    signer = note.parse_signer_key(PETER_SKEY)
    text = "one\n\ntwo\n"
    n = note.open_note(note.sign_note(text, [signer]), [peter])
    assert n.text == text


def test_same_name_other_key_is_ignored_not_trusted(peter):
    """The spec: ignore signatures of unknown keys even if they share a name with a known key."""
    other = note.Ed25519Signer("PeterNeumann", b"\x07" * 32)
    msg = note.sign_note(TEXT, [other])
    with pytest.raises(UnverifiedNoteError):
        note.open_note(msg, [peter])


def test_weak_public_key_refused():
    small_order = bytes(32)  # y = 0: a point of order 4
    with pytest.raises(KeyFormatError, match="refused"):
        note.Ed25519Verifier("example.com/x", small_order)


def test_sign_refuses_bad_text():
    signer = note.parse_signer_key(PETER_SKEY)
    with pytest.raises(MalformedNoteError):
        note.sign_note("no newline", [signer])
    with pytest.raises(MalformedNoteError):
        note.sign_note("tab\there\n", [signer])
