"""`carledger verify` reports forks with their signed notes: the store's own evidence and a witness's (issue 14)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

from carledger.cli import main
from carledger.ledger import Ledger, Store
from carledger.ledger.checkpoints import ForkedStore, log_verifier
from carledger.transparency.cosignature import CosignatureSigner
from carledger.transparency.witness import Witness, format_request

VID = "VIN-FORKS"


def _drive(store_dir, blocks: int, start: float) -> None:
    with Ledger.open(store_dir, VID) as ledger:
        ledger.checkpoint_every = 4
        w = ledger.writer("ubi")
        for i in range(blocks):
            w.add_sample(start + i, "Vehicle.Speed", float(i))
            ledger.seal([w])


def _verify(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["verify", *argv])
    return code, out.getvalue()


def test_verify_reports_the_stores_and_a_witnesss_fork_evidence_with_the_signed_notes(tmp_path):
    orig, copy, wdir = tmp_path / "orig", tmp_path / "copy", tmp_path / "w1"
    _drive(orig, 4, 0)
    shutil.copytree(orig, copy)
    _drive(orig, 4, 10)
    _drive(copy, 4, 20)  # the copy signs another checkpoint of 8 blocks: a fork
    with Store.open_readonly(orig) as s:
        key, theirs = s.stream_key("ubi"), s.latest_checkpoint("ubi").note
    with Store.open_readonly(copy) as s:
        mine = s.latest_checkpoint("ubi").note
    assert _verify(str(copy))[0] == 0  # nothing shows the copy up yet

    wdir.mkdir()
    witness = Witness(wdir, CosignatureSigner("witness.example/w1", os.urandom(32)), [log_verifier(key, "ubi")])
    try:
        assert witness.add_checkpoint(format_request(0, [], theirs)).status == 200
        assert witness.add_checkpoint(format_request(8, [], mine)).status == 409
    finally:
        witness.close()
    with Store.open(copy) as store:
        try:
            store.check_signed_checkpoint("ubi", theirs, "witness.example/w1")
        except ForkedStore:
            pass

    code, out = _verify(str(copy), "--witness", str(wdir))
    assert code == 1, out
    assert "forks (2 signed by the car" in out and "not-held" in out and "conflict" in out
    assert theirs.decode().split("\n")[2] in out and mine.decode().split("\n")[2] in out  # both roots, as signed
    assert "FAILED: 2 forks" in out
    code, out = _verify(str(orig), "--witness", str(wdir), "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"] and [f["kind"] for f in doc["forks"]] == ["conflict"]
    assert all(f["signed"] for f in doc["forks"]) and len(doc["forks"][0]["notes"]) == 2
    assert _verify(str(orig), "--witness", str(tmp_path / "nowhere"))[0] == 2


def test_a_clean_store_has_no_forks_section(tmp_path):
    _drive(tmp_path / "s", 5, 0)
    code, out = _verify(str(tmp_path / "s"))
    assert code == 0 and "forks" not in out
