"""Synthetic profile/frontal pairs with illumination-inconsistent supervision (always called "synthetic").

Built on the public API of ``shared.data.faces`` (``sample_params``, ``render``, ``identity_model``,
``rotation_matrices``). One pair = one identity (neutral expression, no occluder) seen by two cameras:

* **profile** (the input): yaw from the Multi-PIE camera arc (+-15 ... +-90 degrees), lit by a light
  fixed to the head, ``l_obj`` (the renderer takes camera-frame lights: ``R(yaw) l_obj``);
* **frontal ground truth** (the supervision): yaw 0, lit *inconsistently*: by default
  ``gt_light="camera"`` -- the light the profile camera saw, carried into the frontal camera's frame
  (``R(yaw) l_obj`` again, i.e. rotated by the yaw relative to the head) -- and multiplied by a frontal
  camera colour response ``gt_gain``. This mimics Multi-PIE, where the frontal and profile images of one
  flash look differently lit (camera types, view-dependent shading). ``gt_light="random"`` draws an
  independent light instead (an unpredictable inconsistency); ``"consistent"`` removes the problem;
* **illumination-consistent frontal** (evaluation only; no real dataset has it): yaw 0 under the
  *profile's own* light ``l_obj`` and the profile camera's response -- what the output should look like;
* masks (head silhouette: face + hair), the 68 landmarks of the frontal, dense correspondences
  (surface points of a fixed chart lattice projected into both views, with their visibility: the
  synthetic stand-in for the official Face++ dense landmarks), the *self-occlusion map* (frontal
  pixels whose surface point the profile does not show) and the true forward grid (where each
  frontal pixel's surface point lies in the profile).

The renderer has no mask, dense-correspondence or albedo output; this module derives them from its
public API (masks: two renders that differ only in the background colour; correspondences: the same
projection the renderer uses, re-derived and tested against ``project_landmarks``). They are candidates
for ``shared.data.faces`` (see the package README).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from shared.data.faces import FLIP_PERMUTATION, identity_model, render, rotation_matrices, sample_params
from shared.errors import ConfigError
from torch.utils.data import Dataset

log = logging.getLogger("ffwm")

MULTIPIE_YAWS = (15, 30, 45, 60, 75, 90)
BACKGROUND = (0.5, 0.5, 0.5)
_SCREEN = (0.0, 1.0, 0.0)  # the second background, only to find the silhouette
GT_LIGHTS = ("camera", "random", "consistent")


@dataclass(frozen=True)
class PairConfig:
    """Everything that defines a synthetic pair set (its hash keys the on-disk cache)."""

    n: int = 1024
    size: int = 64
    seed: int = 0
    id_offset: int = 0  # identities id_offset .. id_offset + num_identities - 1
    num_identities: int = 200
    identity_seed: int = 0
    yaws: tuple[int, ...] = MULTIPIE_YAWS  # |yaw| values; each pair gets +-one of them
    light_elevation: tuple[float, float] = (-20.0, 40.0)  # head frame, degrees
    light_azimuth: tuple[float, float] = (-70.0, 70.0)
    light_strength: tuple[float, float] = (0.7, 1.0)
    ambient: tuple[float, float] = (0.25, 0.45)
    scale: float = 0.8
    center_jitter: float = 0.01
    gt_light: str = "camera"
    gt_gain: tuple[float, float, float] = (1.1, 1.0, 0.85)
    noise: float = 0.01
    dense_grid: int = 24  # chart lattice side for the dense correspondences (points with u^2 + v^2 < 0.9)
    extras: bool = False  # also render the frontal albedo and the true forward grid (evaluation sets)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _light(el_deg: np.ndarray, az_deg: np.ndarray) -> np.ndarray:
    el, az = np.deg2rad(el_deg), np.deg2rad(az_deg)
    return np.stack([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)], -1)


def chart_lattice(side: int) -> np.ndarray:
    """The fixed chart points ``(M, 2)`` (u, v) of the dense correspondences."""
    t = (np.arange(side) + 0.5) / side * 1.9 - 0.95
    u, v = np.meshgrid(t, t, indexing="xy")
    keep = u * u + v * v < 0.9
    return np.stack([u[keep], v[keep]], -1).astype(np.float64)


def _pose_frame(params, size: int, identity_seed: int):
    """Scale, translation, rotation and ellipsoid axes exactly as the renderer uses them."""
    ident = identity_model(params.identity, identity_seed)
    axes = ident.axes.astype(np.float64)
    rot = rotation_matrices(params.pose)
    s = np.asarray(params.scale, np.float64) * size / (2 * axes[:, 1])
    t = np.asarray(params.center, np.float64) * size - 0.5
    return ident, axes, rot, s, t


def project_chart(params, chart: np.ndarray, size: int, identity_seed: int = 0):
    """Project chart points (``(M, 2)`` shared, or ``(B, M, 2)``) of each face's ellipsoid into its image:
    pixel positions ``(B, M, 2)`` and self-visibility ``(B, M)`` (camera-space normal toward the camera)."""
    ident, axes, rot, s, t = _pose_frame(params, size, identity_seed)
    ch = np.broadcast_to(chart, (len(params),) + chart.shape[-2:]) if chart.ndim == 2 else chart
    u, v = ch[..., 0], ch[..., 1]
    w = np.sqrt(np.clip(1 - u * u - v * v, 0, None))
    p = np.stack([u * axes[:, None, 0], v * axes[:, None, 1], w * axes[:, None, 2]], -1)
    cam = s[:, None, None] * np.einsum("bij,bkj->bki", rot, p) + np.concatenate([t, np.zeros((len(t), 1))], 1)[:, None]
    n_cam = np.einsum("bij,bkj->bki", rot, p / axes[:, None] ** 2)
    return cam[..., :2].astype(np.float32), n_cam[..., 2] > 0


def frontal_surface(params_frontal, size: int, identity_seed: int = 0):
    """For every pixel of a frontal (yaw = pitch = roll = 0) render: whether its ray hits the head
    ellipsoid, and the hit point in object coordinates ``(B, S, S, 3)``."""
    _, axes, _, s, t = _pose_frame(params_frontal, size, identity_seed)
    pix = np.arange(size, dtype=np.float64)
    gy, gx = np.meshgrid(pix, pix, indexing="ij")
    x = (gx[None] - t[:, 0, None, None]) / s[:, None, None]
    y = (gy[None] - t[:, 1, None, None]) / s[:, None, None]
    r2 = (x / axes[:, 0, None, None]) ** 2 + (y / axes[:, 1, None, None]) ** 2
    hit = r2 < 1
    z = axes[:, 2, None, None] * np.sqrt(np.clip(1 - r2, 0, None))
    return hit, np.stack([x, y, z], -1)


def correspondence_maps(params_frontal, yaw_deg: np.ndarray, size: int, identity_seed: int = 0):
    """Self-occlusion map and true forward grid of each frontal pixel for a profile at ``yaw_deg``.

    Returns ``occluded (B, S, S)`` (the pixel's surface point faces away from the profile camera),
    ``hit (B, S, S)`` and ``grid (B, S, S, 2)`` (the point's position in the profile, normalised,
    ``align_corners=False``)."""
    _, axes, _, s, t = _pose_frame(params_frontal, size, identity_seed)
    hit, p = frontal_surface(params_frontal, size, identity_seed)
    pose = np.zeros((len(yaw_deg), 3))
    pose[:, 0] = yaw_deg
    rot = rotation_matrices(pose)
    cam = s[:, None, None, None] * np.einsum("bij,bhwj->bhwi", rot, p)
    px = cam[..., 0] + t[:, 0, None, None]
    py = cam[..., 1] + t[:, 1, None, None]
    n_z = np.einsum("bj,bhwj->bhw", rot[:, 2], p / axes[:, None, None] ** 2)
    grid = np.stack([(2 * px + 1) / size - 1, (2 * py + 1) / size - 1], -1).astype(np.float32)
    return hit & (n_z <= 0), hit, grid


def _render_rgb(params, size: int, identity_seed: int, noise: float) -> np.ndarray:
    return render(params, size, identity_seed=identity_seed, noise=noise).images


def make_pairs(cfg: PairConfig) -> dict[str, np.ndarray]:
    """Render ``cfg.n`` pairs (see the module docstring). Deterministic in ``cfg``."""
    if cfg.gt_light not in GT_LIGHTS:
        raise ConfigError(f"gt_light={cfg.gt_light!r} is not known; use one of {', '.join(GT_LIGHTS)}")
    rng = np.random.default_rng([cfg.seed, 7919])
    n, size = cfg.n, cfg.size
    ids = cfg.id_offset + rng.integers(0, cfg.num_identities, n)
    yaw = rng.choice(np.asarray(cfg.yaws, np.float64), n) * rng.choice([-1.0, 1.0], n)
    l_obj = _light(rng.uniform(*cfg.light_elevation, n), rng.uniform(*cfg.light_azimuth, n))
    base = sample_params(n, int(rng.integers(2**31)), identities=ids, yaw=0.0, pitch=0.0, roll=0.0,
                         expression_strength=0.0, light_strength=cfg.light_strength, ambient=cfg.ambient,
                         scale=cfg.scale, center_jitter=cfg.center_jitter, occluder_prob=0.0)
    bg = np.tile(np.array(BACKGROUND * 2 + (0.0,), np.float32), (n, 1))
    base = base.replace(background=bg)
    pose = np.zeros((n, 3), np.float32)
    pose[:, 0] = yaw
    rot = rotation_matrices(pose)
    l_cam_profile = np.einsum("bij,bj->bi", rot, l_obj)
    profile_p = base.replace(pose=pose, light_dir=l_cam_profile.astype(np.float32))
    consistent_p = base.replace(light_dir=l_obj.astype(np.float32))
    if cfg.gt_light == "camera":
        gt_p = base.replace(light_dir=l_cam_profile.astype(np.float32))
    elif cfg.gt_light == "random":
        l_rand = _light(rng.uniform(*cfg.light_elevation, n), rng.uniform(*cfg.light_azimuth, n))
        gt_p = base.replace(light_dir=l_rand.astype(np.float32))
    else:
        gt_p = consistent_p
    iseed, noise = cfg.identity_seed, cfg.noise
    profile = _render_rgb(profile_p, size, iseed, noise)
    consistent = _render_rgb(consistent_p, size, iseed, noise)
    gt = _render_rgb(gt_p, size, iseed, noise)
    if cfg.gt_light != "consistent":
        gain = np.asarray(cfg.gt_gain, np.float32)
        gt = np.clip(gt.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
    mask_p = _mask(profile_p, size, iseed, noise, profile)
    mask_f = _mask(consistent_p, size, iseed, noise, consistent)
    lattice = chart_lattice(cfg.dense_grid)
    pts_p, vis_p = project_chart(profile_p, lattice, size, iseed)
    pts_f, _ = project_chart(consistent_p, lattice, size, iseed)
    chart68 = identity_model(ids, iseed).chart
    lm68_f, _ = project_chart(consistent_p, chart68, size, iseed)
    occluded, hit, grid = correspondence_maps(consistent_p, yaw, size, iseed)
    out = {"profile": profile, "frontal": gt, "consistent": consistent, "mask_profile": mask_p,
           "mask_frontal": mask_f, "landmarks_frontal": lm68_f, "pts_profile": pts_p, "pts_frontal": pts_f,
           "gate": vis_p, "occluded": occluded & mask_f, "yaw": yaw.astype(np.float32),
           "identity": ids.astype(np.int64), "light_obj": l_obj.astype(np.float32)}
    if cfg.extras:
        albedo_p = consistent_p.replace(ambient=np.ones(n, np.float32))
        out["albedo"] = _render_rgb(albedo_p, size, iseed, 0.0)
        out["true_grid"] = grid.astype(np.float16)
        # gallery: one frontal per identity, front light, profile-camera response (rank-1 evaluation)
        gids = np.unique(ids)
        first = np.array([np.flatnonzero(ids == g)[0] for g in gids])
        gal = consistent_p.subset(first).replace(
            light_dir=np.tile(np.array([0.0, -0.2, 1.0], np.float32) / np.hypot(0.2, 1.0), (len(gids), 1)),
            light_strength=np.full(len(gids), 0.85, np.float32), ambient=np.full(len(gids), 0.4, np.float32))
        out["gallery"] = _render_rgb(gal, size, iseed, noise)
        out["gallery_ids"] = gids.astype(np.int64)
    return out


def _mask(params, size: int, identity_seed: int, noise: float, image: np.ndarray) -> np.ndarray:
    """Head silhouette: pixels whose colour does not change when only the background does."""
    bg = np.tile(np.array(_SCREEN * 2 + (0.0,), np.float32), (len(params), 1))
    other = _render_rgb(params.replace(background=bg), size, identity_seed, noise)
    return (other == image).all(-1)


def cache_file(cfg: PairConfig, cache_dir: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(cache_dir))) / "ffwm" / f"pairs-{cfg.key()}.npz"


def load_pairs(cfg: PairConfig, cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """:func:`make_pairs`, cached in ``<cache_dir>/ffwm/pairs-<hash>.npz`` (atomic write) when given."""
    if cache_dir is None:
        return make_pairs(cfg)
    path = cache_file(cfg, cache_dir)
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = make_pairs(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pairs.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return arrays


# --------------------------------------------------------------------------------- torch dataset


def _to_image(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # uint8 (N, 3, H, W)


@dataclass
class PairDataset(Dataset):
    """Torch view of :func:`make_pairs` arrays. ``flip_double`` doubles the set with horizontal mirror
    images (images, masks, landmarks; the official loader's augmentation). Items are dicts of tensors:
    images float in [0, 1] ``(3, S, S)``, masks ``(1, S, S)``, points in pixels."""

    arrays: dict[str, np.ndarray]
    flip_double: bool = False
    tensors: dict[str, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self):
        a = self.arrays
        t = {"profile": _to_image(a["profile"]), "frontal": _to_image(a["frontal"]),
             "mask_profile": torch.from_numpy(a["mask_profile"]).unsqueeze(1),
             "mask_frontal": torch.from_numpy(a["mask_frontal"]).unsqueeze(1),
             "landmarks_frontal": torch.from_numpy(a["landmarks_frontal"]).float(),
             "pts_profile": torch.from_numpy(a["pts_profile"]).float(),
             "pts_frontal": torch.from_numpy(a["pts_frontal"]).float(),
             "gate": torch.from_numpy(a["gate"]), "yaw": torch.from_numpy(a["yaw"]).float(),
             "identity": torch.from_numpy(a["identity"])}
        if "consistent" in a:
            t["consistent"] = _to_image(a["consistent"])
            t["occluded"] = torch.from_numpy(a["occluded"]).unsqueeze(1)
        self.tensors = t
        self.size = t["profile"].shape[-1]
        self.n = len(t["profile"])

    def __len__(self) -> int:
        return self.n * (2 if self.flip_double else 1)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        flip = i >= self.n
        j = i - self.n if flip else i
        item = {}
        for k, v in self.tensors.items():
            x = v[j]
            if x.dtype == torch.uint8 and x.dim() == 3 and x.shape[0] == 3:
                x = x.float() / 255.0
            elif x.dtype == torch.bool:
                x = x.float() if x.dim() == 3 else x
            item[k] = x
        if flip:
            item = flip_item(item, self.size)
        return item


def flip_item(item: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """Mirror one pair horizontally: images/masks flip, x -> S - 1 - x, yaw -> -yaw, the 68 landmarks
    are relabelled (``FLIP_PERMUTATION``)."""
    out = dict(item)
    for k in ("profile", "frontal", "consistent", "mask_profile", "mask_frontal", "occluded"):
        if k in out:
            out[k] = out[k].flip(-1)
    for k in ("pts_profile", "pts_frontal", "landmarks_frontal"):
        p = out[k].clone()
        p[..., 0] = size - 1 - p[..., 0]
        out[k] = p
    out["landmarks_frontal"] = out["landmarks_frontal"][torch.as_tensor(FLIP_PERMUTATION)]
    out["yaw"] = -out["yaw"]
    return out


def pair_config_from(cfg: Any, split: str) -> PairConfig:
    """The train / test :class:`PairConfig` of a ``data`` config group (disjoint identities and seeds)."""
    d = cfg
    common = dict(size=int(d.image_size), yaws=tuple(int(y) for y in d.yaws), gt_light=str(d.gt_light),
                  gt_gain=tuple(float(g) for g in d.gt_gain), noise=float(d.noise),
                  light_elevation=tuple(d.light_elevation), light_azimuth=tuple(d.light_azimuth))
    if split == "train":
        return PairConfig(n=int(d.n_train), seed=int(d.seed), id_offset=0, num_identities=int(d.train_identities),
                          **common)
    return PairConfig(n=int(d.n_test), seed=int(d.seed) + 1_000_003, id_offset=500_000,
                      num_identities=int(d.test_identities), extras=True, **common)
