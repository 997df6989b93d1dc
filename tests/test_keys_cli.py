"""Issue 12 item 9: `keygen` writes both halves, missing key files say so, `remote sign-policy` signs only what the car would apply."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from carledger.cli import main
from carledger.ledger import Ledger
from carledger.ledger.encrypt import load_private_key
from carledger.ledger.keys import load_signing_key, load_verify_key

POLICY = """\
version = {version}
[[stream]]
name = "vault"
local = true
signals = ["Vehicle.Speed"]
"""


def keygen(capsys, kind: str, path: Path) -> str:
    capsys.readouterr()
    assert main(["keygen", kind, "-o", str(path)]) == 0
    return capsys.readouterr().out.strip()


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with policy version 3 in force."""
    path = tmp_path / "car"
    Ledger.open(path, vehicle_id="car-1").close()
    (tmp_path / "v3.toml").write_text(POLICY.format(version=3))
    assert main(["policy", "apply", str(tmp_path / "v3.toml"), "--store", str(path)]) == 0
    return path


def test_keygen_writes_the_public_key_beside_the_private_one(tmp_path, capsys, store):
    public = keygen(capsys, "owner", tmp_path / "owner.key")
    assert stat.S_IMODE(os.stat(tmp_path / "owner.key").st_mode) == 0o600
    assert bytes(load_signing_key(tmp_path / "owner.key").verify_key).hex() == public
    assert bytes(load_verify_key(tmp_path / "owner.pub")).hex() == public
    # The README's flow, as written.
    assert main(["remote", "enroll-owner", str(tmp_path / "owner.pub"), "--store", str(store)]) == 0
    assert bytes(load_verify_key(store / "keys" / "owner.pub")).hex() == public

    public = keygen(capsys, "recipient", tmp_path / "insurer.key")
    assert bytes(load_private_key(tmp_path / "insurer.key").public_key).hex() == public
    assert public in (tmp_path / "insurer.pub").read_text()

    keygen(capsys, "owner", tmp_path / "noext")  # no .key suffix: NAME.pub
    assert (tmp_path / "noext.pub").exists()


def test_keygen_never_overwrites_either_half(tmp_path, capsys):
    (tmp_path / "owner.pub").write_text("mine\n")
    assert main(["keygen", "owner", "-o", str(tmp_path / "owner.key")]) == 1
    assert one_line_error(capsys) == f"carledger keygen: {tmp_path / 'owner.pub'}: exists already; nothing written"
    assert not (tmp_path / "owner.key").exists() and (tmp_path / "owner.pub").read_text() == "mine\n"


def test_a_missing_key_file_is_reported_as_no_such_file(tmp_path, capsys, store):
    missing = tmp_path / "ownr.pub"
    assert main(["remote", "enroll-owner", str(missing), "--store", str(store)]) == 2
    assert one_line_error(capsys) == f"carledger remote: {missing}: no such file"
    (tmp_path / "p.toml").write_text(POLICY.format(version=4))
    assert main(["remote", "sign-policy", str(tmp_path / "p.toml"), "--key", str(tmp_path / "ownr.key"), "-o",
                 str(tmp_path / "p.cose")]) == 2
    assert one_line_error(capsys) == f"carledger remote: {tmp_path / 'ownr.key'}: no such file"
    assert main(["remote", "enroll-owner", "ab" * 32, "--store", str(tmp_path / "nostore")]) == 2
    # The store is resolved as for every command (docs/cli.md): the usage, then one line naming the path.
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"carledger remote enroll-owner: error: {tmp_path / 'nostore'}: no such directory (not a carledger store)")
    assert not (tmp_path / "nostore").exists()


def sign(tmp_path: Path, policy: str, key: str, *extra: str) -> int:
    (tmp_path / "p.toml").write_text(policy)
    return main(["remote", "sign-policy", str(tmp_path / "p.toml"), "--key", str(tmp_path / key),
                 "-o", str(tmp_path / "p.cose"), *extra])


def test_sign_policy_refuses_an_invalid_policy(tmp_path, capsys):
    keygen(capsys, "owner", tmp_path / "owner.key")
    bad = POLICY.format(version=4).replace('"Vehicle.Speed"', '"Vehicle.NoSuchSignal"')
    assert sign(tmp_path, bad, "owner.key") == 2
    line = one_line_error(capsys)
    assert line.startswith(f"carledger remote: not signed: {tmp_path / 'p.toml'}:5:") and "NoSuchSignal" in line
    assert not (tmp_path / "p.cose").exists()
    assert sign(tmp_path, bad, "owner.key", "--no-dbc") == 0  # the same switch as `policy check`
    assert sign(tmp_path, "version = 4\nversion = 5\n", "owner.key") == 2
    assert one_line_error(capsys).startswith("carledger remote: not signed: ")


def test_sign_policy_refuses_a_version_not_higher_than_the_one_it_knows(tmp_path, capsys, store):
    keygen(capsys, "owner", tmp_path / "owner.key")
    assert sign(tmp_path, POLICY.format(version=3), "owner.key", "--store", str(store)) == 2
    assert one_line_error(capsys) == (f"carledger remote: {tmp_path / 'p.toml'}: version 3 is not higher than the "
                                      f"version in force (3, from {store}); set version = 4 or higher")
    assert sign(tmp_path, POLICY.format(version=2), "owner.key", "--previous", "2") == 2
    assert "version 2 is not higher than the version in force (2, from --previous)" in one_line_error(capsys)
    assert sign(tmp_path, POLICY.format(version=3), "owner.key", "--previous", str(tmp_path / "v3.toml")) == 2
    assert f"(3, from {tmp_path / 'v3.toml'})" in one_line_error(capsys)
    assert not (tmp_path / "p.cose").exists()
    assert sign(tmp_path, POLICY.format(version=4), "owner.key", "--previous", "3") == 0


def test_sign_policy_refuses_a_key_of_the_wrong_kind(tmp_path, capsys, store):
    keygen(capsys, "recipient", tmp_path / "insurer.key")
    assert sign(tmp_path, POLICY.format(version=4), "insurer.key") == 2
    assert one_line_error(capsys) == (f"carledger remote: {tmp_path / 'insurer.key'}: a recipient key (X25519), not the "
                                      "owner's Ed25519 key (make one with: carledger keygen owner -o owner.key)")
    keygen(capsys, "owner", tmp_path / "owner.key")
    assert sign(tmp_path, POLICY.format(version=4), "owner.pub") == 2
    assert "the owner's public key; signing needs the private one" in one_line_error(capsys)
    assert main(["remote", "enroll-owner", str(tmp_path / "insurer.pub"), "--store", str(store)]) == 2
    assert "a recipient key (X25519), not the owner's" in one_line_error(capsys)
    # With the store, the key must be the owner key enrolled there: the car would refuse any other.
    keygen(capsys, "owner", tmp_path / "other.key")
    assert main(["remote", "enroll-owner", str(tmp_path / "owner.pub"), "--store", str(store)]) == 0
    capsys.readouterr()
    assert sign(tmp_path, POLICY.format(version=4), "other.key", "--store", str(store)) == 2
    assert "not the owner key enrolled in" in one_line_error(capsys)
    assert sign(tmp_path, POLICY.format(version=4), "owner.key", "--store", str(store)) == 0
    assert sign(tmp_path, POLICY.format(version=4), str(store / "keys" / "vehicle.key")) == 2
    assert "the vehicle's own key, not the owner's" in one_line_error(capsys)
