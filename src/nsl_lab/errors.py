"""Errors for bad user input, and the checks that raise them.

Every message names the offending setting, its value and what is allowed, so a bad
override fails in one line instead of a stack trace from deep inside torch. A component
names its settings locally (``multiplier``); :func:`config_scope` prefixes them with the
config path the component was built from (``regularizer.graph_unlabeled.multiplier``).
"""
from __future__ import annotations

import contextlib
import numbers
import os
import re
import sys
import typing
from typing import Any, Iterator


class NslLabError(Exception):
    """A run cannot go on for a reason the user can act on; printed as one line."""


class ConfigError(NslLabError, ValueError):
    """A setting has a value nsl_lab cannot use.

    Args:
        message: the whole line, naming the setting.
        setting: the setting's name as the message spells it, so that :meth:`scoped` can
            put the config path in front of it.
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting

    def scoped(self, prefix: str) -> "ConfigError":
        """This error with ``prefix`` before every mention of its setting (once)."""
        if not self.setting or self.setting.startswith(prefix):
            return self
        pattern = rf"(?<![\w.]){re.escape(self.setting)}(?![\w])"
        message = re.sub(pattern, prefix + self.setting, str(self))
        return ConfigError(message, prefix + self.setting)


class TrainingDiverged(NslLabError):
    """The loss became non-finite or exploded: the run stopped, keeping what it wrote."""


@contextlib.contextmanager
def config_scope(prefix: str) -> Iterator[None]:
    """Errors raised inside name their settings with ``prefix`` (e.g. ``regularizer.graph.``).

    Hydra's ``instantiate`` wraps constructor errors; the :class:`ConfigError` behind them
    is found and re-raised scoped, without the wrapper. A library's constructor (Lightning's
    ``Trainer``, a torch optimizer) rejecting a value becomes a :class:`ConfigError` naming
    ``prefix``; an error raised inside nsl_lab's own code stays as it is (a bug, not a setting).
    """
    try:
        yield
    except Exception as error:  # noqa: BLE001 - only ConfigErrors and libraries' value errors are rewritten
        found = find_error(error, ConfigError)
        if found is not None:
            raise found.scoped(prefix) from None
        cause = error.__cause__
        rejected_value = isinstance(cause, (ValueError, TypeError)) or type(cause).__name__ == "MisconfigurationException"
        if type(error).__name__ == "InstantiationException" and rejected_value and not raised_in_nsl_lab(cause):
            name = prefix.rstrip(".")
            raise ConfigError(f"{name}: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}",
                              name) from None
        raise


def raised_in_nsl_lab(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is in nsl_lab's own source."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and f"{os.sep}nsl_lab{os.sep}" in frame.tb_frame.f_code.co_filename


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """A command's body: an nsl_lab error raised inside (found behind wrappers such as Hydra's or a
    worker pool's) ends the command with one ``nsl_lab: error: ...`` line and exit code 2; any
    other error keeps its traceback (a bug, not bad input)."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - only nsl_lab's own errors are shortened
        known = find_error(error, NslLabError)
        if known is None:
            raise
        print(f"nsl_lab: error: {known}", file=sys.stderr)
        sys.exit(2)


def find_error(error: BaseException | None, kind: type[BaseException] = NslLabError) -> Any:
    """The exception of type ``kind`` behind ``error`` (Hydra wraps errors raised in constructors)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def choices(allowed: Any) -> tuple[Any, ...]:
    """The values of a ``Literal[...]`` type, or the items of any iterable (a mapping's keys)."""
    if typing.get_origin(allowed) is typing.Literal:
        return typing.get_args(allowed)
    return tuple(allowed)


def check_choice(name: str, value: Any, allowed: Any) -> Any:
    """Checks that ``value`` is one of ``allowed`` (a ``Literal`` type or an iterable)."""
    options = choices(allowed)
    if value not in options:
        listed = ", ".join(repr(a) for a in options)
        raise ConfigError(f"{name}={value!r} is not supported; allowed: {listed}", name)
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
        raise ConfigError(f"{name}={value!r} must be a number with {describe()}", name)
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high or value != value:  # value != value catches NaN
        raise ConfigError(f"{name}={value!r} is out of range; allowed: {describe()}", name)
    return value


def check_flag(name: str, value: Any) -> bool:
    """Checks that ``value`` is ``true`` or ``false`` (a string such as ``'off'`` would be truthy)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not allowed; it must be true or false", name)
    return value


def check_overrides_list(overrides: Any, example: str) -> list[str]:
    """Checks that ``overrides`` is a list (or tuple) of ``key=value`` strings: a single string
    would otherwise be read character by character."""
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"overrides={overrides!r} must be a list of 'key=value' strings, e.g. [{example!r}]",
                          "overrides")
    return list(overrides)


def check_integer(name: str, value: Any, minimum: int, *, optional: bool = False) -> Any:
    """Checks that ``value`` is an integer (not a bool, not a float; numpy's integers count)
    >= ``minimum`` (or ``None`` when ``optional``); returns it as a Python ``int``."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if optional else "")
        raise ConfigError(f"{name}={value!r} is not allowed; it must be {allowed}", name)
    return int(value)
