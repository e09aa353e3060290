"""One error type for bad user input, and the checks that raise it.

Every message names the offending setting, its value and what is allowed, so a bad
override fails in one line instead of a stack trace from deep inside torch.
"""
from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
    """A setting has a value nsl_lab cannot use."""


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{name}={value!r} is not supported; allowed: {choices}")
    return value


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Any:
    """Checks ``low <= value <= high`` (bounds optional, each inclusive or not)."""
    def describe() -> str:
        left = "" if low is None else f"{low} {'<=' if low_inclusive else '<'} "
        right = "" if high is None else f" {'<=' if high_inclusive else '<'} {high}"
        return f"{left}{name}{right}"

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r} must be a number with {describe()}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high or value != value:  # value != value catches NaN
        raise ConfigError(f"{name}={value!r} is out of range; allowed: {describe()}")
    return value


def check_integer(name: str, value: Any, minimum: int) -> int:
    """Checks that ``value`` is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is not allowed; it must be an integer >= {minimum}")
    return value
