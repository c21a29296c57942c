"""Where real datasets live on disk, and the one error raised when one is missing.

Real datasets are never downloaded at run time. They are read from ``data_root()``
(the ``REPRO_DATA`` environment variable, default ``./data``), in the layout their
publishers ship. When a dataset is absent, readers raise :class:`DatasetNotFoundError`
whose message says what was expected, where, and how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV_VAR", "DatasetNotFoundError", "data_root"]

from shared.errors import DatasetNotFoundError  # noqa: E402  (defined with the other user errors)

#: Environment variable that points at the directory holding real datasets.
DATA_ENV_VAR = "REPRO_DATA"


def data_root(*parts: str | os.PathLike[str]) -> Path:
    """Return the data directory, optionally joined with ``parts``.

    The directory is ``$REPRO_DATA`` when that variable is set and non-empty, else the
    relative path ``data`` (resolved against the current working directory when used,
    like Hydra's ``${oc.env:REPRO_DATA,data}``). ``~`` is expanded. The directory is not
    created and need not exist.

    >>> data_root("cifar10")  # doctest: +SKIP
    PosixPath('data/cifar10')
    """
    base = os.environ.get(DATA_ENV_VAR) or "data"
    return Path(base).expanduser().joinpath(*parts)
