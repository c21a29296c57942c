"""Build the training set and the evaluation set a config asks for.

* ``data=synthetic`` (the embedded default): :mod:`ffwm.synthetic` pairs, train and test identities
  disjoint, cached under ``cache_dir``; the test set carries the illumination-consistent target.
* ``data=multipie``: :class:`ffwm.readers.MultiPIEPairs` (train split; the test split is evaluated by
  rank-1 in :mod:`ffwm.evaluate_real`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from shared.errors import ConfigError
from torch.utils.data import Dataset

from .readers import MultiPIEPairs
from .synthetic import PairDataset, load_pairs, pair_config_from


@dataclass
class Data:
    train: Dataset
    test_arrays: dict[str, np.ndarray] | None
    description: str


def build_data(cfg: Any) -> Data:
    d = cfg.data
    if d.name == "synthetic":
        train = load_pairs(pair_config_from(d, "train"), cfg.cache_dir)
        test = load_pairs(pair_config_from(d, "test"), cfg.cache_dir)
        desc = (f"synthetic pairs ({d.n_train} train / {d.n_test} test, {d.image_size} px, |yaw| in {list(d.yaws)}, "
                f"ground-truth light '{d.gt_light}')")
        return Data(PairDataset(train, flip_double=bool(d.flip_double)), test, desc)
    if d.name == "multipie":
        train = MultiPIEPairs(d.root, "train", int(d.image_size))
        return Data(train, None, f"Multi-PIE train split at {d.root} ({len(train)} pairs)")
    raise ConfigError(f"data.name={d.name!r} is not known; use synthetic or multipie")
