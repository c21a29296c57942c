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


class DatasetNotFoundError(FileNotFoundError):
    """A dataset (or part of it) is not on disk where a reader looked for it.

    The message has three parts: what was expected, where, and how to get it::

        CIFAR-10 not found: expected files data_batch_1, ... under
        /data/cifar10/cifar-10-batches-py (missing: data_batch_3). How to get it: ...

    Attributes:
        dataset: human-readable dataset name, e.g. ``"CIFAR-10"``.
        expected: what the reader expected to find (files, layout).
        where: the directory it looked in.
        how_to_get: instructions to obtain the data.
    """

    def __init__(self, dataset: str, expected: str, where: str | os.PathLike[str], how_to_get: str) -> None:
        self.dataset = dataset
        self.expected = expected
        self.where = Path(where)
        self.how_to_get = how_to_get
        message = (
            f"{dataset} not found: expected {expected} under {self.where}. "
            f"How to get it: {how_to_get} "
            f"(real datasets are read from ${DATA_ENV_VAR}, default ./data; nothing is downloaded at run time)"
        )
        super().__init__(message)

    def __reduce__(self):  # keep the error picklable (e.g. across DataLoader workers)
        return (type(self), (self.dataset, self.expected, self.where, self.how_to_get))
