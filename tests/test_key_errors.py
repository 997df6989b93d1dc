"""One root cause, one error line: a wrong key fails every block for one reason, and says so once.

A recipient who reads with the wrong key, or a verifier who pins the wrong
vehicle key, gets one line naming what happened, how many blocks it hit and
each stream's first and last seq, not one line per block (thousands on a
real stream).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey

from carledger.cli import main
from carledger.ledger import Ledger
from carledger.ledger.encrypt import RecordSealer, create_private_key, recipient_kid
from carledger.ledger.keys import kid

T0 = 1_700_000_000.0
BLOCKS = 40


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, Path]:
    """A store with an encrypted `insurer` stream and a plain `vault` stream, BLOCKS blocks each; and the insurer's key."""
    folder = tmp_path_factory.mktemp("keys")
    insurer = create_private_key(folder / "insurer.key")
    with Ledger.open(folder / "s", "car-1") as ledger:
        ins, vault = ledger.writer("insurer"), ledger.writer("vault")
        ins.sealer = RecordSealer([insurer.public_key])
        for b in range(BLOCKS):
            ins.add_sample(T0 + b, "Vehicle.Speed", 40.0 + b, "ABS_SPEED.SPEED")
            vault.add_sample(T0 + b, "Vehicle.Speed", 40.0 + b, "ABS_SPEED.SPEED")
            ledger.seal()
    return folder / "s", folder / "insurer.key"


def test_reading_with_the_wrong_recipient_key_says_so_once(store, tmp_path, capsys):
    path, _ = store
    stranger = create_private_key(tmp_path / "stranger.key")
    assert main(["read", str(path), "--key", str(tmp_path / "stranger.key"), "--stream", "insurer"]) == 1
    err = capsys.readouterr().err.splitlines()
    kid = recipient_kid(stranger.public_key).hex()
    assert err == [f"carledger read: not encrypted to key {kid}: {BLOCKS} blocks (insurer seq 0..{BLOCKS - 1})"]


def test_reading_against_the_wrong_vehicle_key_says_so_once(store, capsys):
    path, key = store
    other = bytes(SigningKey.generate().verify_key).hex()
    assert main(["read", str(path), "--key", str(key), "--vehicle-key", other]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("carledger read: signed with another key (kid ")
    assert err[0].endswith(f"): {2 * BLOCKS} blocks (insurer seq 0..{BLOCKS - 1}, vault seq 0..{BLOCKS - 1})")


def test_one_bad_block_is_still_named_by_its_seq(store, tmp_path, capsys):
    """A single failure keeps its own line: stream, seq and reason."""
    path, _ = store
    stranger = create_private_key(tmp_path / "stranger.key")
    kid = recipient_kid(stranger.public_key).hex()
    with Ledger.open(tmp_path / "one", "car-1") as ledger:
        ledger.writer("insurer").sealer = RecordSealer([create_private_key(tmp_path / "x.key").public_key])
        ledger.writer("insurer").add_sample(T0, "Vehicle.Speed", 1.0)
    assert main(["read", str(tmp_path / "one"), "--key", str(tmp_path / "stranger.key")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"carledger read: stream insurer seq 0: not encrypted to key {kid}"]


def test_verifying_against_the_wrong_pinned_key_prints_one_line_for_the_cause(store, capsys):
    path, _ = store
    pinned = SigningKey.generate().verify_key
    assert main(["verify", str(path), "--key", bytes(pinned).hex()]) == 1
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    problems = lines[lines.index(f"problems ({2 * BLOCKS + 1}):") + 1:]
    assert problems[0].startswith("store: key-mismatch: the store records public key kid ")
    bad = problems[1]
    assert bad.startswith("bad-signature: signed by another key (kid ")
    assert bad.endswith(f": {2 * BLOCKS} blocks (insurer seq 0..{BLOCKS - 1}, vault seq 0..{BLOCKS - 1})")
    assert problems[2].startswith("FAILED: ")


def test_verify_json_keeps_every_problem(store, capsys):
    import json

    path, _ = store
    assert main(["verify", str(path), "--key", bytes(SigningKey.generate().verify_key).hex(), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert len([p for p in report["problems"] if p["kind"] == "bad-signature"]) == 2 * BLOCKS



def test_edr_export_against_the_wrong_vehicle_key_is_one_line(tmp_path, capsys):
    """The capture's signed metadata fails first: one line naming the key, not one per block."""
    from test_exports import crash_store

    store, owner = crash_store(tmp_path)
    pinned = SigningKey.generate().verify_key
    capsys.readouterr()
    assert main(["edr", "export", str(store), "--key", str(owner), "--vehicle-key", bytes(pinned).hex()]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"carledger: the crash stream does not verify with vehicle key {kid(pinned).hex()}: "
                           "signed with another key (kid ")
