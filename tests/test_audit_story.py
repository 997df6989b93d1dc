"""`carledger audit` reads as a story: merged disclosures, the owner's decisions standing out, honest times.

The store is made by the owner's real actions (OwnerActions, as `carledger
policy apply`, `consent revoke`, `pause` and `wipe` run them) and by a stream
writer standing in for the agent: a replayed log whose samples are older
than the moment the policy was applied, and one `disclosure` event per
acked block, as the agent's syncer records them (Pipeline._audit_disclosure).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from carledger.cli import main
from carledger.ledger import Ledger
from carledger.owner import OwnerActions, OwnerState

APPLIED = 1_790_000_000.0  # the owner applies the policy (wall clock)
SAMPLES = APPLIED - 3600.0  # the replayed log's samples: an hour older
ACKED = APPLIED + 10.0  # the collector acks block seq at ACKED + seq
REVOKED = APPLIED + 500.0
PAUSED = APPLIED + 600.0
BLOCKS = 98


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


POLICY = f"""
version = 1

[[stream]]
name = "fleet"
recipient = "Fleet Ops B.V."
purpose = "vehicle tracking"
signals = ["Vehicle.Speed"]
consent = {{ granted = {iso(APPLIED - 86400)}, expires = {iso(APPLIED + 100 * 86400)} }}

[[stream]]
name = "vault"
local = true
purpose = "my own driving log"
signals = ["Vehicle.*"]
"""


def make_store(path: Path) -> Path:
    with Ledger.open(path, "car-1") as ledger:
        actions = OwnerActions(ledger, OwnerState.load(path))
        actions.apply_policy(POLICY, name="policy.toml", now=APPLIED)
        fleet = ledger.writer("fleet")
        fleet.add_event(APPLIED, "stream-started", {"recipient": "Fleet Ops B.V."})  # the agent starts it now...
        ledger.seal()
        for seq in range(1, BLOCKS):  # ...and replays a log recorded an hour ago
            fleet.add_sample(SAMPLES + seq, "Vehicle.Speed", 50.0, "ABS_SPEED.VehicleSpeed")
            ledger.seal()
        for seq in range(BLOCKS):
            actions.audit.add_event(ACKED + seq, "disclosure", {
                "stream": "fleet", "recipient": "Fleet Ops B.V.", "seqs": [[seq, seq]], "records": 1})
        actions.revoke("fleet", now=REVOKED)
        actions.pause(None, now=PAUSED)
        ledger.seal()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("audit") / "s")


def human(store: Path, capsys) -> list[str]:
    assert main(["audit", str(store)]) == 0
    return capsys.readouterr().out.splitlines()


def story(lines: list[str]) -> list[str]:
    heading = next(i for i, line in enumerate(lines) if line.startswith("What happened"))
    assert lines[heading + 1].split() == ["time", "by", "what"]
    return lines[heading + 2:]


def test_disclosures_to_one_recipient_are_one_line_between_the_owners_decisions(store, capsys):
    assert story(human(store, capsys)) == [
        f"{iso(APPLIED)}  OWNER  applied policy v1 (policy.toml, from the command line): streams fleet, vault",
        f"{iso(ACKED)}  car    sent stream fleet to Fleet Ops B.V. (acked): blocks 0–97, 98 records "
        f"from {iso(SAMPLES + 1)} to {iso(APPLIED)}",
        f"{iso(REVOKED)}  OWNER  revoked the consent of Fleet Ops B.V. to stream fleet (vehicle tracking)",
        f"{iso(PAUSED)}  OWNER  paused all collection until `carledger resume`",
    ]


def test_audit_json_keeps_every_event_and_adds_the_merged_runs(store, capsys):
    assert main(["audit", str(store), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    kinds = [d["kind"] for d in report["decisions"]]
    assert kinds.count("disclosure") == BLOCKS
    assert [(d["kind"], d["by"]) for d in report["decisions"] if d["kind"] != "disclosure"] == [
        ("policy-applied", "owner"), ("consent-revoked", "owner"), ("pause", "owner")]
    assert report["sent"] == [{
        "stream": "fleet", "recipient": "Fleet Ops B.V.", "seqs": [[0, BLOCKS - 1]], "records": BLOCKS, "acks": BLOCKS,
        "t": ACKED, "t_last": ACKED + BLOCKS - 1, "t0": SAMPLES + 1, "t1": APPLIED,
        # events of this test name no policy, consent or signals (as an older agent recorded them)
        "policy": None, "consent_id": None, "signals": None, "aggregates": None, "metrics": None,
    }]


def test_a_time_range_never_runs_backwards(store, capsys):
    """The first block holds the start event (wall clock), the rest a replayed log's older samples."""
    assert main(["audit", str(store), "--json"]) == 0
    (fleet,) = [d for d in json.loads(capsys.readouterr().out)["disclosures"] if d["stream"] == "fleet"]
    assert (fleet["t0"], fleet["t1"]) == (SAMPLES + 1, APPLIED)


def test_a_revoked_consent_shows_when_it_was_revoked_not_its_old_expiry(store, capsys):
    lines = human(store, capsys)
    (row,) = [line for line in lines if line.startswith("fleet ")]
    assert f"revoked {iso(REVOKED)}" in row and iso(APPLIED + 100 * 86400) not in row
    assert main(["audit", str(store), "--json"]) == 0
    (fleet,) = [d for d in json.loads(capsys.readouterr().out)["disclosures"] if d["stream"] == "fleet"]
    assert fleet["consent"] == {"granted": iso(APPLIED - 86400), "revoked": iso(REVOKED)}


def test_long_details_are_cut_with_an_ellipsis(tmp_path, capsys):
    with Ledger.open(tmp_path / "s", "car-1") as ledger:
        ledger.writer("audit").add_event(APPLIED, "future-kind", {"note": "x" * 400})
    (line,) = story(human(tmp_path / "s", capsys))
    what = line.split("  car  ", 1)[1]
    assert len(what) == 200 and what.endswith("x…") and what.startswith("future-kind: note=xxx")


def test_the_wipe_decision_shows_what_was_deleted_and_the_key_hand_over(tmp_path, capsys):
    from carledger.ledger.keys import kid
    from carledger.ledger import Store

    path = make_store(tmp_path / "s")
    with Store.open_readonly(path) as old:
        old_kid = kid(old.verify_key).hex()
        blocks = old.block_count()
    assert main(["wipe", "--store", str(path), "--yes"]) == 0
    capsys.readouterr()
    with Store.open_readonly(path) as new:
        new_kid = kid(new.verify_key).hex()
    (line,) = story(human(path, capsys))
    assert line.endswith(f"  OWNER  wiped the store for a new owner: {blocks} blocks of 2 streams deleted (audit, fleet); "
                         f"new vehicle key {new_kid}, handed over by the old key {old_kid}")
