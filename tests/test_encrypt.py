"""End-to-end encryption of a stream: verifiable by anyone, readable only by its recipients."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from carledger.cli import main
from carledger.ledger import BadMerkleRoot, KeyFileError, Ledger, MalformedBlock, Sample, Store, decode_record, open_block
from carledger.ledger.encrypt import (
    DecryptError,
    PrivateKey,
    RecordSealer,
    create_private_key,
    is_sealed,
    load_private_key,
    open_sealed,
    unzstd,
)
from carledger.verify import verify_store

T0 = 1_700_000_000.0
REPO = Path(__file__).resolve().parents[1]
VERIFIER = Path(os.environ.get("CARLEDGER_VERIFIER_PYTHON", REPO / ".venv-verifier" / "bin" / "python"))


def drive(store: Path, sealer, blocks: int = 4, per_block: int = 30) -> list[bytes]:
    """Seal `blocks` blocks of a stream `insurer` (encrypted by `sealer`) and a plain `vault`; return the insurer's records."""
    with Ledger.open(store, "car-1") as ledger:
        ins, vault = ledger.writer("insurer"), ledger.writer("vault")
        ins.sealer = sealer
        plain = []
        for b in range(blocks):
            for i in range(per_block):
                t = T0 + b + i / per_block
                ins.add_sample(t, "Vehicle.Speed", 40.0 + i, "ABS_SPEED.SPEED")
                vault.add_sample(t, "Vehicle.Speed", 40.0 + i, "ABS_SPEED.SPEED")
            ins.add_event(T0 + b + 0.99, "policy", {"version": 3})
            plain.append(list(ins._recs))
            ledger.seal()
    return plain


@pytest.fixture
def keys():
    return PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()


def test_sealed_blocks_verify_without_keys_and_open_for_each_recipient(tmp_path, keys):
    owner, investigator, stranger = keys
    drive(tmp_path / "s", RecordSealer([owner.public_key, bytes(investigator.public_key).hex()]))
    report = verify_store(tmp_path / "s")
    assert report.ok, report.problems
    with Store.open_readonly(tmp_path / "s") as store:
        rows = list(store.iter_blocks("insurer"))
        assert len(rows) == 4
        for row in rows:
            message = store.message(row)
            block = open_block(message, store.verify_key)  # signature, root, count: no key needed
            assert block.header.count == 2 and is_sealed(block.records)
            assert b"Vehicle.Speed" not in message and b"ABS_SPEED" not in message
            mine = open_sealed(block.header, block.records, owner)
            theirs = open_sealed(block.header, block.records, investigator)
            assert mine == theirs and len(mine) == 31
            samples = [decode_record(r) for r in mine]
            assert samples[0] == Sample(round((T0 + row.seq) * 1e6), "Vehicle.Speed", 40.0, "ABS_SPEED.SPEED")
            assert (min(s.t for s in samples), max(s.t for s in samples)) == (block.header.t0, block.header.t1)
            with pytest.raises(DecryptError, match="not encrypted to key"):
                open_sealed(block.header, block.records, stranger)
        plain = next(store.iter_blocks("vault"))
        assert not is_sealed(open_block(store.message(plain), store.verify_key).records)


def test_every_block_has_its_own_key_and_altered_ciphertext_fails_the_merkle_root(tmp_path, keys):
    owner = keys[0]
    drive(tmp_path / "s", RecordSealer([owner.public_key]), blocks=2)
    with Store.open_readonly(tmp_path / "s") as store:
        rows = list(store.iter_blocks("insurer"))
        first, second = (open_block(store.message(r), store.verify_key) for r in rows)
        assert first.records[0] != second.records[0]  # fresh block key, fresh wrapping
        records = store.records(rows[0])
        bad = bytearray(records[1])
        bad[-5] ^= 1
        from carledger.ledger import with_records

        with pytest.raises(BadMerkleRoot):
            open_block(with_records(rows[0].sign1, [records[0], bytes(bad)]), store.verify_key)
        # someone who recomputed nothing but decrypts anyway: the box's MAC refuses it too
        header = first.header
        with pytest.raises((DecryptError, MalformedBlock)):
            open_sealed(header, [records[0], bytes(bad)], owner)


