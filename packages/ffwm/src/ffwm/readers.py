"""Readers for the paper's datasets, in the layouts their users hold them (nothing is downloaded).

Multi-PIE (CMU; licence required: https://www.cs.cmu.edu/afs/cs/project/PIE/MultiPie/Multi-Pie/Home.html),
cropped and aligned as the official FFWM pre-processing leaves it (``root`` = ``$REPRO_DATA/multipie``)::

    train/images/SSS_ss_rr_ccc_ii.png      subject, session, recording, camera, illumination
    train/masks/SSS_ss_rr_ccc_ii.png       face-parsing masks (or SSS_ss_rr_ccc.png / ..._07.png, shared
                                           across illuminations; optional: without them the mask is 1)
    train/landmarks.npy                    optional: a pickled dict {'lm_S': {key: (N, 2)}, 'lm_F': {...},
                                           'gate': {key: (N,)}}, key = file name without '_ii.png'
    test/images/SSS_ss_rr_ccc_ii.png
    test/gallery_list.npy                  optional: the gallery file names (one frontal per subject)

Camera ``051`` is frontal; ``081`` and ``191`` (elevated) are excluded. Each non-frontal image is paired
with the frontal of the same subject, session, recording **and illumination**. Yaw per camera (degrees;
the sign only separates the two arcs): 110 -90, 120 -75, 090 -60, 080 -45, 130 -30, 140 -15, 051 0,
050 15, 041 30, 190 45, 200 60, 010 75, 240 90. Rank-1 is reported per camera and merged into
+-15 ... +-90 as the official ``util.py`` does.

LFW (https://vis-www.cs.umass.edu/lfw/; ``root`` = ``$REPRO_DATA/lfw``): ``images/<name>/<name>_NNNN.<ext>``
(the FFWM-aligned crops) and ``pairs.txt`` (the standard file: a first line ``folds pairs_per_fold``, then
per fold ``pairs`` matched lines ``name n1 n2`` and ``pairs`` mismatched lines ``name1 n1 name2 n2``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from shared.errors import DatasetFormatError, DatasetNotFoundError
from torch.utils.data import Dataset

MULTIPIE_URL = "https://www.cs.cmu.edu/afs/cs/project/PIE/MultiPie/Multi-Pie/Home.html"
LFW_URL = "https://vis-www.cs.umass.edu/lfw/"
FRONTAL_CAMERA = "051"
EXCLUDED_CAMERAS = ("081", "191")
CAMERA_YAW = {"110": -90, "120": -75, "090": -60, "080": -45, "130": -30, "140": -15, "051": 0,
              "050": 15, "041": 30, "190": 45, "200": 60, "010": 75, "240": 90}
ANGLE_GROUPS = {15: ("050", "140"), 30: ("041", "130"), 45: ("080", "190"), 60: ("090", "200"),
                75: ("010", "120"), 90: ("110", "240")}
_NAME = re.compile(r"^(\d{3})_(\d{2})_(\d{2})_(\d{3})_(\d{2})$")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class MultiPIEName:
    subject: str
    session: str
    recording: str
    camera: str
    illumination: str

    @property
    def key(self) -> str:
        """The landmark/mask key: the name without the illumination."""
        return f"{self.subject}_{self.session}_{self.recording}_{self.camera}"

    @property
    def yaw(self) -> int:
        return CAMERA_YAW[self.camera]

    def frontal(self) -> "MultiPIEName":
        return MultiPIEName(self.subject, self.session, self.recording, FRONTAL_CAMERA, self.illumination)

    def stem(self) -> str:
        return f"{self.key}_{self.illumination}"


def parse_multipie_name(name: str) -> MultiPIEName:
    """``'001_01_01_051_07.png'`` -> subject 001, session 01, recording 01, camera 051, illumination 07."""
    stem = Path(name).stem
    m = _NAME.match(stem)
    if not m:
        raise DatasetFormatError(f"{name!r} is not a Multi-PIE file name SSS_ss_rr_ccc_ii (subject, session, "
                                 "recording, camera, illumination), e.g. 001_01_01_051_07.png")
    n = MultiPIEName(*m.groups())
    if n.camera not in CAMERA_YAW and n.camera not in EXCLUDED_CAMERAS:
        raise DatasetFormatError(f"{name!r}: camera {n.camera} is not a Multi-PIE camera id "
                                 f"({', '.join(sorted(CAMERA_YAW))}, 081, 191)")
    return n


def _require_dir(path: Path, what: str, expected: str, url: str) -> None:
    if not path.is_dir():
        raise DatasetNotFoundError(what, expected, path, f"{url}; then point REPRO_DATA (or data.root) at its parent")


def _load_image(path: Path, size: int, mode: str = "RGB") -> np.ndarray:
    img = Image.open(path).convert(mode)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img)


class MultiPIEPairs(Dataset):
    """Profile/frontal pairs of one Multi-PIE split (``train`` or ``test``).

    Items are dicts like the synthetic :class:`ffwm.synthetic.PairDataset` (``profile``, ``frontal``,
    ``mask_profile``, ``mask_frontal``, ``yaw``, ``identity``; ``pts_*``/``gate``/``landmarks_frontal``
    when ``landmarks.npy`` exists), images resized to ``image_size``."""

    def __init__(self, root: str | os.PathLike, split: str = "train", image_size: int = 128,
                 include_frontal_probes: bool = False, max_points: int = 0):
        self.root = Path(root) / split
        _require_dir(self.root / "images", f"Multi-PIE ({split} split)",
                     "images/SSS_ss_rr_ccc_ii.png (+ optional masks/, landmarks.npy)", MULTIPIE_URL)
        self.size = image_size
        files = sorted(p.name for p in (self.root / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise DatasetNotFoundError(f"Multi-PIE ({split} split)", "SSS_ss_rr_ccc_ii.png images", self.root / "images",
                                       MULTIPIE_URL)
        names = {f: parse_multipie_name(f) for f in files}
        by_stem = {n.stem(): f for f, n in names.items()}
        self.pairs: list[tuple[str, str, MultiPIEName]] = []
        for f, n in names.items():
            if n.camera in EXCLUDED_CAMERAS or (n.camera == FRONTAL_CAMERA and not include_frontal_probes):
                continue
            fr = by_stem.get(n.frontal().stem())
            if fr is not None:
                self.pairs.append((f, fr, n))
        if not self.pairs:
            raise DatasetFormatError(f"{self.root / 'images'} holds no profile image with a frontal (camera 051) "
                                     "image of the same subject, session, recording and illumination")
        self.ext = {Path(f).stem: Path(f).suffix for f in files}
        self.landmarks = None
        lm = self.root / "landmarks.npy"
        if lm.is_file():
            d = np.load(lm, allow_pickle=True).item()
            if not isinstance(d, dict) or not {"lm_S", "lm_F", "gate"} <= set(d):
                raise DatasetFormatError(f"{lm}: expected a pickled dict with keys 'lm_S', 'lm_F', 'gate'")
            self.landmarks = d
        self.max_points = max_points
        subjects = sorted({n.subject for _, _, n in self.pairs})
        self.subject_index = {s: i for i, s in enumerate(subjects)}

    def __len__(self) -> int:
        return len(self.pairs)

    def _mask(self, name: MultiPIEName) -> np.ndarray:
        for cand in (name.stem(), name.key, f"{name.key}_07"):
            for ext in IMAGE_EXTS:
                p = self.root / "masks" / f"{cand}{ext}"
                if p.is_file():
                    return (_load_image(p, self.size, "L") > 127).astype(np.float32)
        return np.ones((self.size, self.size), np.float32)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pf, ff, n = self.pairs[i]
        img = lambda f: torch.from_numpy(_load_image(self.root / "images" / f, self.size)).permute(2, 0, 1).float() / 255  # noqa: E731
        item = {"profile": img(pf), "frontal": img(ff),
                "mask_profile": torch.from_numpy(self._mask(n))[None],
                "mask_frontal": torch.from_numpy(self._mask(n.frontal()))[None],
                "yaw": torch.tensor(float(n.yaw)), "identity": torch.tensor(self.subject_index[n.subject]),
                "camera": n.camera}
        if self.landmarks is not None and n.key in self.landmarks["lm_S"]:
            scale = self.size / 128.0  # the official landmarks are in 128-px coordinates
            lm_s = torch.as_tensor(np.asarray(self.landmarks["lm_S"][n.key]), dtype=torch.float32) * scale
            lm_f = torch.as_tensor(np.asarray(self.landmarks["lm_F"][n.key]), dtype=torch.float32) * scale
            gate = torch.as_tensor(np.asarray(self.landmarks["gate"][n.key])).reshape(-1) > 0
            item.update(pts_profile=lm_s, pts_frontal=lm_f, gate=gate, landmarks_frontal=lm_f)
        return item

    def gallery(self, gallery_list: str | os.PathLike | None = None) -> list[str]:
        """The gallery file names: ``gallery_list.npy`` when present, else the frontal image of each subject
        under illumination 07 in its first session (a documented choice; the official code falls back
        to a random ``*_051_06.png``)."""
        path = Path(gallery_list) if gallery_list else self.root / "gallery_list.npy"
        if path.is_file():
            return [str(x) for x in np.load(path, allow_pickle=True).tolist()]
        files = sorted(p.name for p in (self.root / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS)
        seen, out = set(), []
        for f in files:
            n = parse_multipie_name(f)
            if n.camera == FRONTAL_CAMERA and n.illumination == "07" and n.subject not in seen:
                seen.add(n.subject)
                out.append(f)
        return out


def merge_rank1_by_angle(per_camera: dict[str, tuple[int, int]]) -> dict[int, float]:
    """``{camera: (correct, total)}`` -> rank-1 (%) per +-angle group (the official per-camera merge)."""
    out = {}
    for ang, cams in ANGLE_GROUPS.items():
        c = sum(per_camera.get(k, (0, 0))[0] for k in cams)
        t = sum(per_camera.get(k, (0, 0))[1] for k in cams)
        if t:
            out[ang] = 100.0 * c / t
    return out


# ----------------------------------------------------------------------------------------- LFW


def read_lfw_pairs(path: str | os.PathLike) -> tuple[list[tuple[str, int, str, int]], list[bool], list[int]]:
    """Parse LFW ``pairs.txt``: ``(pairs as (name1, n1, name2, n2), same-person labels, fold index)``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError("LFW pairs list", f"the file {path.name} (standard LFW pairs.txt)", path.parent, LFW_URL)
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    try:
        folds, per = (int(v) for v in lines[0][:2]) if len(lines[0]) >= 2 else (1, int(lines[0][0]))
    except ValueError as e:
        raise DatasetFormatError(f"{path}: the first line must be '<folds> <pairs per fold>', got {lines[0]}") from e
    body = lines[1:]
    if len(body) != folds * 2 * per:
        raise DatasetFormatError(f"{path}: the header says {folds} folds x 2 x {per} pairs = {folds * 2 * per} lines, "
                                 f"found {len(body)}")
    pairs, labels, fold_idx = [], [], []
    for k, t in enumerate(body):
        if len(t) == 3:
            pairs.append((t[0], int(t[1]), t[0], int(t[2])))
            labels.append(True)
        elif len(t) == 4:
            pairs.append((t[0], int(t[1]), t[2], int(t[3])))
            labels.append(False)
        else:
            raise DatasetFormatError(f"{path}: line {k + 2} {' '.join(t)!r} is neither 'name n1 n2' nor "
                                     "'name1 n1 name2 n2'")
        fold_idx.append(k // (2 * per))
    return pairs, labels, fold_idx


def lfw_image_path(root: str | os.PathLike, name: str, number: int) -> Path:
    """``images/<name>/<name>_<number:04d>.<ext>`` (the first existing extension)."""
    base = Path(root) / "images" / name
    for ext in (".jpg", ".png", ".jpeg"):
        p = base / f"{name}_{number:04d}{ext}"
        if p.is_file():
            return p
    raise DatasetNotFoundError("LFW", f"the image {name}/{name}_{number:04d}.jpg (images/<name>/<name>_NNNN.jpg)",
                               Path(root) / "images", LFW_URL)


class LFWImages(Dataset):
    """The distinct images referenced by LFW ``pairs.txt`` (loaded at ``image_size``)."""

    def __init__(self, root: str | os.PathLike, image_size: int = 128):
        self.root = Path(root)
        _require_dir(self.root / "images", "LFW", "images/<name>/<name>_NNNN.jpg and pairs.txt", LFW_URL)
        self.pairs, self.labels, self.folds = read_lfw_pairs(self.root / "pairs.txt")
        keys = sorted({(a, i) for a, i, _, _ in self.pairs} | {(b, j) for _, _, b, j in self.pairs})
        self.keys = keys
        self.index = {k: n for n, k in enumerate(keys)}
        self.size = image_size
        for k in keys:  # fail before any model is built
            lfw_image_path(self.root, *k)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(_load_image(lfw_image_path(self.root, *self.keys[i]), self.size)).permute(2, 0, 1).float() / 255

    def pair_indices(self) -> torch.Tensor:
        return torch.tensor([[self.index[(a, i)], self.index[(b, j)]] for a, i, b, j in self.pairs])
