"""Precision: round a value to a multiple of the quantum the owner allows.

`quantize(42.34, 0.1)` is `42.3`, never `42.300000000000004`: the result is
rounded to the quantum's own decimals. `quantize(1234, 50)` is the int `1250`
(int quanta keep ints ints); a float quantum or a float value gives a float.
Halfway values go to the even multiple (Python's `round`), for ints exactly
(integer arithmetic), for floats as the float division lands.

Values that are not numbers (text, enumerations, and bools, which are not
measurements) and non-finite floats are returned unchanged.

On the hot path build the quantizer once and call it per sample:
`q = quantizer(0.1); q(value)`.
"""

from __future__ import annotations

import math
from decimal import Decimal
from functools import lru_cache
from typing import Any, Callable

__all__ = ["quantize", "quantizer", "quantum_decimals"]


def quantum_decimals(quantum: float | int) -> int:
    """Decimal places of a quantum as written: 0.1 -> 1, 0.25 -> 2, 1e-7 -> 7, 5 -> 0, 1e3 -> -3."""
    exp = Decimal(repr(quantum)).normalize().as_tuple().exponent
    return -int(exp)


def _check(quantum: Any) -> None:
    if type(quantum) not in (int, float) or not math.isfinite(quantum) or quantum <= 0:
        raise ValueError(f"a quantum must be a positive finite number, not {quantum!r}")


@lru_cache(maxsize=256)
def quantizer(quantum: float | int) -> Callable[[Any], Any]:
    """A function rounding one value to the nearest multiple of `quantum`."""
    _check(quantum)
    int_quantum = type(quantum) is int
    decimals = quantum_decimals(quantum)
    fquantum = float(quantum)
    isfinite = math.isfinite

    def q(value: Any) -> Any:
        tv = type(value)
        if tv is int:
            if int_quantum:
                n, r = divmod(value, quantum)
                if 2 * r > quantum or (2 * r == quantum and n & 1):
                    n += 1
                return n * quantum
            return round(round(value / fquantum) * fquantum, decimals)
        if tv is float:
            if not isfinite(value):
                return value
            return round(round(value / fquantum) * fquantum, decimals)
        return value  # text, bool, None, ...: not a measurement

    q.__doc__ = f"Round to the nearest multiple of {quantum!r}."
    return q


def quantize(value: Any, quantum: float | int) -> Any:
    """`value` rounded to the nearest multiple of `quantum` (see the module docstring)."""
    return quantizer(quantum)(value)
