"""Data: synthetic faces with simulated ambiguous labels (embedded default) and readers for the
paper's datasets in the layouts their publishers ship (nothing is downloaded).

* ``.pts`` files (iBUG): ``version: 1`` / ``n_points: N`` / ``{`` / N lines ``x y`` / ``}``, coordinates
  **1-based** (Matlab). :func:`read_pts` returns 0-based coordinates; :func:`write_pts` adds 1 back.
* 300W (``root`` = ``$REPRO_DATA/300w``)::

      afw/*.jpg|png + .pts            helen/trainset/  helen/testset/
      lfpw/trainset/  lfpw/testset/   ibug/            300W/01_Indoor/  300W/02_Outdoor/  (private test)
      Bounding Boxes/bounding_boxes_<set>.mat          (optional; iBUG's face boxes)

  Splits: ``train`` = afw + helen/trainset + lfpw/trainset (3148), ``common`` = helen/testset +
  lfpw/testset (554), ``challenging`` = ibug (135), ``full`` = common + challenging (689), ``test``
  = the private 300W set (600).
* AFLW (``root`` = ``$REPRO_DATA/aflw``): ``aflw.sqlite`` + ``flickr/`` images; 21 points, of which
  the 19-point protocol drops the two ears (feature ids 13 and 17). The train/test split is a list
  of face ids (``split/<name>.txt``, one id per line, e.g. from the CCL paper's release).
* 300-VW (``root`` = ``$REPRO_DATA/300vw``): ``NNN/annot/NNNNNN.pts`` and frames extracted from
  ``NNN/vid.avi`` into ``NNN/frames/NNNNNN.png`` (or .jpg), e.g. with
  ``ffmpeg -i NNN/vid.avi -start_number 1 NNN/frames/%06d.png``.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from shared.data.readers import check_files_exist, load_image
from shared.errors import ConfigError, DatasetFormatError, DatasetNotFoundError
from shared.data.faces import FaceBatch, generate_faces

from .ambiguity import AmbiguityConfig, simulate_annotations

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
IBUG_URL = "https://ibug.doc.ic.ac.uk/resources/300-W/ (and /300-VW/)"
AFLW_URL = "https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/aflw/"


# ------------------------------------------------------------------------------------ .pts


def read_pts(path: str | os.PathLike) -> np.ndarray:
    """Read an iBUG ``.pts`` file -> (N, 2) float32, **0-based** (1 subtracted)."""
    path = Path(path)
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    try:
        n = int(next(ln for ln in lines if ln.startswith("n_points")).split(":")[1])
        start, end = lines.index("{"), lines.index("}")
    except (StopIteration, ValueError, IndexError) as e:
        raise DatasetFormatError(f"{path} is not a .pts file (expected 'version: 1', 'n_points: N', '{{', N lines "
                                 f"'x y', '}}'); replace the file with the publisher's copy") from e
    body = lines[start + 1:end]
    if len(body) != n:
        raise DatasetFormatError(f"{path}: n_points says {n} but {len(body)} coordinate lines are between the "
                                 f"braces; replace the file with the publisher's copy")
    try:
        pts = np.array([[float(v) for v in ln.split()[:2]] for ln in body], dtype=np.float32).reshape(n, 2)
    except ValueError as e:
        raise DatasetFormatError(f"{path}: a coordinate line is not 'x y' ({e}); replace the file with the "
                                 f"publisher's copy") from e
    return pts - 1.0


def write_pts(path: str | os.PathLike, points: np.ndarray) -> None:
    """Write 0-based (N, 2) points as a 1-based ``.pts`` file."""
    pts = np.asarray(points, dtype=np.float64) + 1.0
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in pts)
    Path(path).write_text(f"version: 1\nn_points: {len(pts)}\n{{\n{body}\n}}\n")


# ------------------------------------------------------------------------------- samples


@dataclass
class LandmarkSample:
    image: Path
    landmarks: np.ndarray  # (K, 2) 0-based pixels
    box: np.ndarray  # (4,) x0, y0, x1, y1
    visible: np.ndarray | None = None


def landmark_box(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(0), points.max(0)]).astype(np.float32)


def _image_for(pts: Path) -> Path | None:
    for ext in IMAGE_EXTS:
        for cand in (pts.with_suffix(ext), pts.with_suffix(ext.upper())):
            if cand.is_file():
                return cand
    return None


W300_SETS = {"afw": "afw", "helen_trainset": "helen/trainset", "lfpw_trainset": "lfpw/trainset",
             "helen_testset": "helen/testset", "lfpw_testset": "lfpw/testset", "ibug": "ibug",
             "300W_indoor": "300W/01_Indoor", "300W_outdoor": "300W/02_Outdoor"}
BOX_SOURCES = ("landmarks", "detector", "ground_truth")
W300_SPLITS = {"train": ("afw", "helen_trainset", "lfpw_trainset"), "common": ("helen_testset", "lfpw_testset"),
               "challenging": ("ibug",), "full": ("helen_testset", "lfpw_testset", "ibug"),
               "test": ("300W_indoor", "300W_outdoor")}


def read_300w_boxes(mat_path: Path, kind: str = "bb_detector") -> dict[str, np.ndarray]:
    """iBUG ``bounding_boxes_<set>.mat``: image name -> box (x0, y0, x1, y1), converted to 0-based."""
    from scipy.io import loadmat

    data = loadmat(mat_path, squeeze_me=True, struct_as_record=False)
    if "bounding_boxes" not in data:
        raise DatasetFormatError(f"{mat_path}: no 'bounding_boxes' variable (found "
                                 f"{sorted(k for k in data if not k.startswith('_'))}); re-download bounding_boxes.zip "
                                 f"from {IBUG_URL}")
    out = {}
    for entry in np.atleast_1d(data["bounding_boxes"]):
        out[str(entry.imgName)] = np.asarray(getattr(entry, kind), dtype=np.float32) - 1.0
    return out


def read_300w(root: str | os.PathLike, split: str, box_source: str = "landmarks") -> list[LandmarkSample]:
    """300W samples of one split. ``box_source``: ``landmarks`` (tight box of the 68 points, the
    common practice), ``detector`` or ``ground_truth`` (iBUG's ``Bounding Boxes/*.mat``)."""
    if split not in W300_SPLITS:
        raise ConfigError(f"unknown 300W split {split!r}; choose one of {', '.join(sorted(W300_SPLITS))}")
    if box_source not in BOX_SOURCES:
        raise ConfigError(f"box_source={box_source!r} is not a known name; use landmarks, detector or ground_truth")
    root = Path(root)
    samples: list[LandmarkSample] = []
    for name in W300_SPLITS[split]:
        folder = root / W300_SETS[name]
        pts_files = sorted(folder.glob("*.pts")) if folder.is_dir() else []
        if not pts_files:
            raise DatasetNotFoundError("300W", f"images with .pts files in {W300_SETS[name]}/ (split {split!r})",
                                       root, f"download the 300W parts from {IBUG_URL} and extract them there")
        boxes = {}
        if box_source != "landmarks":
            mat = root / "Bounding Boxes" / f"bounding_boxes_{name}.mat"
            if not mat.is_file():
                raise DatasetNotFoundError("300W face boxes", f"'Bounding Boxes/bounding_boxes_{name}.mat'", root,
                                           f"download bounding_boxes.zip from {IBUG_URL}, or use box_source=landmarks")
            boxes = read_300w_boxes(mat, "bb_detector" if box_source == "detector" else "bb_ground_truth")
        for p in pts_files:
            img = _image_for(p)
            if img is None:
                raise DatasetNotFoundError("300W", f"an image next to {p.name}", folder, f"re-extract from {IBUG_URL}")
            pts = read_pts(p)
            if len(pts) != 68:
                raise DatasetFormatError(f"{p}: 300W needs 68 points, found {len(pts)}; replace the file with the "
                                         f"publisher's copy")
            box = boxes.get(img.name, landmark_box(pts)) if boxes else landmark_box(pts)
            samples.append(LandmarkSample(img, pts, box))
    return samples


AFLW_EARS = (13, 17)  # 1-based feature ids of the ears, dropped by the 19-point protocol


def read_aflw(root: str | os.PathLike, split: str | None = None) -> list[LandmarkSample]:
    """AFLW faces with the 19-point protocol from ``aflw.sqlite`` (+ ``split/<split>.txt`` face ids).

    Missing points (AFLW annotates only visible ones) get ``visible=False`` (the annotation mask: they are
    left out of the loss, the search and the NME) and coordinates 0. The face box is the sqlite
    ``FaceRect`` (x, y, w, h). Every listed image is checked to exist when the split is read."""
    root = Path(root)
    db = root / "aflw.sqlite"
    if not db.is_file():
        raise DatasetNotFoundError("AFLW", "aflw.sqlite and the flickr/ image folders", root,
                                   f"request AFLW from {AFLW_URL}")
    con = sqlite3.connect(db)
    try:
        faces = con.execute("SELECT Faces.face_id, FaceImages.filepath, FaceRect.x, FaceRect.y, FaceRect.w, "
                            "FaceRect.h FROM Faces JOIN FaceImages ON Faces.file_id = FaceImages.file_id "
                            "JOIN FaceRect ON Faces.face_id = FaceRect.face_id").fetchall()
        coords = con.execute("SELECT face_id, feature_id, x, y FROM FeatureCoords").fetchall()
    except sqlite3.DatabaseError as e:
        raise DatasetFormatError(f"{db} is not the AFLW database (tables Faces, FaceImages, FaceRect, FeatureCoords: "
                                 f"{e}); request the original aflw.sqlite from {AFLW_URL}") from e
    finally:
        con.close()
    keep = [f for f in range(1, 22) if f not in AFLW_EARS]
    col = {f: i for i, f in enumerate(keep)}
    pts: dict[int, np.ndarray] = {}
    vis: dict[int, np.ndarray] = {}
    for face_id, feat, x, y in coords:
        if feat in col:
            pts.setdefault(face_id, np.zeros((19, 2), np.float32))[col[feat]] = (x, y)
            vis.setdefault(face_id, np.zeros(19, bool))[col[feat]] = True
    wanted = None
    if split is not None:
        lst = root / "split" / f"{split}.txt"
        if not lst.is_file():
            raise DatasetNotFoundError("AFLW split list", f"split/{split}.txt (one face id per line)", root,
                                       "use the AFLW-Full/Frontal face-id lists of Zhu et al. (CCL, CVPR 2016)")
        wanted = {int(t) for t in lst.read_text().split()}
    out = []
    for face_id, fp, x, y, w, h in faces:
        if (wanted is not None and face_id not in wanted) or face_id not in pts:
            continue
        out.append(LandmarkSample(root / "flickr" / fp, pts[face_id], np.array([x, y, x + w, y + h], np.float32),
                                  vis[face_id]))
    check_files_exist([s.image for s in out], lst if split is not None else db, "AFLW images",
                      f"extract the flickr/ folders of AFLW ({AFLW_URL}) next to aflw.sqlite")
    return out


VW300_CATEGORIES = {  # test videos per category [recalled from the 300-VW paper; verify]
    "A": (114, 124, 125, 126, 150, 158, 401, 402, 505, 506, 507, 508, 509, 510, 511, 514, 515, 518, 519, 520, 521,
          522, 524, 525, 537, 538, 540, 541, 546, 547, 548),
    "B": (203, 208, 211, 212, 213, 214, 218, 224, 403, 404, 405, 406, 407, 408, 409, 412, 550, 551, 553),
    "C": (410, 411, 516, 517, 526, 528, 529, 530, 531, 533, 557, 558, 559, 562),
}


def read_300vw(root: str | os.PathLike, split: str, every: int = 1) -> list[LandmarkSample]:
    """300-VW frames: ``split`` in A, B, C (test categories) or ``train`` (the other videos).
    ``every``: keep every n-th annotated frame."""
    root = Path(root)
    if split not in ("A", "B", "C", "train"):
        raise ConfigError(f"unknown 300-VW split {split!r}; choose A, B, C or train")
    videos = sorted(p for p in root.glob("[0-9][0-9][0-9]") if (p / "annot").is_dir()) if root.is_dir() else []
    if not videos:
        raise DatasetNotFoundError("300-VW", "video folders NNN/annot/*.pts", root, f"download 300-VW from {IBUG_URL}")
    test = {v for vids in VW300_CATEGORIES.values() for v in vids}
    chosen = [v for v in videos if (int(v.name) in VW300_CATEGORIES[split] if split != "train" else int(v.name) not in test)]
    out = []
    for v in chosen:
        for p in sorted((v / "annot").glob("*.pts"))[::every]:
            frame = _image_for(v / "frames" / p.name)
            if frame is None:
                raise DatasetNotFoundError("300-VW frames", f"frames/{p.stem}.png (extracted from vid.avi)", v,
                                           "extract them: ffmpeg -i vid.avi -start_number 1 frames/%06d.png")
            pts = read_pts(p)
            out.append(LandmarkSample(frame, pts, landmark_box(pts)))
    return out


def crop_samples(samples: list[LandmarkSample], size: int, box_scale: float = 1.25) -> dict[str, torch.Tensor]:
    """Square crops around each face box (enlarged by ``box_scale``), resized to ``size``; landmarks
    mapped into crop pixels. Returns uint8 images (N, 3, S, S), landmarks (N, K, 2), ``annotated`` (N, K)
    (False where the dataset has no annotation for a point, e.g. AFLW), boxes (N, 4)."""
    from PIL import Image

    imgs, lms, vis, boxes = [], [], [], []
    for s in samples:
        x0, y0, x1, y1 = s.box
        c, side = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), max(x1 - x0, y1 - y0) * box_scale
        k = size / side
        # image pixel centre p maps to crop pixel centre (p - (c - side/2) + 0.5) * k - 0.5
        left, top = c - side / 2 - 0.5
        with load_image(s.image) as im:
            crop = im.transform((size, size), Image.Transform.AFFINE,
                                               (1 / k, 0, left + 0.5, 0, 1 / k, top + 0.5), Image.Resampling.BILINEAR)
        imgs.append(torch.from_numpy(np.array(crop)).permute(2, 0, 1))
        lm = (s.landmarks - [left, top]) * k - 0.5
        lms.append(torch.from_numpy(lm.astype(np.float32)))
        vis.append(torch.ones(len(lm), dtype=torch.bool) if s.visible is None else torch.from_numpy(s.visible))
        boxes.append(torch.from_numpy(((s.box.reshape(2, 2) - [left, top]) * k - 0.5).reshape(-1).astype(np.float32)))
    if not imgs:
        raise DatasetNotFoundError("landmark dataset", "at least one annotated face in the split", Path("."),
                                   "check the split lists")
    return {"images": torch.stack(imgs), "landmarks": torch.stack(lms), "annotated": torch.stack(vis),
            "boxes": torch.stack(boxes)}


