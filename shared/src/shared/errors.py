"""User errors: the mistakes a user can fix (a bad config value, an unknown name, a missing or malformed
dataset, a checkpoint of another model), as opposed to bugs.

Every package raises these for such mistakes, and :func:`shared.cli.entry` turns them into one line on
stderr, ``error: <what>; <how to fix>``, with exit status 2 and no traceback (``REPRO_DEBUG=1`` shows
it). Anything else keeps its traceback: an unknown error is a bug to report, not a message to read.

Validate early: call :func:`check_choice` / :func:`check_range` at the top of ``fit()``, before any
data is built or any step is trained, so that a typo costs seconds, not a training cycle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "UserError",
    "check_choice",
    "check_range",
    "require",
]


class UserError(Exception):
    """A mistake the user can fix. The message says what is wrong and how to fix it, in one line."""


class ConfigError(UserError, ValueError):
    """An invalid config value: an unknown registry name, a value out of range, an impossible combination."""


class DatasetFormatError(UserError, ValueError):
    """A dataset is on disk but unreadable or malformed (the message names the file)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe or from another model."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset (or part of it) is not on disk where a reader looked for it.

    The message has three parts: what was expected, where, and how to get it::

        CIFAR-10 not found: expected files data_batch_1, ... under /data/cifar10/cifar-10-batches-py
        (missing: data_batch_3); how to get it: ...

    Attributes:
        dataset: human-readable dataset name, e.g. ``"CIFAR-10"``.
        expected: what the reader expected to find (files, layout).
        where: the directory it looked in.
        how_to_get: instructions to obtain the data.
    """

    def __init__(self, dataset: str, expected: str, where: Any, how_to_get: str) -> None:
        from pathlib import Path

        from shared.data.root import DATA_ENV_VAR

        self.dataset = dataset
        self.expected = expected
        self.where = Path(where)
        self.how_to_get = how_to_get
        message = (
            f"{dataset} not found: expected {expected} under {self.where}; "
            f"how to get it: {how_to_get} "
            f"(real datasets are read from ${DATA_ENV_VAR}, default ./data; nothing is downloaded at run time)"
        )
        super().__init__(message)

    def __reduce__(self):  # keep the error picklable (e.g. across DataLoader workers)
        return (type(self), (self.dataset, self.expected, self.where, self.how_to_get))


def _names(choices: Iterable[Any]) -> str:
    return ", ".join(str(c) for c in choices)


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> Any:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``; return ``value``.

    >>> check_choice("strategy", "entropy", ["random", "entropy"])
    'entropy'
    """
    choices = list(choices)
    if value not in choices:
        close = _closest(value, choices)
        hint = f" (did you mean {close!r}?)" if close is not None else ""
        raise ConfigError(f"{key}={value!r} is not a known name{hint}; use one of: {_names(choices)}")
    return value


def check_range(key: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                lo_inclusive: bool = True, hi_inclusive: bool = True, integer: bool = False,
                allow_none: bool = False) -> Any:
    """Raise :class:`ConfigError` unless ``lo <= value <= hi`` (bounds optional, inclusivity per bound);
    return ``value``. ``integer=True`` also requires an int; ``allow_none`` accepts ``None``."""
    if value is None and allow_none:
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{key}={value!r} must be a number; set {key} to a value in {_interval(lo, hi, lo_inclusive, hi_inclusive)}")
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        raise ConfigError(f"{key}={value!r} must be an integer; set {key} to an integer in {_interval(lo, hi, lo_inclusive, hi_inclusive)}")
    bad = (lo is not None and (value < lo or (value == lo and not lo_inclusive))) or \
          (hi is not None and (value > hi or (value == hi and not hi_inclusive)))
    if bad:
        raise ConfigError(f"{key}={value!r} is out of range; set {key} to a value in {_interval(lo, hi, lo_inclusive, hi_inclusive)}")
    return value


def require(condition: bool, what: str, fix: str) -> None:
    """Raise ``ConfigError("<what>; <fix>")`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{what}; {fix}")


def _interval(lo, hi, lo_inc, hi_inc) -> str:
    left = ("[" if lo_inc else "(") + ("-inf" if lo is None else f"{lo:g}")
    right = ("inf" if hi is None else f"{hi:g}") + ("]" if hi_inc else ")")
    return f"{left}, {right}"


def _closest(value: Any, choices: list[Any]) -> Any:
    import difflib

    if not isinstance(value, str):
        return None
    names = [c for c in choices if isinstance(c, str)]
    match = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
    return match[0] if match else None
