"""verify_store as a library: report shape, progress, pinned keys, and random hostile bytes."""

from __future__ import annotations

import random
import shutil
import sqlite3

import pytest

from carledger.ledger import KeyFileError, Ledger, StoreError
from carledger.verify import KINDS, verify_store


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "store"
    with Ledger.open(path, "VIN-SMALL") as ledger:
        for k in range(6):
            for name in ("a", "b"):
                w = ledger.writer(name)
                for i in range(5):
                    w.add_sample(1000.0 + k + i / 10, "Vehicle.Speed", 10.0 * i + k)
            ledger.seal()
    return path


def test_report_shape_and_progress(small):
    calls = []
    report = verify_store(small, progress=lambda done, total: calls.append((done, total)))
    assert report.ok and report.vehicle == "VIN-SMALL" and len(report.key_id) == 16
    assert calls[-1] == (12, 12)
    j = report.to_json()
    assert list(j) == ["ok", "streams", "problems"]
    assert j["streams"]["a"] == {
        "blocks": 6, "records": 30, "first_seq": 0, "last_seq": 5, "head": report.streams["a"].head, "dropped": 0,
    }


def test_pinned_key_forms(small):
    pub = (small / "keys" / "vehicle.pub").read_text().strip()
    assert verify_store(small, key=pub).ok
    assert verify_store(small, key=small / "keys" / "vehicle.pub").ok
    other = "11" * 32
    report = verify_store(small, key=other)
    assert not report.ok and {"key-mismatch", "bad-signature"} == report.kinds()
    with pytest.raises(KeyFileError):
        verify_store(small, key="not-a-key")
    with pytest.raises(StoreError):
        verify_store(small / "keys")


def test_random_hostile_bytes_never_crash(small, tmp_path):
    rng = random.Random(1135)
    store = tmp_path / "s"
    for round_ in range(25):
        if store.exists():
            shutil.rmtree(store)
        shutil.copytree(small, store)
        conn = sqlite3.connect(store / "ledger.sqlite", isolation_level=None)
        rows = conn.execute("SELECT id, sign1, records FROM blocks").fetchall()
        for rid, sign1, records in rng.sample(rows, 3):
            column, blob = rng.choice([("sign1", sign1), ("records", records)])
            blob = bytearray(blob)
            for _ in range(rng.randrange(1, 4)):
                op = rng.randrange(3)
                at = rng.randrange(len(blob))
                if op == 0:
                    blob[at] ^= 1 << rng.randrange(8)
                elif op == 1:
                    del blob[at:]
                else:
                    blob[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
            conn.execute(f"UPDATE blocks SET {column} = ? WHERE id = ?", (bytes(blob), rid))
        conn.close()
        report = verify_store(store)
        assert report.kinds() <= set(KINDS)
        assert all("unexpected" not in p.detail for p in report.problems), report.problems
