"""What travels in the MQTT payloads (docs/sync.md): compressed blocks, acks, status.

A block payload is the COSE_Sign1 message with its records (block-format.md),
either as it is or as one zstd frame (RFC 8878) of it; the first bytes tell
which (0xD2 is CBOR tag 18, 28 B5 2F FD the zstd magic). Status is a small
JSON object, readable with mosquitto_sub; acks are signed (carledger.sync.ack).
"""

from __future__ import annotations

import zstandard

from carledger.ledger.encrypt import unzstd
from carledger.ledger.errors import MalformedBlock

__all__ = ["BlockPacker", "unpack_block", "MAX_BLOCK", "MAX_PAYLOAD"]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_PAYLOAD = 16 << 20  # largest block payload a collector accepts (compressed)
MAX_BLOCK = 64 << 20  # largest block message after decompression


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
