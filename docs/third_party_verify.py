"""How a third party verifies carledger blocks with pycose and the standard library only.

    python third_party_verify.py PUBLIC_KEY_HEX BLOCKS_FILE

BLOCKS_FILE holds one stream's block messages in order, one hex string per
line (what the vehicle publishes, or `Store.message(row)`). Checks, per
block: the COSE_Sign1 Ed25519 signature (pycose), the RFC 6962 Merkle root
and count of the records it carries (COSE unprotected header label -65537),
the sequence number and the SHA-256 link to the previous block's payload.
Prints one JSON object: {"ok": bool, "blocks": n, "records": n, "problems": [...]}.
No carledger code is used: this is the contract of docs/block-format.md.
"""

import hashlib
import json
import sys

import cbor2
from pycose.keys import OKPKey
from pycose.messages import Sign1Message

RECORDS = -65537


def merkle_root(leaves):
    """RFC 6962 Merkle tree head."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + merkle_root(leaves[:k]) + merkle_root(leaves[k:])).digest()


def main(public_key_hex, blocks_file):
    key = OKPKey(crv="Ed25519", x=bytes.fromhex(public_key_hex))
    problems, prev, expected_seq, records = [], bytes(32), None, 0
    lines = [line.strip() for line in open(blocks_file) if line.strip()]
    for number, line in enumerate(lines):
        try:
            msg = Sign1Message.decode(bytes.fromhex(line))
        except Exception as exc:
            problems.append({"block": number, "kind": "malformed", "detail": str(exc)})
            continue
        msg.key = key
        if not msg.verify_signature():
            problems.append({"block": number, "kind": "bad-signature"})
            continue
        header = cbor2.loads(msg.payload)
        seq = header["seq"]
        if expected_seq is not None and seq != expected_seq:
            problems.append({"block": number, "kind": "gap", "detail": f"seq {seq}, expected {expected_seq}"})
        if header["prev"] != prev:
            problems.append({"block": number, "kind": "broken-link"})
        leaves = msg.uhdr.get(RECORDS)
        if leaves is not None:
            if len(leaves) != header["count"] or merkle_root(list(leaves)) != header["root"]:
                problems.append({"block": number, "kind": "bad-merkle-root"})
            records += len(leaves)
        prev, expected_seq = hashlib.sha256(msg.payload).digest(), seq + 1
    print(json.dumps({"ok": not problems, "blocks": len(lines), "records": records, "problems": problems}))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
