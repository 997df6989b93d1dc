"""The vehicle key: created once, private (0600 in a 0700 directory), refused when readable by others."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from carledger.ledger import KeyFileError, kid, load_or_create_signing_key, load_signing_key, load_verify_key


def test_created_private_and_reused(tmp_path):
    store = tmp_path / "store"
    key = load_or_create_signing_key(store)
    path = store / "keys" / "vehicle.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store / "keys").st_mode) == 0o700
    text = path.read_text()
    assert text.endswith("\n") and len(text.strip()) == 64
    assert (store / "keys" / "vehicle.pub").read_text().strip() == bytes(key.verify_key).hex()
    again = load_or_create_signing_key(store)
    assert bytes(again) == bytes(key)
    assert [p.name for p in (store / "keys").iterdir()] != [] and not any(
        p.name.endswith(".tmp") for p in (store / "keys").iterdir()
    )


def test_refuses_group_or_world_readable_key(tmp_path):
    load_or_create_signing_key(tmp_path)
    path = tmp_path / "keys" / "vehicle.key"
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_signing_key(tmp_path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError):
        load_signing_key(path)
    os.chmod(path, 0o600)
    load_signing_key(path)


def test_malformed_key_file(tmp_path):
    load_or_create_signing_key(tmp_path)
    path = tmp_path / "keys" / "vehicle.key"
    path.write_text("not hex\n")
    with pytest.raises(KeyFileError, match="not hex"):
        load_signing_key(path)
    path.write_text("00" * 31)
    with pytest.raises(KeyFileError, match="31 bytes"):
        load_signing_key(path)


def test_kid_and_verify_key_forms(tmp_path):
    key = load_or_create_signing_key(tmp_path)
    pub = bytes(key.verify_key)
    assert kid(key.verify_key) == hashlib.sha256(pub).digest()[:8] == kid(pub)
    assert bytes(load_verify_key(pub.hex())) == pub
    assert bytes(load_verify_key(pub)) == pub
    assert bytes(load_verify_key(str(tmp_path / "keys" / "vehicle.pub"))) == pub
    assert bytes(load_verify_key(tmp_path / "keys" / "vehicle.key")) == pub
    assert load_verify_key(key.verify_key) is key.verify_key
    with pytest.raises(KeyFileError):
        load_verify_key(str(tmp_path / "nope.pub"))
    with pytest.raises(KeyFileError):
        load_verify_key(b"short")


def test_the_subgroup_rule_refuses_each_small_order_part_added_to_a_good_key():
    """P in the prime-order subgroup is accepted; P + T is refused for each of the 7 torsion points T."""
    import nacl.bindings as sodium

    from carledger.ledger.keys import public_key_problem

    order_8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
    torsion, t = [], order_8
    for _ in range(7):  # T, 2T, ... 7T: every small-order point but the identity
        torsion.append(t)
        t = sodium.crypto_core_ed25519_add(t, order_8)
    assert t == (1).to_bytes(32, "little") and len(set(torsion)) == 7
    for _ in range(20):
        scalar = sodium.crypto_core_ed25519_scalar_reduce(os.urandom(64))
        good = sodium.crypto_scalarmult_ed25519_base_noclamp(scalar)
        assert public_key_problem(good) is None
        for small in torsion:
            assert public_key_problem(sodium.crypto_core_ed25519_add(good, small)) == (
                "a point with a small-order component (outside the prime-order subgroup)"
            )
