"""What travels in the MQTT payloads (docs/sync.md): compressed blocks, acks, status.

A block payload is the COSE_Sign1 message with its records (block-format.md),
either as it is or as one zstd frame (RFC 8878) of it; the first bytes tell
which (0xD2 is CBOR tag 18, 28 B5 2F FD the zstd magic). Acks and status are
small JSON objects, readable with mosquitto_sub.
"""

from __future__ import annotations

import json
from typing import Any

import zstandard

from carledger.ledger.encrypt import unzstd
from carledger.ledger.errors import MalformedBlock

__all__ = ["BlockPacker", "unpack_block", "encode_ack", "decode_ack", "MAX_BLOCK", "MAX_PAYLOAD"]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_PAYLOAD = 16 << 20  # largest block payload a collector accepts (compressed)
MAX_BLOCK = 64 << 20  # largest block message after decompression
MAX_ACK = 256


class BlockPacker:
    """Compresses block messages for the wire (one compressor, reused: one per thread)."""

    def __init__(self, level: int = 15):
        self._zip = zstandard.ZstdCompressor(level=level) if level > 0 else None

    def pack(self, message: bytes) -> bytes:
        if self._zip is None:
            return message
        packed = self._zip.compress(message)
        return packed if len(packed) < len(message) else message


def unpack_block(payload: bytes) -> bytes:
    """The COSE message of a block payload; MalformedBlock (with the reason) for anything else."""
    if len(payload) > MAX_PAYLOAD:
        raise MalformedBlock(f"payload of {len(payload)} bytes, more than {MAX_PAYLOAD}")
    if payload[:4] == ZSTD_MAGIC:
        return unzstd(payload, MAX_BLOCK, "block payload")
    return bytes(payload)


def encode_ack(seq: int, digest: bytes) -> bytes:
    """The collector holds and verified every block of the stream up to `seq`, whose digest is `digest`."""
    return json.dumps({"seq": seq, "digest": digest.hex()}, separators=(",", ":")).encode()


def decode_ack(payload: bytes) -> tuple[int, bytes]:
    """(seq, digest) of an ack; ValueError for anything that is not one."""
    if len(payload) > MAX_ACK:
        raise ValueError(f"ack of {len(payload)} bytes")
    try:
        obj: Any = json.loads(payload)
        seq, digest = obj["seq"], bytes.fromhex(obj["digest"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise ValueError(f"not an ack: {exc}") from None
    if type(seq) is not int or seq < 0 or len(digest) != 32:
        raise ValueError("not an ack: seq must be a non-negative integer and digest 32 bytes")
    return seq, digest
