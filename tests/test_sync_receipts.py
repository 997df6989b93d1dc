"""Receipts (issue 14, item 2): the collector's ack carries its cosignature/v1 of the car's log; the car keeps it."""

from __future__ import annotations

from broker import all_acked, broker, mqtt_for, start_collector  # noqa: F401 - fixture
from carledger.ledger import SigningKey, Store
from carledger.ledger.checkpoints import origin_for
from carledger.sync import Ack, Syncer, collector_key, sign_ack, topics
from carledger.sync.ack import check_receipt, collector_keys, cosign_tree, cosigner, open_ack
from carledger.transparency.checkpoint import Checkpoint
from conftest import wait_until
from test_sync_acks import publish, sealed_car


def receipts(store) -> list:
    with Store.open_readonly(store) as s:
        return s.receipts()


def test_the_collectors_ack_carries_a_receipt_the_car_verifies_and_keeps(broker, tmp_path):
    store, drive = sealed_car(tmp_path, ticks=6)
    sync = Syncer(store, "car-1", mqtt_for(broker))
    sync.start()
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    try:
        wait_until(lambda: all_acked(store), timeout=60)
        wait_until(lambda: {(r[1], r[3]) for r in receipts(store)} >= {("speed", 6), ("gps", 6)}, timeout=30)
    finally:
        collector.stop()
        sync.stop()
        drive.close()
    assert sync.stats.receipts_refused == 0
    check_on_the_command_line(store, tmp_path)
    check_in_the_console(store)
    keys = collector_keys(store)
    with Store.open_readonly(store) as s:
        for _id, stream, recipient, size, text, line, stated, received in s.receipts():
            cp = Checkpoint.parse(text)
            assert cp.origin == origin_for(s.stream_key(stream), stream)
            assert cp.root_hash == s.tree_root(stream, size, derived=True)
            assert check_receipt(keys[recipient], text, line) == stated
            assert abs(stated - received) < 120


def check_on_the_command_line(store, tmp_path) -> None:
    """`receipts verify` passes; `audit` shows the receipts; a receipt row edited or a key re-enrolled fails (exit 1)."""
    import contextlib
    import io
    import json
    import shutil
    import sqlite3

    from carledger.cli import main
    from carledger.sync import enroll_collector

    def run(*argv) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main(list(argv))
        return code, out.getvalue()

    code, out = run("receipts", "verify", str(store), "--json")
    got = json.loads(out)
    assert code == 0 and got["ok"] and {r["recipient"] for r in got["receipts"]} == {"insurer", "fleet"}
    code, out = run("audit", str(store))
    assert code == 0 and "Receipts" in out and "insurer" in out.split("Receipts")[1]
    edited = tmp_path / "edited"
    shutil.copytree(store, edited)
    with sqlite3.connect(edited / "ledger.sqlite") as db:
        db.execute("UPDATE receipts SET size = size - 1, text = replace(text, char(10) || '6' || char(10), "
                   "char(10) || '5' || char(10)) WHERE stream = 'speed'")
    assert run("receipts", "verify", str(edited))[0] == 1
    # The insurer's collector key is replaced: its receipts still verify, with the key they were made with.
    other = tmp_path / "rekeyed"
    shutil.copytree(store, other)
    enroll_collector(other, "insurer", SigningKey.generate().verify_key)
    code, out = run("receipts", "verify", str(other))
    assert code == 0 and "yes (the recipient's previous key)" in out and "NO:" not in out
    # ... but not if the previous key was replaced before the time a receipt states: it vouches for nothing after
    retired_file = other / "keys" / "collectors-retired.json"
    retired = json.loads(retired_file.read_text())
    retired["insurer"][0]["retired"] = 1.0
    retired_file.write_text(json.dumps(retired))
    code, out = run("receipts", "verify", str(other))
    assert code == 1 and "NO: cosigned by the recipient's previous key after it was replaced" in out
    # ... nor with a key that was never enrolled for it (collectors.json edited, no history)
    forged = tmp_path / "forged-key"
    shutil.copytree(store, forged)
    keys = json.loads((forged / "keys" / "collectors.json").read_text())
    keys["insurer"] = bytes(SigningKey.generate().verify_key).hex()
    (forged / "keys" / "collectors.json").write_text(json.dumps(keys))
    code, out = run("receipts", "verify", str(forged))
    assert code == 1 and "NO:" in out
    assert run("receipts", "verify", str(tmp_path / "nowhere"))[0] == 2


def check_in_the_console(store) -> None:
    """The owner's console shows the same receipts on "What left the car" (issue 18), as audit lists them."""
    from test_console import start_console, stop

    console = start_console(store)
    try:
        console.pair()
        page = console.request("/left")
    finally:
        stop(console)
    assert page.status == 200 and "Signed receipts" in page.text
    latest = {(r[2], r[1]): r[3] for r in sorted(receipts(store), key=lambda r: r[3])}
    assert latest
    for (recipient, stream), size in latest.items():
        assert f"{recipient} {stream} 0..{size - 1}" in page.text, page.text


def test_a_receipt_forged_with_the_wrong_key_is_refused_and_the_ack_still_counts(broker, tmp_path):
    store, drive = sealed_car(tmp_path, ticks=3)
    genuine = collector_key(tmp_path / "collected")
    forger = SigningKey.generate()
    with Store.open_readonly(store) as s:
        digest = s.digest_at("speed", 2)
        origin = origin_for(s.stream_key("speed"), "speed")
        root = s.tree_root("speed", 3)
    sync = Syncer(store, "car-1", mqtt_for(broker))
    sync.start()
    try:
        wait_until(lambda: sync.stats.connects >= 1, timeout=20)
        # the genuine collector's signed ack, carrying a cosignature made with another key
        forged = cosign_tree(forger, origin, 3, root)
        publish(broker, [(topics.ack("car-1", "speed"), sign_ack(genuine, Ack("car-1", "speed", 2, digest, forged)))])
        wait_until(lambda: sync.stats.receipts_refused >= 1, timeout=20)
    finally:
        sync.stop()
        drive.close()
    assert receipts(store) == []
    assert any("receipt refused" in p for p in sync.problems)
    with Store.open_readonly(store) as s:
        assert s.acked_seq("speed") == 2


def test_a_receipt_checks_only_with_its_key_and_only_over_its_checkpoint(tmp_path):
    key, other = SigningKey.generate(), SigningKey.generate()
    root = bytes(range(32))
    text = Checkpoint("carledger.example/v/00/speed", 5, root).text()
    line = cosign_tree(key, "carledger.example/v/00/speed", 5, root, clock=lambda: 1_700_000_000)
    assert check_receipt(key.verify_key, text, line) == 1_700_000_000
    assert cosigner(key.verify_key).vkey().startswith("carledger.example/collector/")
    for public, body in ((other.verify_key, text), (key.verify_key, Checkpoint("carledger.example/v/00/speed", 6, root).text())):
        try:
            check_receipt(public, body, line)
        except ValueError as exc:
            assert "not a cosignature" in str(exc)
        else:
            raise AssertionError("a receipt verified with the wrong key or over another checkpoint")
    # the ack's optional field round-trips, and a junk one is malformed
    payload = sign_ack(key, Ack("car-1", "speed", 4, b"\0" * 32, line))
    assert open_ack(payload, key.verify_key, "car-1", "speed").cosignature == line
