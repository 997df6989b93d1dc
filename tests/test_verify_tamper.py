"""Tampering with a real store: `carledger verify` must exit 1 and name the right problem at the right seq."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import cbor2
import nacl.signing
import pytest

from carledger import cli
from carledger.ledger import (
    Ledger,
    cose,
    decode_record,
    decode_records,
    encode_records,
    encode_sample,
    load_signing_key,
    protected_header,
    seal_block,
)

STREAMS = {"vault": 8, "insurer-ubi": 8, "crash": 4}  # blocks per stream: 20 in all
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A store written by the real Ledger: three streams sealed round-robin, ~60 records a block."""
    path = tmp_path_factory.mktemp("pristine") / "store"
    ledger = Ledger.open(path, "WVWZZZ1JZXW000001")
    t = T0
    for rnd in range(max(STREAMS.values())):
        for name, n in STREAMS.items():
            if rnd >= n:
                continue
            w = ledger.writer(name)
            for i in range(20):
                t += 0.05
                w.add_sample(t, "Vehicle.Speed", round(50 + 10 * ((i * 7) % 13) / 13, 2), "ESP_21.ESP_v_Signal")
                w.add_sample(t, "Vehicle.Powertrain.CombustionEngine.Speed", 1800 + 37 * i, "Motor_12.MO_Drehzahl_01")
                w.add_sample(t, "Vehicle.CurrentLocation.Latitude", 52.52 + i * 1e-5)
            if rnd == 0:
                w.add_event(t, "policy", {"version": 1})
            ledger.seal([w])
    ledger.close()
    return path


@pytest.fixture
def store(pristine, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(pristine, dst)
    return dst


def verify(capsys, path, *extra):
    capsys.readouterr()
    rc = cli.main(["verify", str(path), "--json", *extra])
    out = capsys.readouterr().out
    report = json.loads(out)  # exactly one JSON object
    return rc, report


def problems(report):
    return {(p["stream"], p["seq"], p["kind"]) for p in report["problems"]}


def db(path):
    return sqlite3.connect(path / "ledger.sqlite", isolation_level=None)


def row(conn, stream, seq):
    return conn.execute(
        "SELECT id, sign1, records FROM blocks WHERE stream = ? AND seq = ?", (stream, seq)
    ).fetchone()


def test_untampered_store_verifies(capsys, store):
    rc, report = verify(capsys, store)
    assert rc == 0 and report["ok"] is True and report["problems"] == []
    assert set(report["streams"]) == set(STREAMS)
    for name, n in STREAMS.items():
        s = report["streams"][name]
        assert (s["blocks"], s["first_seq"], s["last_seq"]) == (n, 0, n - 1)
        assert s["records"] == 60 * n + 1 and len(s["head"]) == 64
    capsys.readouterr()
    assert cli.main(["verify", str(store)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out.splitlines()[-1] and "insurer-ubi" in out


def test_missing_store_exits_2(capsys, tmp_path):
    assert cli.main(["verify", str(tmp_path / "nope"), "--json"]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["verify", str(tmp_path / "empty")]) == 2


def test_flip_payload_byte(capsys, store):
    conn = db(store)
    rid, sign1, _ = row(conn, "vault", 3)
    payload = cose.decode_sign1(sign1).payload
    at = sign1.index(payload) + len(payload) // 2
    tampered = bytearray(sign1)
    tampered[at] ^= 0x01
    conn.execute("UPDATE blocks SET sign1 = ? WHERE id = ?", (bytes(tampered), rid))
    rc, report = verify(capsys, store)
    assert rc == 1 and report["ok"] is False
    assert problems(report) == {("vault", 3, "bad-signature")}


def test_flip_signature_byte(capsys, store):
    conn = db(store)
    rid, sign1, _ = row(conn, "insurer-ubi", 6)
    tampered = sign1[:-1] + bytes([sign1[-1] ^ 0x80])
    conn.execute("UPDATE blocks SET sign1 = ? WHERE id = ?", (tampered, rid))
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("insurer-ubi", 6, "bad-signature")}


def test_delete_block_in_the_middle(capsys, store):
    conn = db(store)
    conn.execute("DELETE FROM blocks WHERE stream = 'vault' AND seq = 4")
    rc, report = verify(capsys, store)
    assert rc == 1
    assert ("vault", 4, "gap") in problems(report)
    assert {k for _, _, k in problems(report)} <= {"gap", "broken-link"}
    (gap,) = [p for p in report["problems"] if p["kind"] == "gap"]
    assert "seq 4" in gap["detail"]


def test_delete_several_blocks(capsys, store):
    conn = db(store)
    conn.execute("DELETE FROM blocks WHERE stream = 'insurer-ubi' AND seq IN (0, 2, 3)")
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("insurer-ubi", 0, "gap"), ("insurer-ubi", 2, "gap")}
    assert any("seq 2..3" in p["detail"] for p in report["problems"])


def test_swap_two_blocks(capsys, store):
    conn = db(store)
    a, b = row(conn, "vault", 2), row(conn, "vault", 3)
    conn.execute("UPDATE blocks SET sign1 = ?, records = ? WHERE id = ?", (b[1], b[2], a[0]))
    conn.execute("UPDATE blocks SET sign1 = ?, records = ? WHERE id = ?", (a[1], a[2], b[0]))
    rc, report = verify(capsys, store)
    assert rc == 1
    found = problems(report)
    assert ("vault", 2, "out-of-order") in found
    assert {("vault", 2, "row-mismatch"), ("vault", 3, "row-mismatch")} <= found
    assert {k for _, _, k in found} == {"out-of-order", "row-mismatch"}


def test_swap_two_rows_entirely(capsys, store):
    """Swap every column, so only the storage order is wrong."""
    conn = db(store)
    a, b = row(conn, "crash", 1)[0], row(conn, "crash", 2)[0]
    conn.execute("UPDATE blocks SET id = -1 WHERE id = ?", (a,))
    conn.execute("UPDATE blocks SET id = ? WHERE id = ?", (a, b))
    conn.execute("UPDATE blocks SET id = ? WHERE id = -1", (b,))
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("crash", 1, "out-of-order")}


