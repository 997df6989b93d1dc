"""`carledger edr export --proof`: a crash capture as evidence an investigator verifies offline (issue 14, item 5)."""

from __future__ import annotations

import base64
import json

from carledger.cli import main
from carledger.edr import read_captures
from carledger.ledger import Store
from carledger.ledger.block import Header
from carledger.ledger.cose import decode_sign1
from test_edr import captures, drive, drives, edr_policy, keys  # noqa: F401 - fixtures, taken by name


def test_a_capture_exports_as_a_bundle_that_verifies_offline_and_holds_only_the_capture(drives, keys, tmp_path, capsys):
    store = drive(tmp_path / "car", drives["crash"], edr_policy(keys, "owner"))
    (capture,) = captures(store, capsys)
    with Store.open_readonly(store) as s:
        (info,) = read_captures(s, s.verify_key)
    capture = {"start_seq": info.start_seq, "end_seq": info.end_seq}
    bundle_file, policy = tmp_path / "crash.proof.json", tmp_path / "investigator.policy"
    assert main(["edr", "export", str(store), "--proof", "-o", str(bundle_file)]) == 0
    assert main(["witness", "logs", str(store), "--stream", "crash"]) == 0
    policy.write_text(f"log {capsys.readouterr().out.strip()}\n")
    capsys.readouterr()
    assert main(["verify-proof", str(bundle_file), "--policy", str(policy), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["stream"] == "crash" and got["blocks"] == [capture["start_seq"], capture["end_seq"]]

    bundle = json.loads(bundle_file.read_text())
    with Store.open_readonly(store) as s:
        size = s.block_count("crash")
    disclosed = [Header.decode(decode_sign1(base64.b64decode(b["sign1"])).payload).seq for b in bundle["blocks"] if "records" in b]
    assert disclosed == list(range(capture["start_seq"], capture["end_seq"] + 1)) and size >= len(disclosed)

    raw = bundle_file.read_bytes()
    at = raw.index(b'"sign1": "') + 20  # one flipped byte in a disclosed block's signed header
    bad = tmp_path / "flipped.json"
    bad.write_bytes(raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:])
    assert main(["verify-proof", str(bad), "--policy", str(policy)]) == 1

    # no key needed; a capture that does not exist is refused with one line
    assert main(["edr", "export", str(store), "--proof", "--capture", "9", "-o", str(tmp_path / "x.json")]) == 1
    assert main(["edr", "export", str(store)]) == 2  # neither --key nor --proof
