"""Checks of single config values, shared by the configs that own them: each ``ValueError`` names the
key, the value and what is allowed (``optim.eps=-1.0 must be a finite number > 0``). A bool is not a
number here, although Python counts it as an int."""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(key: str, value: Any, low: int | None = 1, high: int | None = None, null: str | None = None) -> None:
    """``value`` is an integer in ``[low, high]`` (either bound optional), or None when ``null`` says
    what None means."""
    if value is None and null is not None:
        return
    if is_int(value) and (low is None or value >= low) and (high is None or value <= high):
        return
    if high is None:
        allowed = "an integer" if low is None else f"an integer >= {low}"
    else:
        allowed = f"an integer in [{low}, {high}]"
    raise ValueError(f"{key}={value!r} must be {allowed}" + (f" or null ({null})" if null is not None else ""))


def check_real(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    null: str | None = None,
) -> None:
    """``value`` is a finite number within the bounds (open or closed), or None when ``null`` says what
    None means."""
    if value is None and null is not None:
        return
    ok = is_real(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    if low is not None and high is not None:
        allowed = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"a finite number {'>' if low_open else '>='} {low}"
    elif high is not None:
        allowed = f"a finite number {'<' if high_open else '<='} {high}"
    else:
        allowed = "a finite number"
    raise ValueError(f"{key}={value!r} must be {allowed}" + (f" or null ({null})" if null is not None else ""))


def check_bool(key: str, value: Any) -> None:
    """``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{key}={value!r} must be true or false")