def test_duplicate_block(capsys, store):
    conn = db(store)
    conn.execute(
        "INSERT INTO blocks(stream, seq, digest, t0, t1, count, sign1, records) "
        "SELECT stream, seq, digest, t0, t1, count, sign1, records FROM blocks WHERE stream = 'vault' AND seq = 5"
    )
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("vault", 5, "duplicate")}


def _forged_block(store, conn, stream, seq, key=None):
    """A different block `seq` that links to the stored block seq-1, signed with the real key."""
    key = key or load_signing_key(store / "keys" / "vehicle.key")
    _, prev_sign1, _ = row(conn, stream, seq - 1)
    prev_digest = hashlib.sha256(cose.decode_sign1(prev_sign1).payload).digest()
    t = int(T0 * 1e6) + 10**9
    records = [encode_sample(t + i, "Vehicle.Speed", 88.0) for i in range(3)]
    return seal_block(
        vid="WVWZZZ1JZXW000001", stream=stream, seq=seq, prev=prev_digest, t0=t, t1=t + 2,
        policy=bytes(32), records=records, signing_key=key,
    )


def _insert(conn, blk):
    h = blk.header
    conn.execute(
        "INSERT INTO blocks(stream, seq, digest, t0, t1, count, sign1, records) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (h.stream, h.seq, blk.digest, h.t0, h.t1, h.count, blk.sign1, encode_records(blk.records)),
    )


def test_cut_tail_and_append_a_different_block_is_a_fork(capsys, store):
    conn = db(store)
    conn.execute("DELETE FROM blocks WHERE stream = 'vault' AND seq = 7")
    _insert(conn, _forged_block(store, conn, "vault", 7))
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("vault", 7, "fork")}


def test_cut_tail_deeper_is_truncated(capsys, store):
    conn = db(store)
    conn.execute("DELETE FROM blocks WHERE stream = 'vault' AND seq IN (6, 7)")
    _insert(conn, _forged_block(store, conn, "vault", 6))
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("vault", 7, "truncated")}
    conn.execute("DELETE FROM blocks WHERE stream = 'crash'")
    rc, report = verify(capsys, store)
    assert ("crash", 0, "truncated") in problems(report)


def test_fork_in_the_middle(capsys, store):
    conn = db(store)
    _insert(conn, _forged_block(store, conn, "insurer-ubi", 3))
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("insurer-ubi", 3, "fork")}


def test_resigned_with_another_key(capsys, store):
    other = nacl.signing.SigningKey.generate()
    conn = db(store)
    for rid, sign1 in conn.execute("SELECT id, sign1 FROM blocks WHERE stream = 'crash'").fetchall():
        payload = cose.decode_sign1(sign1).payload
        conn.execute("UPDATE blocks SET sign1 = ? WHERE id = ?", (cose.sign1(payload, other, protected_header(other.verify_key)), rid))
    # and one that even claims the vehicle's kid
    rid, sign1, _ = row(conn, "vault", 1)
    msg = cose.decode_sign1(sign1)
    conn.execute("UPDATE blocks SET sign1 = ? WHERE id = ?", (cose.sign1(msg.payload, other, msg.protected), rid))
    rc, report = verify(capsys, store)
    assert rc == 1
    assert problems(report) == {("crash", s, "bad-signature") for s in range(4)} | {("vault", 1, "bad-signature")}


