"""A change of owner at the collector, on either backend (docs/owner-state.md, "Change of owner").

`carledger collect enroll ... --handover FILE` re-keys a vehicle through the
CollectorStore interface: the same checks, the same one-line refusals and exit
codes, whether the chains are in a collector directory or in PostgreSQL (a real
cluster, tests/pg.py). The previous key's chain is kept apart and still verifies
with that key; the new key's chain starts from seq 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carledger.cli import main
from carledger.collect import Collector, collector_state
from carledger.ledger import VerifyKey, open_block
from carledger.ledger.keys import SigningKey
from carledger.verify import verify_store
from pg import pg_cluster, pg_dsn  # noqa: F401  (fixtures)
from test_collect import Clock, make_blocks, send

VEHICLE = "car-1"


@pytest.fixture(params=["sqlite", "postgresql"])
def collected(request, tmp_path):
    """(a collector with car-1's 4 blocks of `speed` stored, the command line's store arguments, car-1's store)."""
    store = tmp_path / VEHICLE
    messages = make_blocks(store, VEHICLE, "speed", 4)
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgresql" else None
    collector = Collector(tmp_path / "collected", clock=Clock(), store=dsn)
    collector.registry.enroll(VEHICLE, store / "keys" / "vehicle.pub")
    send(collector, messages)
    assert collector.registry.streams(VEHICLE)["speed"]["blocks"] == 4
    where = ["--dsn", dsn] if dsn else [str(tmp_path / "collected")]
    yield collector, where, store, messages
    collector.close()


def enroll(where: list[str], *args: str) -> int:
    """`collect enroll` with the store first (a directory) or as --dsn, as an operator types it."""
    return main(["collect", "enroll", *where, *args])


def wipe_and_hand_over(store: Path, tmp_path: Path, capsys) -> tuple[str, str, Path]:
    """(old public key, new public key, the handover file) of a `carledger wipe` of the car."""
    old_pub = (store / "keys" / "vehicle.pub").read_text().strip()
    assert main(["wipe", "--store", str(store), "--yes"]) == 0
    handover = tmp_path / "handover.json"
    assert main(["remote", "identity", "--store", str(store), "--handover", str(handover)]) == 0
    capsys.readouterr()
    return old_pub, (store / "keys" / "vehicle.pub").read_text().strip(), handover


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    return err[0]


def test_forged_or_altered_handovers_are_refused_in_one_line_and_change_nothing(collected, tmp_path, capsys):
    collector, where, store, _ = collected
    old_pub, new_pub, handover = wipe_and_hand_over(store, tmp_path, capsys)
    intruder = bytes(SigningKey.generate().verify_key).hex()
    doc = json.loads(handover.read_text())

    def variant(name: str, change) -> str:
        forged = json.loads(json.dumps(doc))
        change(forged)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(forged))
        return str(path)

    # Without a handover, another key is refused.
    assert enroll(where, VEHICLE, new_pub) == 1
    assert "enrolled with another key" in one_error_line(capsys)
    # A statement naming another new key, vehicle or previous key than the one signed: the signature fails.
    for name, change in (("new-key", lambda d: d["statement"].update(new_key=intruder)),
                         ("vehicle", lambda d: d["statement"].update(vehicle="car-2")),
                         ("previous", lambda d: d["statement"].update(previous_key=intruder)),
                         ("signature", lambda d: d.update(signature="00" * 64))):
        key = intruder if name == "new-key" else new_pub
        assert enroll(where, VEHICLE, key, "--handover", variant(name, change)) == 1, name
        assert one_error_line(capsys) == ("carledger collect: the handover does not verify: not a wipe statement "
                                          "signed by the key it names as previous"), name
    # A true handover, given with another key than the one it hands over to.
    assert enroll(where, VEHICLE, intruder, "--handover", str(handover)) == 1
    assert "hands 'car-1' to another key" in one_error_line(capsys)
    # Not JSON: a usage error, one line naming the file.
    (tmp_path / "junk.json").write_text("{not json")
    assert enroll(where, VEHICLE, new_pub, "--handover", str(tmp_path / "junk.json")) == 2
    assert one_error_line(capsys).startswith(f"carledger collect: {tmp_path / 'junk.json'}: not a handover (JSON)")

    assert bytes(collector.registry.key(VEHICLE)).hex() == old_pub
    assert collector.registry.streams(VEHICLE)["speed"]["blocks"] == 4


def test_a_valid_handover_rekeys_and_keeps_the_previous_chain_apart(collected, tmp_path, capsys):
    collector, where, store, old_messages = collected
    old_pub, new_pub, handover = wipe_and_hand_over(store, tmp_path, capsys)
    registry = collector.registry

    assert enroll(where, VEHICLE, new_pub, "--handover", str(handover)) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"enrolled vehicle {VEHICLE} (key id ") and "the previous key's chains are in " in out
    assert bytes(registry.key(VEHICLE)).hex() == new_pub
    assert registry.streams(VEHICLE) == {} and registry.waiting() == []

    # The previous chain is kept whole, apart, and verifies with the previous key alone.
    if where[0] == "--dsn":
        [(retired, key, _)] = registry.retired(VEHICLE)
        assert key.hex() == old_pub
        kept = list(registry.retired_chain(retired, "speed"))
        assert [seq for seq, _ in kept] == [0, 1, 2, 3] and [m for _, m in kept] == old_messages
        assert all(open_block(m, VerifyKey(bytes.fromhex(old_pub))).seq == seq for seq, m in kept)
    else:
        [retired_dir] = (tmp_path / "collected" / "retired").iterdir()
        report = verify_store(retired_dir, key=old_pub)
        assert report.ok and report.streams["speed"].blocks == 4

    # The same handover again changes nothing.
    assert enroll(where, VEHICLE, new_pub, "--handover", str(handover)) == 0
    assert "previous key" not in capsys.readouterr().out

    # The running collector follows the new key: the old blocks are refused, the new chain starts at seq 0.
    send(collector, old_messages[:1])
    assert registry.streams(VEHICLE) == {}
    new_messages = make_blocks(store, VEHICLE, "speed", 3)
    send(collector, new_messages)
    speed = registry.streams(VEHICLE)["speed"]
    assert (speed["blocks"], speed["first_seq"], speed["head_seq"]) == (3, 0, 2)
    assert main(["collect", "verify", *where]) == 0
    assert capsys.readouterr().out.strip() == f"{VEHICLE} speed: 3 blocks, 30 records: intact"
    state = collector_state(registry)
    assert [p["kind"] for p in state["problems"]] == ["bad-signature"]  # the old block sent after the re-key