def test_a_third_party_verifies_encrypted_blocks_with_pycose_alone(tmp_path, keys):
    if not VERIFIER.exists():
        pytest.skip(f"no third-party verifier environment at {VERIFIER} (scripts/setup makes it)")
    drive(tmp_path / "s", RecordSealer([keys[0].public_key]))
    with Store.open_readonly(tmp_path / "s") as store:
        key = bytes(store.verify_key).hex()
    export = tmp_path / "insurer.cose"
    assert main(["log", "export", str(tmp_path / "s"), "--stream", "insurer", "--format", "cose", "-o", str(export)]) == 0
    out = subprocess.run([str(VERIFIER), "-I", str(REPO / "docs" / "third_party_verify.py"), key, str(export)],
                         capture_output=True, text=True)
    result = json.loads(out.stdout)
    assert out.returncode == 0 and result["ok"] and result["blocks"] == 4, result


def test_read_decrypts_with_the_recipient_key_and_refuses_without(tmp_path, capsys):
    key_file = tmp_path / "insurer.key"
    assert main(["keygen", "recipient", "-o", str(key_file)]) == 0
    public = capsys.readouterr().out.strip()
    assert len(public) == 64 and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert main(["keygen", "recipient", "-o", str(key_file)]) == 1  # never overwrites
    assert "exists already" in capsys.readouterr().err
    plain = drive(tmp_path / "s", RecordSealer([public]))

    assert main(["read", str(tmp_path / "s"), "--key", str(key_file), "--stream", "insurer", "--events"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == sum(len(b) for b in plain) == 4 * 31
    assert lines[0] == {"stream": "insurer", "seq": 0, "t": T0, "name": "Vehicle.Speed", "message": "ABS_SPEED",
                        "signal": "SPEED", "value": 40.0}
    assert lines[30] == {"stream": "insurer", "seq": 0, "t": T0 + 0.99, "event": "policy", "detail": {"version": 3}}

    assert main(["read", str(tmp_path / "s"), "--stream", "insurer"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "encrypted; pass --key" in captured.err
    other = tmp_path / "other.key"
    create_private_key(other)
    assert main(["read", str(tmp_path / "s"), "--key", str(other), "--stream", "insurer"]) == 1
    assert "not encrypted to key" in capsys.readouterr().err
    # the plain stream needs no key, and csv works
    assert main(["read", str(tmp_path / "s"), "--stream", "vault", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "2023-11-14T22:13:20.000000Z,vault,0,Vehicle.Speed,ABS_SPEED,SPEED,40.0"
    assert main(["read", str(tmp_path / "s"), "--key", str(tmp_path / "missing.key")]) == 2


def test_key_files_and_hostile_sealed_records(tmp_path):
    (tmp_path / "k").write_text("zz" * 32)
    with pytest.raises(KeyFileError, match="accessible to group/others"):
        load_private_key(tmp_path / "k")
    (tmp_path / "k").chmod(0o600)
    with pytest.raises(KeyFileError, match="not hex"):
        load_private_key(tmp_path / "k")
    assert bytes(load_private_key("11" * 32)) == bytes.fromhex("11" * 32)
    with pytest.raises(ValueError, match="31 bytes, expected 32"):
        RecordSealer(["00" * 31])
    with pytest.raises(ValueError, match="at least one"):
        RecordSealer([])
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(bytes(100 << 20))
    with pytest.raises(MalformedBlock, match="more than the limit"):
        unzstd(bomb, 64 << 20, "sealed records")
    with pytest.raises(MalformedBlock, match="not one zstd frame"):
        unzstd(b"\x28\xb5\x2f\xfdjunk", 1000, "x")
