"""Diagnostic trouble codes: two bytes on the wire, ``P0301`` on paper (SAE J2012).

The top two bits of the first byte are the system (P powertrain, C chassis,
B body, U network), the next two the first digit, then three hex digits.
0x0000 is padding, not a code.
"""

from __future__ import annotations

__all__ = ["decode_dtc", "encode_dtc", "decode_dtc_list"]

_SYSTEMS = "PCBU"


def decode_dtc(high: int, low: int) -> str:
    """``decode_dtc(0x03, 0x01) == "P0301"``."""
    return f"{_SYSTEMS[high >> 6]}{(high >> 4) & 0x3}{high & 0xF:X}{low:02X}"


def encode_dtc(code: str) -> bytes:
    """The two bytes of a code such as ``P0301`` (for the simulator and tests)."""
    text = code.strip().upper()
    if len(text) != 5 or text[0] not in _SYSTEMS or text[1] not in "0123":
        raise ValueError(f"{code!r} is not a DTC like P0301")
    try:
        rest = int(text[2:], 16)
    except ValueError:
        raise ValueError(f"{code!r} is not a DTC like P0301") from None
    value = (_SYSTEMS.index(text[0]) << 14) | (int(text[1]) << 12) | rest
    return value.to_bytes(2, "big")


def decode_dtc_list(data: bytes) -> list[str]:
    """Codes from the bytes after the count byte of a service 03/07/0A answer; padding dropped."""
    codes = []
    for i in range(0, len(data) - 1, 2):
        if data[i] or data[i + 1]:
            codes.append(decode_dtc(data[i], data[i + 1]))
    return codes
