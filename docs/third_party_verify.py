"""How a third party verifies carledger blocks with pycose and the standard library only.

    carledger log export STORE --stream NAME --format cose -o NAME.cose
    python third_party_verify.py PUBLIC_KEY_HEX NAME.cose

NAME.cose is a CBOR sequence (RFC 8742) of one stream's blocks in order, each
item one tagged COSE_Sign1 message with its records: the very bytes the
collector receives (docs/block-format.md, "Export"). Checks, per block:

- the message is exactly the format: tag 18, deterministic CBOR, an
  unprotected header that holds nothing but the records (label -65537: any
  other label is refused, since no signature covers that header), a header
  with exactly the documented fields;
- the COSE_Sign1 Ed25519 signature (pycose);
- the RFC 6962 Merkle root and count of the records it carries;
- a block without its records only where a signed retention or eviction
  event of the stream declares them dropped (else `undeclared-drop`);
- one stream, the sequence numbers and the SHA-256 link to the previous
  block's payload.

Prints one JSON object: {"ok": bool, "blocks": n, "records": n, "problems": [...]};
exit 0 when ok, 1 for problems, 2 when the file cannot be read.
No carledger code is used: this is the contract of docs/block-format.md.
"""

import hashlib
import io
import json
import sys

import cbor2
from pycose.keys import OKPKey
from pycose.messages import Sign1Message

RECORDS = -65537
FIELDS = {"v": int, "vid": str, "stream": str, "seq": int, "prev": bytes, "t0": int, "t1": int,
          "policy": bytes, "count": int, "root": bytes}
DROP_EVENTS = {"retention", "eviction", "capture-overwritten"}


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


def cbor_sequence(data):
    """(raw bytes, decoded item) of each item of an RFC 8742 CBOR sequence; a ValueError at a broken item."""
    fp = io.BytesIO(data)
    while fp.tell() < len(data):
        start = fp.tell()
        try:
            item = cbor2.CBORDecoder(fp).decode()
        except Exception as exc:
            raise ValueError(f"item at byte {start}: not CBOR ({exc})") from None
        yield data[start:fp.tell()], item


def structure(raw, item):
    """The header map and the records (None when not carried) of a block message; ValueError for anything else."""
    if not isinstance(item, cbor2.CBORTag) or item.tag != 18:
        raise ValueError("not a tagged COSE_Sign1 (tag 18)")
    if cbor2.dumps(item, canonical=True) != raw:
        raise ValueError("not deterministic CBOR")
    parts = item.value
    if not isinstance(parts, list) or len(parts) != 4 or not isinstance(parts[1], dict) or not isinstance(parts[2], bytes):
        raise ValueError("not [protected, unprotected, payload, signature]")
    unprotected = dict(parts[1])
    records = unprotected.pop(RECORDS, None)
    if unprotected:
        raise ValueError(f"unknown unprotected header label {sorted(unprotected, key=str)[0]!r}")
    if RECORDS in parts[1] and (not isinstance(records, list) or not all(isinstance(r, bytes) for r in records)):
        raise ValueError("records (label -65537) are not an array of byte strings")
    header = cbor2.loads(parts[2])
    if not isinstance(header, dict) or set(header) != set(FIELDS):
        raise ValueError("the signed header does not have exactly the fields v, vid, stream, seq, prev, t0, t1, policy, count, root")
    for field, kind in FIELDS.items():
        if type(header[field]) is not kind:
            raise ValueError(f"header field {field!r} is not {kind.__name__}")
    if cbor2.dumps(header, canonical=True) != parts[2]:
        raise ValueError("the signed header is not deterministic CBOR")
    return header, records


def declared_drops(stream, records):
    """(lo, hi) seq ranges of `stream` whose records a retention or eviction event among `records` declares dropped."""
    out = []
    for raw in records:
        rec = cbor2.loads(raw)
        if isinstance(rec, list) and len(rec) == 4 and rec[0] == 1 and rec[2] in DROP_EVENTS and isinstance(rec[3], dict):
            if rec[3].get("stream", stream) == stream:
                out += [tuple(r) for r in rec[3].get("seqs", []) if isinstance(r, list) and len(r) == 2]
    return out


def verify(key, data):
    problems, prev, expected_seq, stream, records, blocks = [], bytes(32), None, None, 0, 0
    declared, bare = [], []
    try:
        for number, (raw, item) in enumerate(cbor_sequence(data)):
            blocks += 1
            try:
                header, leaves = structure(raw, item)
                msg = Sign1Message.decode(raw)
            except Exception as exc:
                problems.append({"block": number, "kind": "malformed", "detail": str(exc)})
                continue
            msg.key = key
            if not msg.verify_signature():
                problems.append({"block": number, "kind": "bad-signature"})
                continue
            seq = header["seq"]
            if stream is not None and header["stream"] != stream:
                problems.append({"block": number, "kind": "malformed", "detail": f"stream {header['stream']!r}, not {stream!r}"})
                continue
            stream = header["stream"]
            if expected_seq is not None and seq != expected_seq:
                problems.append({"block": number, "kind": "gap", "detail": f"seq {seq}, expected {expected_seq}"})
            if header["prev"] != prev:
                problems.append({"block": number, "kind": "broken-link"})
            if leaves is None and header["count"]:
                bare.append((number, seq))
            elif len(leaves or []) != header["count"] or merkle_root(leaves or []) != header["root"]:
                problems.append({"block": number, "kind": "bad-merkle-root"})
            else:
                records += len(leaves or [])
                declared += declared_drops(stream, leaves or [])
            prev, expected_seq = hashlib.sha256(msg.payload).digest(), seq + 1
    except ValueError as exc:
        problems.append({"block": blocks, "kind": "malformed", "detail": str(exc)})
    for number, seq in bare:
        if not any(lo <= seq <= hi for lo, hi in declared):
            problems.append({"block": number, "kind": "undeclared-drop",
                             "detail": f"seq {seq} has no records and no retention or eviction event declares them dropped"})
    problems.sort(key=lambda p: p["block"])
    return {"ok": not problems, "blocks": blocks, "records": records, "problems": problems}


def main(argv):
    if len(argv) != 3:
        print("usage: third_party_verify.py PUBLIC_KEY_HEX EXPORT.cose", file=sys.stderr)
        return 2
    try:
        key = OKPKey(crv="Ed25519", x=bytes.fromhex(argv[1]))
        with open(argv[2], "rb") as f:
            data = f.read()
    except (OSError, ValueError) as exc:
        print(f"third_party_verify: {exc}", file=sys.stderr)
        return 2
    result = verify(key, data)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
