"""Deterministic CBOR (RFC 8949 §4.2.1) on top of cbor2.

cbor2's ``canonical=True`` gives preferred serialization (shortest integers,
shortest lossless floats, definite lengths) but orders map keys length-first
(the old RFC 7049 "canonical" rule), not bytewise as §4.2.1 asks. The two
orders agree whenever the keys of a map are all small integers (-24..23, one
byte) or text strings shorter than 24 bytes (one header byte carrying the
length): then a longer encoding is also bytewise greater. `encode` refuses
any other key, except in a map with a single entry, which has no order to get
wrong (COSE's unprotected header ``{-65537: ...}``).
"""

from __future__ import annotations

import functools
import io
from typing import Any

import cbor2

from carledger.ledger.errors import CBOREncodeError, MalformedBlock

__all__ = ["encode", "decode", "is_deterministic", "MAX_DEPTH"]

#: Deepest container nesting `decode` accepts (ours is at most 4 deep).
MAX_DEPTH = 32

_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})
_dumps = cbor2.dumps

#: Deterministic CBOR without `encode`'s profile check: for values the caller built of known types on a hot path
#: (an ack, a record being compared with its own encoding). Anything else goes through `encode`.
canonical = functools.partial(cbor2.dumps, canonical=True)


def _check_key(key: Any) -> None:
    t = type(key)
    if t is int:
        if -24 <= key <= 23:
            return
        raise CBOREncodeError(f"map key {key!r} is not in -24..23 (its encoding would be wider than one byte)")
    if t is str:
        if len(key.encode("utf-8")) < 24:
            return
        raise CBOREncodeError(f"map key {key[:30]!r}... is 24 bytes or longer")
    raise CBOREncodeError(f"map key {key!r} of type {t.__name__} is not allowed (int or text only)")


def _check(obj: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise CBOREncodeError("nesting deeper than %d" % MAX_DEPTH)
    t = type(obj)
    if t in _SCALARS:
        return
    if t is list or t is tuple:
        for item in obj:
            if type(item) not in _SCALARS:
                _check(item, depth + 1)
        return
    if t is dict:
        if len(obj) == 1:
            (key,) = obj
            if type(key) not in (int, str):
                raise CBOREncodeError(f"map key {key!r} of type {type(key).__name__} is not allowed (int or text only)")
        else:
            for key in obj:
                _check_key(key)
        for item in obj.values():
            if type(item) not in _SCALARS:
                _check(item, depth + 1)
        return
    if t is cbor2.CBORTag:
        _check(obj.value, depth + 1)
        return
    raise CBOREncodeError(f"cannot encode a value of type {t.__name__} deterministically")


def encode(obj: Any) -> bytes:
    """Deterministic CBOR of `obj` (None, bool, int, float, str, bytes, list/tuple, dict, CBORTag).

    Raises CBOREncodeError for a type or map key outside the profile.
    """
    _check(obj)
    try:
        return _dumps(obj, canonical=True)
    except (cbor2.CBOREncodeError, ValueError, TypeError, OverflowError) as exc:  # pragma: no cover - guarded above
        raise CBOREncodeError(str(exc)) from exc


def decode(data: bytes, *, what: str = "CBOR data") -> Any:
    """Decode one CBOR data item that fills `data` exactly.

    Rejects indefinite lengths, duplicate map keys, nesting deeper than
    MAX_DEPTH and trailing bytes. Every failure is a MalformedBlock naming
    `what`; never a cbor2, Index or Type error.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedBlock(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise MalformedBlock(f"{what}: empty")
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            fp, allow_indefinite=False, allow_duplicate_keys=False, max_depth=MAX_DEPTH
        )
        obj = decoder.decode()
        end = fp.tell()
    except MalformedBlock:
        raise
    except Exception as exc:  # cbor2 raises several types, some from hooks; all mean "not for us"
        raise MalformedBlock(f"{what}: not valid CBOR ({exc})") from None
    if end != len(data):
        raise MalformedBlock(f"{what}: {len(data) - end} trailing bytes after the CBOR item")
    return obj


def is_deterministic(data: bytes) -> bool:
    """True when `data` is one CBOR item that re-encodes to exactly the same bytes.

    That is deterministic encoding (RFC 8949 §4.2.1) within our key profile;
    anything malformed, non-preferred, unsorted or outside the profile is False.
    """
    try:
        obj = decode(data)
        return _dumps_strict(obj) == bytes(data)
    except Exception:
        return False


def _dumps_strict(obj: Any) -> bytes:
    _check(_thaw(obj))
    return _dumps(obj, canonical=True)


def _thaw(obj: Any) -> Any:
    """cbor2 decodes tag contents and map keys immutably (tuple, frozendict): map them back for _check."""
    t = type(obj)
    if t in _SCALARS:
        return obj
    if t is list or t is tuple:
        return [_thaw(x) for x in obj]
    if isinstance(obj, cbor2.CBORTag):
        return cbor2.CBORTag(obj.tag, _thaw(obj.value))
    if hasattr(obj, "items"):
        out = {}
        for key, value in obj.items():
            if type(key) not in (int, str):
                raise CBOREncodeError(f"map key of type {type(key).__name__} is not allowed")
            out[key] = _thaw(value)
        return out
    return obj
