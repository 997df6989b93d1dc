"""The ledger stage: records, blocks (COSE_Sign1, Merkle roots), chains, the SQLite store, keys.

Formats: docs/block-format.md and docs/store-format.md.

Typical use in the agent::

    ledger = Ledger.open(store_dir, vehicle_id)
    w = ledger.writer("insurer-ubi")
    w.add_sample(t, "Vehicle.Speed", 53.2)          # hot path: one list append
    ...
    for blk in ledger.seal(ledger.due(now, 1.0, 5000)):  # one transaction, fsync'd
        publish(blk.message())
"""

from carledger.ledger import cbor, cose, merkle
from carledger.ledger.block import (
    FORMAT_VERSION,
    LABEL_RECORDS,
    ZERO_DIGEST,
    Event,
    Header,
    Sample,
    SealedBlock,
    check_records_root,
    decode_record,
    decode_records,
    encode_event,
    encode_records,
    encode_sample,
    open_block,
    protected_header,
    seal_block,
    split_records,
    with_records,
)
from carledger.ledger.cose import Sign1, decode_sign1, sign1, verify_sign1
from carledger.ledger.errors import (
    BadMerkleRoot,
    BadSignature,
    CBOREncodeError,
    KeyFileError,
    LedgerError,
    MalformedBlock,
    StoreError,
    StoreLocked,
)
from carledger.ledger.keys import (
    FileSigner,
    Signer,
    SigningKey,
    VerifyKey,
    key_path,
    kid,
    load_or_create_secret,
    load_or_create_signing_key,
    load_signing_key,
    load_verify_key,
)
from carledger.ledger.store import BlockRow, Store
from carledger.ledger.writer import Ledger, StreamWriter, valid_stream_name

__all__ = [
    "cbor",
    "cose",
    "merkle",
    "FORMAT_VERSION",
    "LABEL_RECORDS",
    "ZERO_DIGEST",
    "Event",
    "Header",
    "Sample",
    "SealedBlock",
    "check_records_root",
    "decode_record",
    "decode_records",
    "encode_event",
    "encode_records",
    "encode_sample",
    "open_block",
    "protected_header",
    "seal_block",
    "split_records",
    "with_records",
    "Sign1",
    "decode_sign1",
    "sign1",
    "verify_sign1",
    "BadMerkleRoot",
    "BadSignature",
    "CBOREncodeError",
    "KeyFileError",
    "LedgerError",
    "MalformedBlock",
    "StoreError",
    "StoreLocked",
    "FileSigner",
    "Signer",
    "SigningKey",
    "VerifyKey",
    "key_path",
    "kid",
    "load_or_create_secret",
    "load_or_create_signing_key",
    "load_signing_key",
    "load_verify_key",
    "BlockRow",
    "Store",
    "Ledger",
    "StreamWriter",
    "valid_stream_name",
]