def test_resigned_store_with_replaced_recorded_key_needs_a_pinned_key(capsys, store, tmp_path):
    """An attacker re-signs everything and records their own public key: --key catches it."""
    real_pub = (store / "keys" / "vehicle.pub").read_text().strip()
    other = nacl.signing.SigningKey.generate()
    conn = db(store)
    for rid, sign1 in conn.execute("SELECT id, sign1 FROM blocks").fetchall():
        payload = cose.decode_sign1(sign1).payload
        conn.execute("UPDATE blocks SET sign1 = ? WHERE id = ?", (cose.sign1(payload, other, protected_header(other.verify_key)), rid))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'public_key'", (bytes(other.verify_key),))
    # the vehicle's private key is still there and disagrees with the recorded key
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {(None, None, "key-mismatch")}
    # the attacker removes it too: only a pinned key tells
    shutil.rmtree(store / "keys")
    rc, report = verify(capsys, store)
    assert rc == 0
    rc, report = verify(capsys, store, "--key", real_pub)
    assert rc == 1
    found = problems(report)
    assert (None, None, "key-mismatch") in found
    assert {(n, s, "bad-signature") for n, c in STREAMS.items() for s in range(c)} <= found


def test_edit_record_value_in_records_blob(capsys, store):
    conn = db(store)
    rid, _, records = row(conn, "insurer-ubi", 2)
    recs = decode_records(records)
    r = decode_record(recs[10])
    recs[10] = encode_sample(r.t, r.name, r.value + 1 if isinstance(r.value, (int, float)) else "x", r.source)
    conn.execute("UPDATE blocks SET records = ? WHERE id = ?", (encode_records(recs), rid))
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("insurer-ubi", 2, "bad-merkle-root")}


def test_drop_a_record_from_records_blob(capsys, store):
    conn = db(store)
    rid, _, records = row(conn, "vault", 0)
    conn.execute("UPDATE blocks SET records = ? WHERE id = ?", (encode_records(decode_records(records)[:-1]), rid))
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("vault", 0, "bad-merkle-root")}


def test_edit_t0_column(capsys, store):
    conn = db(store)
    conn.execute("UPDATE blocks SET t0 = t0 - 1000000 WHERE stream = 'crash' AND seq = 2")
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("crash", 2, "row-mismatch")}
    (p,) = report["problems"]
    assert "t0" in p["detail"]


def test_edit_streams_head(capsys, store):
    conn = db(store)
    conn.execute("UPDATE streams SET head_digest = ? WHERE name = 'vault'", (b"\x11" * 32,))
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("vault", 7, "fork")}


def test_records_deleted_without_a_declared_event_are_reported(capsys, store):
    conn = db(store)
    conn.execute("UPDATE blocks SET records = NULL WHERE seq < 3")
    streams = {r[0] for r in conn.execute("SELECT stream FROM blocks WHERE seq < 3")}
    rc, report = verify(capsys, store)
    assert rc == 1
    assert problems(report) == {(s, q, "undeclared-drop") for s in streams for q in range(3)}
    # (records dropped by retention are declared in the audit stream first: tests/test_owner_policy.py)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00",
        b"\xd2",
        bytes(range(256)),
        b"\xd2\x84" + b"\x81" * 5000,
        b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\xd2\x84\x40\xa0\x40\x40\x00",
        "text, not a blob",
        12345,
    ],
)
def test_garbage_sign1_is_malformed_not_a_crash(capsys, store, garbage):
    conn = db(store)
    rid = row(conn, "vault", 2)[0]
    conn.execute("UPDATE blocks SET sign1 = ? WHERE id = ?", (garbage, rid))
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("vault", 2, "malformed")}


def test_well_formed_cose_without_our_algorithm_is_a_bad_signature(capsys, store):
    conn = db(store)
    rid = row(conn, "vault", 2)[0]
    conn.execute("UPDATE blocks SET sign1 = ? WHERE id = ?", (bytes.fromhex("d28440a04040"), rid))
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("vault", 2, "bad-signature")}


@pytest.mark.parametrize("garbage", [b"\xff", b"\x80\x81", cbor2.dumps([1, 2]), "text", 7])
def test_garbage_records_column(capsys, store, garbage):
    conn = db(store)
    rid = row(conn, "crash", 0)[0]
    conn.execute("UPDATE blocks SET records = ? WHERE id = ?", (garbage, rid))
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("crash", 0, "bad-merkle-root")}


def test_hostile_row_columns(capsys, store):
    conn = db(store)
    conn.execute("UPDATE blocks SET seq = 'x', stream = x'00ff', digest = 5 WHERE stream = 'crash' AND seq = 1")
    rc, report = verify(capsys, store)
    assert rc == 1 and problems(report) == {("crash", 1, "row-mismatch")}


def test_text_report(capsys, store):
    conn = db(store)
    conn.execute("DELETE FROM blocks WHERE stream = 'vault' AND seq = 4")
    capsys.readouterr()
    assert cli.main(["verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert "vault seq 4: gap: missing seq 4 (1 block)" in out
    assert out.splitlines()[-1].startswith("FAILED: 1 problem")
