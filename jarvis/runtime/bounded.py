"""Size-checked arithmetic for the operations `compiler/bounds.py` routes here.

Each helper computes exactly what Python would, unless the result would be larger
than the limits below, in which case it raises LimitExceeded("memory", ...) before
doing any of the work. `str()` of a huge int is bounded by Python itself
(`sys.set_int_max_str_digits`), which the runtime keeps at its default.
"""

from __future__ import annotations

import operator
import sys
from typing import Any

from jarvis.runtime.errors import LimitExceeded

MAX_INT_BITS = 1 << 20
"""The largest int a program may build: about 315,000 decimal digits."""

MAX_ITEMS = 50_000_000
"""The longest str, list or tuple a repetition may build."""

_SEQUENCES = (str, list, tuple)

sys.set_int_max_str_digits(4300)


def _too_big(what: str) -> LimitExceeded:
    return LimitExceeded("memory", what)


def _check_int_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise _too_big(f"the result would have about {bits:,} bits; the limit is "
                       f"{MAX_INT_BITS:,}")


def _check_repeat(sequence: Any, times: Any) -> None:
    if type(times) in (int, bool) and times > 0:
        total = len(sequence) * times
        if total > MAX_ITEMS:
            raise _too_big(f"repeating a {type(sequence).__name__} of {len(sequence):,} "
                           f"items {times:,} times; the limit is {MAX_ITEMS:,} items")


def check_mul(a: Any, b: Any) -> None:
    ta, tb = type(a), type(b)
    if ta is int and tb is int:
        _check_int_bits(a.bit_length() + b.bit_length())
    elif ta in _SEQUENCES:
        _check_repeat(a, b)
    elif tb in _SEQUENCES:
        _check_repeat(b, a)


def check_pow(base: Any, exponent: Any) -> None:
    if type(base) is int and type(exponent) is int and exponent > 0:
        bits = base.bit_length()
        if bits > 1:
            _check_int_bits((bits - 1) * exponent)


def check_lshift(value: Any, count: Any) -> None:
    if type(value) is int and type(count) is int and value and count > 0:
        _check_int_bits(value.bit_length() + count)


def mul(a: Any, b: Any) -> Any:
    check_mul(a, b)
    return a * b


def imul(a: Any, b: Any) -> Any:
    check_mul(a, b)
    return operator.imul(a, b)  # type: ignore[no-untyped-call]


def power(base: Any, exponent: Any, modulus: Any = None) -> Any:
    if modulus is None:
        check_pow(base, exponent)
        return base ** exponent
    return pow(base, exponent, modulus)


def ipow(base: Any, exponent: Any) -> Any:
    check_pow(base, exponent)
    return operator.ipow(base, exponent)  # type: ignore[no-untyped-call]


def lshift(value: Any, count: Any) -> Any:
    check_lshift(value, count)
    return value << count


def ilshift(value: Any, count: Any) -> Any:
    check_lshift(value, count)
    return operator.ilshift(value, count)  # type: ignore[no-untyped-call]


def helpers() -> dict[str, Any]:
    """The names the bounded program calls, for its namespace (and `pow` itself)."""
    return {
        "_jv_mul": mul, "_jv_imul": imul, "_jv_pow": power, "_jv_ipow": ipow,
        "_jv_lshift": lshift, "_jv_ilshift": ilshift, "pow": power,
    }