# ------------------------------------------------------------------------------ synthetic


def _batch_to_tensors(b: FaceBatch) -> dict[str, torch.Tensor]:
    return {"images": torch.from_numpy(b.images).permute(0, 3, 1, 2).contiguous(),
            "landmarks": torch.from_numpy(b.landmarks), "visible": torch.from_numpy(b.visible),
            "annotated": torch.ones(b.landmarks.shape[:2], dtype=torch.bool), "boxes": torch.from_numpy(b.boxes)}


def synthetic_splits(cfg) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Train (with simulated ambiguous ``labels``) and the test splits ``test`` (exact labels) and
    ``occluded`` (one occluder per face; ``visible`` marks the points it leaves visible) of synthetic
    faces. ``cfg`` is the ``data`` config node. Every point is annotated (as in 300W)."""
    common = dict(num_identities=cfg.num_identities, yaw=tuple(cfg.yaw), pitch=tuple(cfg.pitch), roll=tuple(cfg.roll))
    render = dict(identity_seed=cfg.identity_seed, supersample=cfg.supersample, noise=cfg.noise)
    train = _batch_to_tensors(generate_faces(cfg.train_size, cfg.image_size, seed=cfg.seed, **render, **common))
    test = _batch_to_tensors(generate_faces(cfg.test_size, cfg.image_size, seed=cfg.seed + 1, **render, **common))
    occ = _batch_to_tensors(generate_faces(cfg.test_size, cfg.image_size, seed=cfg.seed + 2, occluder_prob=1.0,
                                           occluder_size=tuple(cfg.occluder_size), **render, **common))
    amb = AmbiguityConfig(**{k: (tuple(v) if k == "weak_groups" else v) for k, v in cfg.ambiguity.items()})
    labels, annotators = simulate_annotations(train["landmarks"].numpy(), amb, seed=cfg.seed + 3)
    train["labels"], train["annotators"] = torch.from_numpy(labels), torch.from_numpy(annotators)
    return train, {"test": test, "occluded": occ}


#: split names each reader knows (AFLW splits are the names of its split lists, any name)
KNOWN_SPLITS = {"300w": tuple(W300_SPLITS), "300vw": ("train", "A", "B", "C")}


def real_splits(cfg) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Train/test crops of a real dataset (``labels`` = the human annotations), one test split per entry of
    ``cfg.test_splits`` (300W common/challenging/full, AFLW full/frontal, 300-VW A/B/C)."""
    from shared.data import data_root

    root = Path(cfg.root) if cfg.get("root") else data_root(cfg.name)
    reader = {"300w": lambda s: read_300w(root, s, cfg.get("box_source", "landmarks")),
              "aflw": lambda s: read_aflw(root, s), "300vw": lambda s: read_300vw(root, s, cfg.get("every", 1))}
    if cfg.name not in reader:
        raise ConfigError(f"data.name={cfg.name!r} is not a known dataset; use synthetic, 300w, aflw or 300vw")
    train = crop_samples(reader[cfg.name](cfg.train_split), cfg.image_size, cfg.box_scale)
    train["labels"] = train["landmarks"].clone()
    tests = {split: crop_samples(reader[cfg.name](split), cfg.image_size, cfg.box_scale) for split in cfg.test_splits}
    return train, tests


def build_data(cfg) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """``(train, tests)`` for the ``data`` config node: synthetic faces or a real dataset's crops."""
    return synthetic_splits(cfg) if cfg.name == "synthetic" else real_splits(cfg)
