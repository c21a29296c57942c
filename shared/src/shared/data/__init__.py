"""Data for the reproductions: real-dataset readers, seeded split helpers, and the procedural
synthetic generator that every package's embedded default runs on.

* :mod:`shared.data.root` -- ``data_root()`` (``$REPRO_DATA``, default ``./data``) and
  :class:`DatasetNotFoundError`.
* :mod:`shared.data.readers` -- ``image_folder``, ``cifar``, ``svhn`` on the publishers' layouts.
* :mod:`shared.data.splits` -- train/val/test, k-shot, long-tail and label-noise index helpers.
* :mod:`shared.data.synthetic` -- ``generate`` / ``SyntheticImageDataset`` with domains.
"""

from .readers import cifar, image_folder, svhn
from .root import DATA_ENV_VAR, DatasetNotFoundError, data_root
from .splits import (
    CIFAR10_ASYMMETRIC_MAP,
    inject_label_noise,
    k_shot_indices,
    long_tail_counts,
    long_tail_indices,
    train_val_test_split,
)
from .synthetic import (
    DOMAIN_PRESETS,
    MAX_CLASSES,
    SyntheticDomain,
    SyntheticImageDataset,
    class_attributes,
    domain_from_seed,
    generate,
    get_domain,
    list_domains,
    mask_boxes,
)

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "DATA_ENV_VAR",
    "DOMAIN_PRESETS",
    "MAX_CLASSES",
    "DatasetNotFoundError",
    "SyntheticDomain",
    "SyntheticImageDataset",
    "cifar",
    "class_attributes",
    "data_root",
    "domain_from_seed",
    "generate",
    "get_domain",
    "image_folder",
    "inject_label_noise",
    "k_shot_indices",
    "list_domains",
    "long_tail_counts",
    "long_tail_indices",
    "mask_boxes",
    "svhn",
    "train_val_test_split",
]
