"""Readers for real datasets in the exact on-disk layout their publishers ship.

Every reader wraps a torchvision dataset class with ``download=False`` semantics (nothing
is ever fetched) and turns the two ways things go wrong into one clear error each:

* the data is missing  -> :class:`~shared.data.root.DatasetNotFoundError` (a
  ``FileNotFoundError``) saying which files were expected, where, and how to get them;
* the data is there but unreadable or malformed -> ``ValueError`` naming the file.

Layouts (``root`` is the directory you pass, e.g. ``data_root("cifar10")``)::

    image_folder   root/<class_name>/<image>.jpg            (any torchvision image extension)
    cifar10        root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    cifar100       root/cifar-100-python/{train, test, meta}
    svhn           root/{train,test,extra}_32x32.mat

torchvision verifies CIFAR/SVHN md5 sums even when ``download=False``; these readers only
check that the files exist unless ``verify_checksums=True`` (so small fixtures and
re-packed copies load), and they validate the content they read instead.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100, SVHN, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import check_integrity
from torchvision.datasets.vision import VisionDataset

from .root import DatasetNotFoundError
from shared.errors import ConfigError, DatasetFormatError

__all__ = ["CIFAR_NAMES", "SVHN_SPLITS", "CheckedImageFolder", "check_files_exist", "cifar", "image_folder",
           "image_is_readable", "load_image", "svhn"]

Transform = Callable[[Any], Any] | None
PathLike = str | os.PathLike[str]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
CIFAR_NAMES = ("cifar10", "cifar100")
SVHN_SPLITS = ("train", "test", "extra")


# --------------------------------------------------------------------------- ImageFolder


def image_folder(root: PathLike, transform: Transform = None, target_transform: Transform = None,
                 skip_unreadable: bool = False) -> ImageFolder:
    """Read an image-classification folder tree with torchvision's ``ImageFolder``.

    Expected layout: ``root/<class_name>/<image>.jpg`` (one sub-directory per class, class
    indices assigned in sorted order of the sub-directory names; any of torchvision's image
    extensions ``.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp``).

    An image that cannot be decoded raises :class:`DatasetFormatError` naming the file when it is read;
    ``skip_unreadable=True`` instead decodes every image once up front and drops the bad ones (logged).

    Raises:
        DatasetNotFoundError: ``root`` is missing, is not a directory, has no class
            sub-directories, or a class sub-directory holds no image.
    """
    root = Path(root)
    layout = f"the layout {root}/<class>/<img>.jpg (one sub-directory per class, each holding images)"
    how = "put one folder per class under the root, each containing that class's images."

    def not_found(problem: str) -> DatasetNotFoundError:
        return DatasetNotFoundError("Image folder dataset", f"{layout}; {problem}", root, how)

    if not root.exists():
        raise not_found("the root directory does not exist")
    if not root.is_dir():
        raise not_found("the root is not a directory")
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise not_found("found no class sub-directories")
    empty = [name for name in class_dirs if not any(_is_image(p) for p in (root / name).rglob("*"))]
    if empty:
        raise not_found(f"class folder(s) with no image files: {', '.join(empty)}")
    return CheckedImageFolder(str(root), transform=transform, target_transform=target_transform,
                              skip_unreadable=skip_unreadable)


def load_image(path: PathLike, mode: str = "RGB"):
    """Open an image with PIL and convert it to ``mode``; an unreadable, truncated or zero-byte file raises
    :class:`DatasetFormatError` naming the file (instead of PIL's raw error in the middle of an epoch)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert(mode)
    except FileNotFoundError as err:
        raise DatasetNotFoundError("Image", f"the file {path.name}", path.parent,
                                   "restore the file, or rebuild the file list of this dataset") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        size = path.stat().st_size if path.exists() else 0
        what = "is empty (0 bytes)" if size == 0 else f"cannot be decoded ({type(err).__name__}: {err})"
        raise DatasetFormatError(f"image {path} {what}; replace or delete the file (readers that support it "
                                 "can skip such files with skip_unreadable=True)") from err


def image_is_readable(path: PathLike) -> bool:
    """True when PIL can fully decode ``path`` (used to skip bad files up front)."""
    try:
        load_image(path)
        return True
    except (DatasetFormatError, DatasetNotFoundError):
        return False


def check_files_exist(paths, list_file: PathLike, dataset: str, how_to_get: str) -> None:
    """Raise :class:`DatasetNotFoundError` when any file named by a split/list file is missing (checked when
    the dataset is built, not when a worker first reads it)."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatasetNotFoundError(dataset, f"the {len(missing)} file(s) listed in {Path(list_file).name} "
                                   f"(missing: {shown})", Path(list_file).parent, how_to_get)


class CheckedImageFolder(ImageFolder):
    """torchvision ``ImageFolder`` whose loader names the file when an image cannot be read.

    ``skip_unreadable=True`` decodes every image once when the dataset is built and drops the ones that fail,
    logging how many (and which, up to ten) were skipped."""

    def __init__(self, root: PathLike, transform: Transform = None, target_transform: Transform = None,
                 skip_unreadable: bool = False) -> None:
        super().__init__(str(root), transform=transform, target_transform=target_transform, loader=load_image)
        self.skipped: list[str] = []
        if skip_unreadable:
            import logging

            keep = [(p, t) for p, t in self.samples if image_is_readable(p)]
            self.skipped = sorted({p for p, _ in self.samples} - {p for p, _ in keep})
            self.samples = self.imgs = keep
            self.targets = [t for _, t in keep]
            if self.skipped:
                logging.getLogger("repro").warning(
                    "skipped %d unreadable image(s) under %s: %s%s", len(self.skipped), root,
                    ", ".join(self.skipped[:10]), " ..." if len(self.skipped) > 10 else "")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS and path.is_file()


# --------------------------------------------------------------------------------- CIFAR


def _decode(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _load_cifar_pickle(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    """Unpickle one CIFAR file and return it with ``str`` keys.

    The official files are Python 2 pickles; loaded with ``encoding="latin1"`` their keys
    are ``str``, while files written from Python 3 (or loaded with ``encoding="bytes"``)
    have ``bytes`` keys such as ``b"data"``. Both are accepted.
    """
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:  # pickle raises many types on garbage (UnpicklingError, EOFError, ...)
        raise DatasetFormatError(f"Could not read CIFAR file {path}: not a valid pickle ({type(err).__name__}: {err}). "
                         f"Re-extract the archive from {CIFAR_URL}.") from err
    if not isinstance(entry, dict):
        raise DatasetFormatError(f"Malformed CIFAR file {path}: expected a pickled dict, got {type(entry).__name__}.")
    entry = {_decode(k): v for k, v in entry.items()}
    missing = [k for k in required if k not in entry]
    if missing:
        raise DatasetFormatError(f"Malformed CIFAR file {path}: missing key(s) {missing}; found {sorted(entry)}.")
    return entry


def _cifar_md5_check(path: Path, md5: str) -> None:
    if not check_integrity(str(path), md5):
        raise DatasetFormatError(f"Checksum mismatch for CIFAR file {path}: expected md5 {md5}. The file is corrupt or "
                         f"not the official release; re-download it from {CIFAR_URL} (or pass verify_checksums=False).")


class _CheckedCIFARMixin:
    """Shared loading logic for CIFAR-10/100: existence checks, clear errors, no md5 by default.

    Keeps torchvision's class attributes (``base_folder``, ``train_list``, ``meta``...) and its
    ``__getitem__``/``__len__``, so the result is a genuine ``CIFAR10``/``CIFAR100``.
    """

    display_name: str
    archive: str
    base_folder: str
    train_list: list[list[str]]
    test_list: list[list[str]]
    meta: dict[str, str]

    def __init__(self, root: PathLike, train: bool = True, transform: Transform = None,
                 target_transform: Transform = None, verify_checksums: bool = False) -> None:
        VisionDataset.__init__(self, str(root), transform=transform, target_transform=target_transform)
        self.train = train
        self.verify_checksums = verify_checksums
        folder = Path(self.root) / self.base_folder
        split_files = self.train_list if train else self.test_list
        needed = [name for name, _ in split_files] + [self.meta["filename"]]
        missing = [name for name in needed if not (folder / name).is_file()]
        if missing:
            raise DatasetNotFoundError(
                self.display_name,
                f"files {', '.join(needed)} (missing: {', '.join(missing)})",
                folder,
                f"download {self.archive} from {CIFAR_URL} and extract it into {Path(self.root)} "
                f"(it creates {self.base_folder}/).",
            )
        if verify_checksums:
            for name, md5 in [*split_files, [self.meta["filename"], self.meta["md5"]]]:
                _cifar_md5_check(folder / name, md5)

        data, targets = [], []
        for name, _ in split_files:
            path = folder / name
            entry = _load_cifar_pickle(path, required=("data",))
            label_key = "labels" if "labels" in entry else "fine_labels"
            if label_key not in entry:
                raise DatasetFormatError(f"Malformed CIFAR file {path}: missing key 'labels' or 'fine_labels'; "
                                 f"found {sorted(entry)}.")
            array = np.asarray(entry["data"])
            labels = [int(y) for y in entry[label_key]]
            if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != 3 * 32 * 32:
                raise DatasetFormatError(f"Malformed CIFAR file {path}: 'data' must be a uint8 array of shape (N, 3072), "
                                 f"got {array.dtype} {array.shape}.")
            if len(labels) != len(array):
                raise DatasetFormatError(f"Malformed CIFAR file {path}: {len(array)} images but {len(labels)} labels.")
            data.append(array)
            targets.extend(labels)
        # rows are [1024 red | 1024 green | 1024 blue] in row-major order -> (N, 32, 32, 3)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets = targets
        self._load_meta()
        if targets and not 0 <= min(targets) <= max(targets) < len(self.classes):
            raise DatasetFormatError(f"Malformed CIFAR data in {folder}: labels must lie in [0, {len(self.classes)}), "
                             f"got range [{min(targets)}, {max(targets)}].")

    def _check_integrity(self) -> bool:
        """Existence of every split file (md5 as well when ``verify_checksums=True``)."""
        folder = Path(self.root) / self.base_folder
        for name, md5 in self.train_list + self.test_list:
            path = folder / name
            if not path.is_file() or (self.verify_checksums and not check_integrity(str(path), md5)):
                return False
        return True

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        entry = _load_cifar_pickle(path, required=(self.meta["key"],))
        self.classes = [_decode(name) for name in entry[self.meta["key"]]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class CheckedCIFAR10(_CheckedCIFARMixin, CIFAR10):
    """torchvision ``CIFAR10`` that never downloads, checks md5 only on request, and fails clearly."""

    display_name = "CIFAR-10"
    archive = "cifar-10-python.tar.gz"


class CheckedCIFAR100(_CheckedCIFARMixin, CIFAR100):
    """torchvision ``CIFAR100`` (fine labels) that never downloads, checks md5 only on request, and fails clearly."""

    display_name = "CIFAR-100"
    archive = "cifar-100-python.tar.gz"


def cifar(root: PathLike, name: str = "cifar10", train: bool = True, transform: Transform = None,
          verify_checksums: bool = False, target_transform: Transform = None) -> CIFAR10:
    """Read CIFAR-10 or CIFAR-100 (python version) from ``root``.

    Args:
        root: directory that contains ``cifar-10-batches-py/`` (``name="cifar10"``) or
            ``cifar-100-python/`` (``name="cifar100"``), i.e. where the official archive
            was extracted.
        name: ``"cifar10"`` or ``"cifar100"`` (CIFAR-100 yields the 100 fine labels).
        train: the 50k training split if True, else the 10k test split.
        transform: applied to the PIL image, as in torchvision.
        verify_checksums: also verify the official md5 sums (off by default: existence only).
        target_transform: applied to the integer label.

    Returns:
        A torchvision ``CIFAR10``/``CIFAR100`` instance (``.data`` is ``(N, 32, 32, 3)``
        uint8, ``.targets`` a list of ints, ``.classes`` the label names).

    Raises:
        DatasetNotFoundError: a file of the requested split (or the meta file) is missing.
        ValueError: a file is not a valid pickle, lacks the expected keys/shapes, or fails
            its checksum when ``verify_checksums=True``; the message names the file.
    """
    classes = {"cifar10": CheckedCIFAR10, "cifar100": CheckedCIFAR100}
    if name not in classes:
        raise ConfigError(f"Unknown CIFAR variant {name!r}; expected one of {CIFAR_NAMES}.")
    return classes[name](root, train=train, transform=transform, target_transform=target_transform,
                         verify_checksums=verify_checksums)


# ---------------------------------------------------------------------------------- SVHN


class CheckedSVHN(SVHN):
    """torchvision ``SVHN`` that never downloads, checks md5 only on request, and fails clearly.

    As in torchvision, the label ``10`` of the ``.mat`` files (digit 0) becomes ``0``.
    """

    def __init__(self, root: PathLike, split: str = "train", transform: Transform = None,
                 target_transform: Transform = None, verify_checksums: bool = False) -> None:
        if split not in self.split_list:
            raise ConfigError(f"Unknown SVHN split {split!r}; expected one of {SVHN_SPLITS}.")
        VisionDataset.__init__(self, str(root), transform=transform, target_transform=target_transform)
        self.split = split
        self.url, self.filename, self.file_md5 = self.split_list[split]
        self.verify_checksums = verify_checksums
        path = Path(self.root) / self.filename
        if not path.is_file():
            raise DatasetNotFoundError(
                "SVHN", f"the file {self.filename} (format 2, cropped 32x32 digits)", Path(self.root),
                f"download {self.url} (from {SVHN_URL}) into {Path(self.root)}.")
        if verify_checksums and not check_integrity(str(path), self.file_md5):
            raise DatasetFormatError(f"Checksum mismatch for SVHN file {path}: expected md5 {self.file_md5}. The file is "
                             f"corrupt or not the official release; re-download {self.url} "
                             f"(or pass verify_checksums=False).")

        import scipy.io

        try:
            mat = scipy.io.loadmat(str(path))
        except Exception as err:  # scipy raises ValueError/TypeError/... on garbage
            raise DatasetFormatError(f"Could not read SVHN file {path}: not a valid MATLAB .mat file "
                             f"({type(err).__name__}: {err}). Re-download {self.url}.") from err
        missing = [k for k in ("X", "y") if k not in mat]
        if missing:
            raise DatasetFormatError(f"Malformed SVHN file {path}: missing variable(s) {missing}; expected X (32, 32, 3, N) "
                             f"uint8 and y (N, 1).")
        images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).astype(np.int64).reshape(-1)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
            raise DatasetFormatError(f"Malformed SVHN file {path}: X must be uint8 of shape (32, 32, 3, N), "
                             f"got {images.dtype} {images.shape}.")
        if len(labels) != images.shape[3]:
            raise DatasetFormatError(f"Malformed SVHN file {path}: {images.shape[3]} images but {len(labels)} labels.")
        if len(labels) and not (labels.min() >= 0 and labels.max() <= 10):
            raise DatasetFormatError(f"Malformed SVHN file {path}: labels must lie in 0..10 (10 = digit 0), "
                             f"got range [{labels.min()}, {labels.max()}].")
        labels[labels == 10] = 0
        self.labels = labels
        self.data = np.ascontiguousarray(images.transpose(3, 2, 0, 1))  # torchvision layout: (N, 3, H, W)

    def _check_integrity(self) -> bool:
        """Existence of the split file (md5 as well when ``verify_checksums=True``)."""
        path = Path(self.root) / self.filename
        return path.is_file() and (not self.verify_checksums or check_integrity(str(path), self.file_md5))


def svhn(root: PathLike, split: str = "train", transform: Transform = None, verify_checksums: bool = False,
         target_transform: Transform = None) -> SVHN:
    """Read SVHN (format 2, cropped digits) from ``root/{split}_32x32.mat``.

    Args:
        root: directory holding ``train_32x32.mat``, ``test_32x32.mat`` and/or ``extra_32x32.mat``.
        split: ``"train"``, ``"test"`` or ``"extra"``.
        transform: applied to the PIL image, as in torchvision.
        verify_checksums: also verify the official md5 sum (off by default: existence only).
        target_transform: applied to the integer label (digit 0 has label 0).

    Raises:
        DatasetNotFoundError: the split's ``.mat`` file is missing.
        ValueError: unknown split, or the file is unreadable/malformed/fails its checksum
            (the message names the file).
    """
    return CheckedSVHN(root, split=split, transform=transform, target_transform=target_transform,
                       verify_checksums=verify_checksums)
