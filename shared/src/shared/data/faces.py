"""Synthetic faces with exact 68-point landmarks (300W / iBUG order). Always called "synthetic".

A seeded parametric face model rendered with numpy, vectorised over faces and pixels. It exists so
that landmark, face-frontalisation and face-recognition packages run with no downloads; it is not a
photorealistic face model and results on it are never reported as results on a real dataset.

The model
    The head is an ellipsoid ``(x/a)^2 + (y/b)^2 + (z/c)^2 = 1`` in object coordinates (x right,
    y down, z toward the camera when the pose is frontal). Facial features are painted on its
    front half in the frontal chart ``(u, v) = (x/a, y/b)``: the skin region is bounded below by
    the jaw contour (landmarks 0-16, which is therefore the face silhouette) and above by a
    forehead arc; hair covers the rest of the head above ear level; eyebrows, eyes (sclera, iris,
    pupil, a dark lid outline), nose (bridge highlight, shaded base, nostrils) and lips (outer lip,
    dark mouth interior) are polygons whose vertices *are* the landmarks. Each landmark is the
    surface point above its chart position, ``(u a, v b, c sqrt(1 - u^2 - v^2))``.

    * identity (``identity`` integer + ``identity_seed``): ellipsoid axes, ten shape modes (eye
      spacing and size, brow height, nose length and width, mouth width/height, lip thickness,
      jaw width, chin height), small per-landmark offsets, and appearance (skin tone, hair, brow,
      iris and lip colours). Any number of identities; identity ``i`` always looks the same.
    * expression (``expression[:, 0:4]`` = mouth_open in [0, 1], smile in [-1, 1], brow_raise in
      [-1, 1], eye_open in [0, 1.3], 1 = neutral).
    * pose (``pose[:, 0:3]`` = yaw, pitch, roll in degrees). Camera point
      ``= scale * R p + (cx, cy, 0)`` with ``R = Rz(roll) Rx(pitch) Ry(yaw)``, orthographic
      projection along z. Positive yaw turns the nose toward the image's right (+x), positive
      pitch turns it up (-y), positive roll rotates the face clockwise on screen.
    * illumination: Lambertian shading ``albedo * (ambient + (1 - ambient) * strength * max(0, n.l))``
      with the unit light direction ``light_dir`` in camera coordinates (z toward the camera), so
      the same face can be re-lit by changing only ``light_dir``/``light_strength``/``ambient``.
    * occluders (optional): one image-space rectangle or ellipse per face drawn over everything,
      striped in a random colour. Landmarks under it are flagged ``occluded``.

Exactness
    Landmarks are projected with the same rotation, scale and translation that the renderer uses
    to cast each pixel's ray, so a landmark lies exactly on its drawn feature (corners on polygon
    vertices, eye centres inside the drawn eyes, the jaw on the skin/background boundary).
    Pixel ``(row i, col j)`` is sampled at its centre, which has coordinates ``(x=j, y=i)``; with
    ``supersample=s`` each pixel averages ``s x s`` samples inside it (same coordinate frame).
    Visibility: the head is convex and the projection orthographic, so a surface point is visible
    exactly when its camera-space normal has ``n_z > 0``; ``self_visible`` is that test, and
    ``visible = self_visible & ~occluded``.

Determinism
    :func:`sample_params` draws everything from ``numpy.random.default_rng(seed)``; the identity
    model is drawn from ``default_rng([identity_seed, identity])``; per-face pixel noise from
    ``default_rng([noise_seed])`` of that face. So the same face renders identically whatever
    batch it is in. (Float32 maths may differ by an ulp between CPUs.)

Speed: see ``_benchmark()`` (numbers are quoted in ``benchmarks/landmark-ambiguity/results.md``).

Public API: :func:`sample_params` -> :class:`FaceParams`; :func:`render` -> :class:`FaceBatch`;
:func:`generate_faces` (both in one call); :func:`project_landmarks` (no pixels); :func:`identity_model`; :class:`SyntheticFaceDataset`;
constants :data:`NUM_LANDMARKS`, :data:`LANDMARK_GROUPS`, :data:`FLIP_PERMUTATION`,
:data:`EXPRESSION_NAMES`, and :func:`eye_centers`.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from shared.errors import ConfigError

__all__ = [
    "EXPRESSION_NAMES",
    "FLIP_PERMUTATION",
    "LANDMARK_GROUPS",
    "NUM_LANDMARKS",
    "FaceBatch",
    "FaceParams",
    "IdentityModel",
    "SyntheticFaceDataset",
    "eye_centers",
    "generate_faces",
    "identity_model",
    "project_landmarks",
    "render",
    "sample_params",
]

NUM_LANDMARKS = 68
EXPRESSION_NAMES = ("mouth_open", "smile", "brow_raise", "eye_open")
NEUTRAL_EXPRESSION = np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32)

#: 0-based index ranges of the iBUG 68-point groups (point 0 is on the subject's right, i.e. the
#: image's left in a frontal face).
LANDMARK_GROUPS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),
    "right_brow": tuple(range(17, 22)),
    "left_brow": tuple(range(22, 27)),
    "nose_bridge": tuple(range(27, 31)),
    "nose_base": tuple(range(31, 36)),
    "right_eye": tuple(range(36, 42)),
    "left_eye": tuple(range(42, 48)),
    "outer_lip": tuple(range(48, 60)),
    "inner_lip": tuple(range(60, 68)),
}


def _flip_permutation() -> np.ndarray:
    pairs = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
    pairs += [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56), (60, 64), (61, 63), (67, 65)]
    perm = np.arange(NUM_LANDMARKS)
    for i, j in pairs:
        perm[i], perm[j] = j, i
    return perm


#: ``landmarks[:, FLIP_PERMUTATION]`` relabels the points of a horizontally mirrored face.
FLIP_PERMUTATION = _flip_permutation()


def eye_centers(landmarks: np.ndarray | torch.Tensor):
    """Means of points 36-41 (image-left eye) and 42-47: arrays ``(..., 2)`` each."""
    return landmarks[..., 36:42, :].mean(-2), landmarks[..., 42:48, :].mean(-2)


# --------------------------------------------------------------------------- the template


def _template_uv() -> np.ndarray:
    """Mean frontal chart positions (u, v) of the 68 landmarks."""
    p = np.zeros((NUM_LANDMARKS, 2), dtype=np.float64)
    t = np.pi * np.arange(17) / 16
    p[:17, 0] = -0.9 * np.cos(t)
    p[:17, 1] = -0.1 + 1.02 * np.sin(t) ** 1.3
    s = np.linspace(0, 1, 5)
    p[17:22, 0] = -0.62 + 0.5 * s
    p[17:22, 1] = -0.30 - 0.09 * np.sin(np.pi * (0.2 + 0.8 * s))
    p[22:27, 0] = -p[17:22, 0][::-1]
    p[22:27, 1] = p[17:22, 1][::-1]
    p[27:31, 0] = 0.0
    p[27:31, 1] = np.linspace(-0.17, 0.17, 4)
    p[31:36] = [[-0.15, 0.25], [-0.075, 0.275], [0.0, 0.29], [0.075, 0.275], [0.15, 0.25]]
    p[36:42] = [[-0.5, -0.12], [-0.41, -0.18], [-0.27, -0.18], [-0.18, -0.11], [-0.27, -0.065], [-0.41, -0.065]]
    mirror = [39, 38, 37, 36, 41, 40]
    p[42:48, 0] = -p[mirror, 0]
    p[42:48, 1] = p[mirror, 1]
    p[48:60] = [[-0.3, 0.52], [-0.2, 0.47], [-0.08, 0.45], [0.0, 0.465], [0.08, 0.45], [0.2, 0.47],
                [0.3, 0.52], [0.2, 0.585], [0.08, 0.615], [0.0, 0.62], [-0.08, 0.615], [-0.2, 0.585]]
    p[60:68] = [[-0.26, 0.52], [-0.09, 0.512], [0.0, 0.515], [0.09, 0.512], [0.26, 0.52], [0.09, 0.528],
                [0.0, 0.53], [-0.09, 0.528]]
    return p


_TEMPLATE = _template_uv()
_JAW_T = np.pi * np.arange(17) / 16
_HAIRLINE = 0.55  # forehead arc height above the jaw's end points (chart units)

# palettes (RGB in [0, 1])
_SKIN_LIGHT = np.array([0.96, 0.80, 0.69])
_SKIN_DARK = np.array([0.36, 0.23, 0.15])
_HAIR = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.09], [0.55, 0.38, 0.20], [0.85, 0.72, 0.45],
                  [0.55, 0.22, 0.10], [0.60, 0.60, 0.60]])
_IRIS = np.array([[0.30, 0.18, 0.08], [0.20, 0.35, 0.60], [0.25, 0.45, 0.25], [0.45, 0.35, 0.20]])


@dataclass(frozen=True)
class IdentityModel:
    """Per-face identity arrays (leading dimension B)."""

    chart: np.ndarray  # (B, 68, 2) neutral chart positions (u, v)
    axes: np.ndarray  # (B, 3) ellipsoid semi-axes (a, b, c)
    skin: np.ndarray  # (B, 3)
    hair: np.ndarray  # (B, 3)
    brow: np.ndarray  # (B, 3)
    iris: np.ndarray  # (B, 3)
    lips: np.ndarray  # (B, 3)


@functools.lru_cache(maxsize=65536)
def _one_identity(identity: int, identity_seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng([int(identity_seed), int(identity)])
    m = rng.standard_normal(10)
    p = _TEMPLATE.copy()
    eyes_r, eyes_l = np.arange(36, 42), np.arange(42, 48)
    # 1 eye spacing, 2 eye size
    p[eyes_r, 0] -= 0.035 * m[0]
    p[eyes_l, 0] += 0.035 * m[0]
    for idx in (eyes_r, eyes_l):
        c = p[idx].mean(0)
        p[idx] = c + (p[idx] - c) * (1 + 0.1 * np.clip(m[1], -2, 2))
    # 3 brow height
    p[17:27, 1] -= 0.035 * m[2]
    # 4 nose length, 5 nose width
    p[28:36, 1] += 0.03 * m[3] * np.array([0.33, 0.66, 1, 1, 1, 1, 1, 1])
    p[31:36, 0] *= 1 + 0.12 * np.clip(m[4], -2, 2)
    # 6 mouth width, 7 mouth height, 8 lip thickness
    p[48:68, 0] *= 1 + 0.1 * np.clip(m[5], -2, 2)
    p[48:68, 1] += 0.03 * m[6]
    mid = p[60:68, 1].mean()
    p[48:60, 1] = mid + (p[48:60, 1] - mid) * (1 + 0.2 * np.clip(m[7], -2, 2))
    # 9 jaw width (lower jaw more than the top), 10 chin height
    w = np.sin(_JAW_T) ** 2
    p[:17, 0] *= 1 + 0.06 * np.clip(m[8], -2.5, 2.5) * (0.3 + 0.7 * w)
    p[:17, 1] += 0.035 * np.clip(m[9], -2, 2) * np.sin(_JAW_T) ** 4
    p += 0.006 * rng.standard_normal(p.shape)
    # keep every point on the front half of the ellipsoid
    r = np.hypot(p[:, 0], p[:, 1])
    p *= np.minimum(1.0, 0.975 / np.maximum(r, 1e-9))[:, None]
    axes = np.array([1.0, 1.25, 0.95]) * (1 + np.array([0.05, 0.04, 0.07]) * rng.standard_normal(3))
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * rng.beta(1.3, 1.6) + 0.03 * rng.standard_normal(3)
    hair = _HAIR[rng.integers(len(_HAIR))] * (1 + 0.15 * rng.standard_normal())
    iris = _IRIS[rng.integers(len(_IRIS))]
    lips = skin * np.array([0.85, 0.52, 0.52]) + np.array([0.08, 0.0, 0.02])
    brow = hair * 0.7 + skin * 0.1
    return p, axes, skin, hair, brow, iris, lips


def identity_model(identities: np.ndarray | list[int], identity_seed: int = 0) -> IdentityModel:
    """Shape and appearance of each identity (deterministic in ``(identity_seed, identity)``)."""
    ids = np.asarray(identities, dtype=np.int64).reshape(-1)
    uniq, inv = np.unique(ids, return_inverse=True)
    parts = [_one_identity(int(i), int(identity_seed)) for i in uniq]  # cached; never mutated
    stacked = [np.stack([pp[k] for pp in parts])[inv].astype(np.float32) for k in range(7)]
    return IdentityModel(*(np.clip(a, 0, 1) if k >= 2 else a for k, a in enumerate(stacked)))


def _apply_expression(chart: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """Deform neutral chart positions (B, 68, 2) by expressions (B, 4)."""
    p = chart.copy()
    mo, sm, br, eo = (expression[:, k, None] for k in range(4))
    lower = [55, 56, 57, 58, 59, 65, 66, 67]
    p[:, lower, 1] += 0.13 * mo
    p[:, [61, 62, 63], 1] -= 0.012 * mo[:, :1]
    p[:, [49, 50, 51, 52, 53], 1] -= 0.015 * mo
    p[:, [48, 54, 60, 64], 1] += 0.05 * mo - 0.05 * sm
    p[:, [48, 60], 0] -= 0.03 * sm - 0.02 * mo
    p[:, [54, 64], 0] += 0.03 * sm - 0.02 * mo
    p[:, [49, 53, 55, 59], 1] -= 0.02 * sm
    p[:, :17, 1] += 0.07 * mo * (np.sin(_JAW_T) ** 4)[None].astype(np.float32)
    p[:, 17:27, 1] -= 0.045 * br
    for a, b, lids in ((36, 39, [37, 38, 40, 41]), (42, 45, [43, 44, 46, 47])):
        line = 0.5 * (p[:, a, 1] + p[:, b, 1])[:, None]
        p[:, lids, 1] = line + (p[:, lids, 1] - line) * eo
    r = np.hypot(p[..., 0], p[..., 1])
    return p * np.minimum(1.0, 0.975 / np.maximum(r, 1e-9))[..., None]


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class FaceParams:
    """Everything that defines a batch of faces (arrays with leading dimension B).

    Build with :func:`sample_params`; edit with :meth:`replace` (e.g. the same faces under a
    new light: ``params.replace(light_dir=...)``) or :meth:`subset`.
    """

    identity: np.ndarray  # (B,) int64
    expression: np.ndarray  # (B, 4) see EXPRESSION_NAMES
    pose: np.ndarray  # (B, 3) yaw, pitch, roll in degrees
    light_dir: np.ndarray  # (B, 3) unit vector toward the light, camera coords (x right, y down, z to camera)
    light_strength: np.ndarray  # (B,) >= 0
    ambient: np.ndarray  # (B,) in [0, 1]
    scale: np.ndarray  # (B,) head height (2 b) as a fraction of the image side
    center: np.ndarray  # (B, 2) head centre, fraction of the image side
    occluder: np.ndarray  # (B, 7) enabled, kind (0 rect, 1 ellipse), cx, cy, rx, ry (fractions), angle (rad)
    occluder_color: np.ndarray  # (B, 3)
    background: np.ndarray  # (B, 7) colour 1, colour 2, gradient angle (rad)
    noise_seed: np.ndarray  # (B,) int64

    def __len__(self) -> int:
        return len(self.identity)

    def replace(self, **changes: Any) -> FaceParams:
        return replace(self, **{k: np.asarray(v) for k, v in changes.items()})

    def subset(self, index) -> FaceParams:
        return FaceParams(**{f.name: np.asarray(getattr(self, f.name))[index] for f in fields(self)})

    def __post_init__(self) -> None:
        n = len(np.asarray(self.identity))
        for f in fields(self):
            a = np.asarray(getattr(self, f.name))
            if a.shape[:1] != (n,):
                raise ConfigError(f"FaceParams.{f.name} has leading dimension {a.shape[:1]}, expected ({n},): "
                                 "every field needs one row per face.")


def _range(value, name: str) -> tuple[float, float]:
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    if lo > hi:
        raise ConfigError(f"{name}=({lo}, {hi}): the lower bound exceeds the upper bound.")
    return float(lo), float(hi)


def sample_params(n: int, seed: int = 0, *, num_identities: int = 1000, identities=None,
                  yaw=(-30.0, 30.0), pitch=(-15.0, 15.0), roll=(-15.0, 15.0), expression_strength: float = 1.0,
                  light_elevation=(-30.0, 50.0), light_azimuth=(-60.0, 60.0), light_strength=(0.5, 1.0),
                  ambient=(0.35, 0.6), scale=(0.78, 0.9), center_jitter: float = 0.04,
                  occluder_prob: float = 0.0, occluder_size=(0.15, 0.3)) -> FaceParams:
    """Draw ``n`` random faces. Ranges are ``(low, high)`` for uniform draws (a scalar fixes it).

    Args:
        num_identities: identities are drawn uniformly from ``range(num_identities)`` unless
            ``identities`` (an int array of length n) is given.
        yaw, pitch, roll: degrees. expression_strength: 0 gives neutral faces.
        light_elevation, light_azimuth: degrees of the light direction (0, 0 = from the camera;
            positive elevation from above, positive azimuth from the image's right).
        scale: head height as a fraction of the image side; center_jitter: fraction of the side.
        occluder_prob: probability that a face gets one occluder; occluder_size: half-size range
            as a fraction of the image side.
    """
    if n < 0:
        raise ConfigError(f"n={n}: the number of faces cannot be negative.")
    if not 0 <= occluder_prob <= 1:
        raise ConfigError(f"occluder_prob={occluder_prob} must lie in [0, 1].")
    rng = np.random.default_rng(seed)

    def uni(value, name, size=n):
        lo, hi = _range(value, name)
        return rng.uniform(lo, hi, size)

    if identities is None:
        if num_identities < 1:
            raise ConfigError(f"num_identities={num_identities} must be >= 1.")
        ids = rng.integers(0, num_identities, n)
    else:
        ids = np.asarray(identities, dtype=np.int64).reshape(-1)
        if len(ids) != n:
            raise ConfigError(f"identities has {len(ids)} entries for n={n} faces.")
    s = float(expression_strength)
    expr = np.stack([np.clip(rng.beta(0.8, 2.5, n) * s, 0, 1), np.clip(rng.normal(0, 0.45, n) * s, -1, 1),
                     np.clip(rng.normal(0, 0.45, n) * s, -1, 1),
                     np.clip(1 + s * (rng.beta(5, 1.3, n) * 1.3 - 1.0), 0.05, 1.3)], 1)
    pose = np.stack([uni(yaw, "yaw"), uni(pitch, "pitch"), uni(roll, "roll")], 1)
    el, az = np.deg2rad(uni(light_elevation, "light_elevation")), np.deg2rad(uni(light_azimuth, "light_azimuth"))
    light = np.stack([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)], 1)
    centre = 0.5 + rng.uniform(-center_jitter, center_jitter, (n, 2))
    occ = np.stack([rng.random(n) < occluder_prob, rng.integers(0, 2, n), 0.5 + rng.uniform(-0.2, 0.2, n),
                    0.5 + rng.uniform(-0.15, 0.25, n), uni(occluder_size, "occluder_size"),
                    uni(occluder_size, "occluder_size"), rng.uniform(0, np.pi, n)], 1)
    bg = np.concatenate([rng.random((n, 6)), rng.uniform(0, 2 * np.pi, (n, 1))], 1)
    return FaceParams(identity=ids.astype(np.int64), expression=expr.astype(np.float32),
                      pose=pose.astype(np.float32), light_dir=light.astype(np.float32),
                      light_strength=uni(light_strength, "light_strength").astype(np.float32),
                      ambient=uni(ambient, "ambient").astype(np.float32),
                      scale=uni(scale, "scale").astype(np.float32), center=centre.astype(np.float32),
                      occluder=occ.astype(np.float32), occluder_color=rng.random((n, 3)).astype(np.float32),
                      background=bg.astype(np.float32), noise_seed=rng.integers(0, 2**31, n))


# -------------------------------------------------------------------------------- geometry


def rotation_matrices(pose_deg: np.ndarray) -> np.ndarray:
    """``R = Rz(roll) Rx(pitch) Ry(yaw)`` for poses (B, 3) in degrees -> (B, 3, 3)."""
    y, p, r = np.deg2rad(np.asarray(pose_deg, dtype=np.float64)).T
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    o, z = np.ones_like(y), np.zeros_like(y)
    ry = np.stack([np.stack([cy, z, sy], -1), np.stack([z, o, z], -1), np.stack([-sy, z, cy], -1)], -2)
    rx = np.stack([np.stack([o, z, z], -1), np.stack([z, cp, -sp], -1), np.stack([z, sp, cp], -1)], -2)
    rz = np.stack([np.stack([cr, -sr, z], -1), np.stack([sr, cr, z], -1), np.stack([z, z, o], -1)], -2)
    return rz @ rx @ ry


def _points_3d(chart: np.ndarray, axes: np.ndarray) -> np.ndarray:
    u, v = chart[..., 0], chart[..., 1]
    w = np.sqrt(np.clip(1 - u * u - v * v, 0, None))
    return np.stack([u * axes[:, None, 0], v * axes[:, None, 1], w * axes[:, None, 2]], -1)


def _face_outline(chart: np.ndarray) -> np.ndarray:
    """Skin polygon in the chart: the jaw (0..16) then a forehead arc back to point 0."""
    p0, p16 = chart[:, 0], chart[:, 16]
    s = np.linspace(0, np.pi, 11)[1:-1]
    mid, half = 0.5 * (p0 + p16), 0.5 * (p16 - p0)
    arc_u = mid[:, None, 0] + half[:, None, 0] * np.cos(s)[None]
    arc_v = mid[:, None, 1] + half[:, None, 1] * np.cos(s)[None] - _HAIRLINE * np.sin(s)[None]
    return np.concatenate([chart[:, :17], np.stack([arc_u, arc_v], -1)], 1)


def _inside(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon: points (B, P), polygons (B, M, 2) -> (B, P) bool."""
    x1, y1 = poly[:, None, :, 0], poly[:, None, :, 1]
    q = np.roll(poly, -1, axis=1)
    x2, y2 = q[:, None, :, 0], q[:, None, :, 1]
    dy = y2 - y1
    slope = np.where(dy != 0, (x2 - x1) / np.where(dy != 0, dy, 1), 0)
    yy = py[..., None]
    cross = ((y1 > yy) != (y2 > yy)) & (px[..., None] < x1 + (yy - y1) * slope)
    return (np.count_nonzero(cross, axis=-1) & 1).astype(bool)


def _inside_where(px: np.ndarray, py: np.ndarray, poly: np.ndarray, within: np.ndarray) -> np.ndarray:
    """:func:`_inside` evaluated only where ``within`` (and inside each polygon's bounding box)."""
    lo, hi = poly.min(1), poly.max(1)  # (B, 2)
    cand = within & (px >= lo[:, None, 0]) & (px <= hi[:, None, 0]) & (py >= lo[:, None, 1]) & (py <= hi[:, None, 1])
    bi, pi = np.nonzero(cand)
    out = np.zeros(px.shape, bool)
    if len(bi):
        x, y, pg = px[bi, pi], py[bi, pi], poly[bi]  # candidates and their face's polygon
        odd = np.zeros(len(bi), bool)
        m = poly.shape[1]
        for k in range(m):  # one edge at a time keeps the temporaries 1-D
            x1, y1, x2, y2 = pg[:, k, 0], pg[:, k, 1], pg[:, (k + 1) % m, 0], pg[:, (k + 1) % m, 1]
            dy = y2 - y1
            straddle = (y1 > y) != (y2 > y)
            xint = x1 + (y - y1) * (x2 - x1) / np.where(straddle, dy, 1)
            odd ^= straddle & (x < xint)
        out[bi, pi] = odd
    return out


def _in_ellipse(px, py, centre, rx, ry):
    return ((px - centre[:, None, 0]) / rx) ** 2 + ((py - centre[:, None, 1]) / ry) ** 2 < 1


# --------------------------------------------------------------------------------- render


@dataclass
class FaceBatch:
    """Rendered faces.

    images: (B, H, W, 3) uint8. landmarks: (B, 68, 2) float32 pixel coordinates (x, y), pixel
    centres at integers. visible = self_visible & ~occluded, (B, 68) bool. landmarks_3d: (B, 68, 3)
    object coordinates (identity + expression; pose-free). boxes: (B, 4) x0, y0, x1, y1 of the
    68 landmarks. params: the :class:`FaceParams` that drew them.
    """

    images: np.ndarray
    landmarks: np.ndarray
    visible: np.ndarray
    self_visible: np.ndarray
    occluded: np.ndarray
    landmarks_3d: np.ndarray
    boxes: np.ndarray
    params: FaceParams

    def __len__(self) -> int:
        return len(self.images)


def _geometry(params: FaceParams, size: int, identity_seed: int):
    ident = identity_model(params.identity, identity_seed)
    chart = _apply_expression(ident.chart, np.asarray(params.expression, np.float32))
    pts3 = _points_3d(chart, ident.axes)
    rot = rotation_matrices(params.pose)
    s = np.asarray(params.scale, np.float64) * size / (2 * ident.axes[:, 1])
    t = np.asarray(params.center, np.float64) * size - 0.5  # fraction of the side -> pixel-centre coords
    cam = s[:, None, None] * np.einsum("bij,bkj->bki", rot, pts3) + np.concatenate([t, np.zeros((len(t), 1))], 1)[:, None]
    normals = pts3 / ident.axes[:, None].astype(np.float64) ** 2
    n_cam = np.einsum("bij,bkj->bki", rot, normals)
    return ident, chart, pts3, rot, s, t, cam, n_cam


def render(params: FaceParams, size: int = 64, *, identity_seed: int = 0, supersample: int = 1,
           noise: float = 0.02, chunk: int = 32) -> FaceBatch:
    """Render ``params`` as ``size x size`` RGB faces with their exact landmarks.

    ``supersample``: samples per pixel side (anti-aliasing; the cost grows with its square).
    ``noise``: std of per-pixel Gaussian noise (fraction of 255). ``chunk``: faces per vectorised
    step (memory only; results do not depend on it).
    """
    if size < 8:
        raise ConfigError(f"size={size} is too small to draw a face; use at least 8 pixels.")
    if supersample < 1:
        raise ConfigError(f"supersample={supersample} must be >= 1.")
    n = len(params)
    ident, chart, pts3, rot, s, t, cam, n_cam = _geometry(params, size, identity_seed)
    landmarks = cam[..., :2].astype(np.float32)
    self_visible = n_cam[..., 2] > 0
    occluded = _occluded(params, landmarks, size)
    images = np.empty((n, size, size, 3), np.uint8)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        images[sl] = _render_chunk(params.subset(sl), ident_slice(ident, sl), chart[sl], rot[sl], s[sl], t[sl],
                                   size, supersample, noise)
    boxes = np.concatenate([landmarks.min(1), landmarks.max(1)], 1)
    return FaceBatch(images, landmarks, self_visible & ~occluded, self_visible, occluded,
                     pts3.astype(np.float32), boxes.astype(np.float32), params)


def project_landmarks(params: FaceParams, size: int = 64, *, identity_seed: int = 0):
    """Landmarks (B, 68, 2) and self-visibility (B, 68) of ``params`` without drawing pixels
    (identical to what :func:`render` returns; cheap enough for shape-only experiments)."""
    *_, cam, n_cam = _geometry(params, size, identity_seed)
    return cam[..., :2].astype(np.float32), n_cam[..., 2] > 0


def ident_slice(ident: IdentityModel, sl) -> IdentityModel:
    return IdentityModel(*(getattr(ident, f.name)[sl] for f in fields(ident)))


def _occluder_mask(params: FaceParams, px: np.ndarray, py: np.ndarray, size: int) -> np.ndarray:
    occ = np.asarray(params.occluder, np.float32)
    on, kind, cx, cy, rx, ry, ang = (occ[:, k, None] for k in range(7))
    dx, dy = px - (cx * size - 0.5), py - (cy * size - 0.5)
    ca, sa = np.cos(ang), np.sin(ang)
    lx, ly = (ca * dx + sa * dy) / (rx * size), (-sa * dx + ca * dy) / (ry * size)
    rect = (np.abs(lx) < 1) & (np.abs(ly) < 1)
    ell = lx * lx + ly * ly < 1
    return (on > 0.5) & np.where(kind > 0.5, ell, rect)


def _occluded(params: FaceParams, landmarks: np.ndarray, size: int) -> np.ndarray:
    return _occluder_mask(params, landmarks[..., 0], landmarks[..., 1], size)


def _render_chunk(params: FaceParams, ident: IdentityModel, chart, rot, s, t, size, ss, noise) -> np.ndarray:
    b = len(params)
    f32 = np.float32
    coords = ((np.arange(size * ss, dtype=np.float64) + 0.5) / ss - 0.5)
    gy, gx = np.meshgrid(coords, coords, indexing="ij")
    px = np.broadcast_to(gx.reshape(1, -1), (b, gx.size))
    py = np.broadcast_to(gy.reshape(1, -1), (b, gy.size))
    # ray (px, py, z) -> object coords q0 + z d; intersect the ellipsoid, keep the front hit
    inv_axes2 = 1.0 / ident.axes.astype(np.float64) ** 2  # (b, 3)
    rel = np.stack([px - t[:, None, 0], py - t[:, None, 1]], -1) / s[:, None, None]  # (b, P, 2)
    q0 = rel[..., :1] * rot[:, None, 0, :] + rel[..., 1:] * rot[:, None, 1, :]  # R^T (rel, 0)
    d = rot[:, 2, :] / s[:, None]  # R^T e_z / s
    qa = (d * d * inv_axes2).sum(-1)[:, None]
    qb = (q0 * (d * inv_axes2)[:, None]).sum(-1)
    qc = (q0 * q0 * inv_axes2[:, None]).sum(-1) - 1
    disc = qb * qb - qa * qc
    hit = disc > 0
    z = (-qb + np.sqrt(np.clip(disc, 0, None))) / qa
    obj = q0 + z[..., None] * d[:, None]
    u = (obj[..., 0] / ident.axes[:, None, 0]).astype(f32)
    v = (obj[..., 1] / ident.axes[:, None, 1]).astype(f32)
    front = hit & (obj[..., 2] > 0)
    light = np.asarray(params.light_dir, np.float64)
    light = light / np.linalg.norm(light, axis=-1, keepdims=True)
    l_obj = np.einsum("bij,bi->bj", rot, light) * inv_axes2  # n.l = (R D obj).l = obj.(D R^T l)
    n_obj = obj * inv_axes2[:, None]
    n_dot_l = (obj * l_obj[:, None]).sum(-1) / (np.sqrt((n_obj * n_obj).sum(-1)) + 1e-12)
    amb = np.asarray(params.ambient, np.float64)[:, None]
    shade = amb + (1 - amb) * np.asarray(params.light_strength, np.float64)[:, None] * np.clip(n_dot_l, 0, None)
    chart = chart.astype(f32)

    # background: a linear gradient between two colours
    bg = np.asarray(params.background, np.float32)
    ang = bg[:, 6:7]
    g = ((np.cos(ang) * px + np.sin(ang) * py) / size + 0.5).clip(0, 1)[..., None]
    img = bg[:, None, 0:3] * (1 - g) + bg[:, None, 3:6] * g

    # material labels, painted back to front; each test only runs on candidate pixels
    skin = ident.skin
    table = np.stack([ident.hair, skin, ident.brow, np.clip(skin * 1.08, 0, 1), skin * 0.8, skin * 0.3,
                      ident.hair * 0.4, np.broadcast_to(np.array([0.93, 0.92, 0.88], f32), skin.shape), ident.iris,
                      np.zeros_like(skin), ident.lips, np.broadcast_to(np.array([0.25, 0.05, 0.06], f32), skin.shape)],
                     1).astype(f32)  # (b, 12, 3)
    HAIR, SKIN, BROW, BRIDGE, NOSE, NOSTRIL, LID, SCLERA, IRIS, PUPIL, LIPS, MOUTH = range(12)
    face = _inside_where(u, v, _face_outline(chart), front)
    ear_v = np.maximum(chart[:, 0, 1], chart[:, 16, 1])[:, None] + 0.02
    hair = hit & ~face & ((v < ear_v) | ~front)
    label = np.where(face, SKIN, HAIR).astype(np.int8)

    def region(poly, within=face):
        return _inside_where(u, v, poly, within)

    for brow in (slice(17, 22), slice(22, 27)):
        top = chart[:, brow]
        label[region(np.concatenate([top, top[:, ::-1] + np.array([0, 0.055], f32)], 1))] = BROW
    bridge = chart[:, 27:31]
    label[region(np.concatenate([bridge - [0.025, 0], bridge[:, ::-1] + [0.025, 0]], 1))] = BRIDGE
    label[region(chart[:, 30:36])] = NOSE
    for a, b2 in ((31, 32), (34, 35)):
        c = 0.5 * (chart[:, a] + chart[:, b2]) - [0, 0.012]
        label[face & _in_ellipse(u, v, c, 0.028, 0.014)] = NOSTRIL
    for sl in (slice(36, 42), slice(42, 48)):
        pts = chart[:, sl]
        c = pts.mean(1)
        label[region(c[:, None] + (pts - c[:, None]) * np.array([1.12, 1.45], f32))] = LID
        eye = region(pts)
        label[eye] = SCLERA
        rad = np.abs(0.36 * (pts[:, 3, 0] - pts[:, 0, 0]))[:, None]
        label[eye & _in_ellipse(u, v, c, rad, rad)] = IRIS
        label[eye & _in_ellipse(u, v, c, 0.45 * rad, 0.45 * rad)] = PUPIL
    label[region(chart[:, 48:60])] = LIPS
    label[region(chart[:, 60:68])] = MOUTH
    albedo = np.take_along_axis(table, label.astype(np.int64)[..., None], axis=1)  # (b, P, 3)

    lit = (albedo * shade[..., None]).astype(f32)
    img = np.where(hit[..., None] & (face | hair)[..., None], lit, img)
    occ = _occluder_mask(params, px, py, size)
    stripes = (0.75 + 0.25 * np.sign(np.sin((px + py) * 0.6)))[..., None]
    img = np.where(occ[..., None], np.asarray(params.occluder_color, f32)[:, None] * stripes, img)
    img = img.reshape(b, size, ss, size, ss, 3).mean((2, 4)) if ss > 1 else img.reshape(b, size, size, 3)
    if noise > 0:
        for i, ns in enumerate(np.asarray(params.noise_seed)):
            img[i] += noise * np.random.default_rng([int(ns)]).standard_normal(img[i].shape, dtype=f32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def generate_faces(n: int, size: int = 64, seed: int = 0, *, identity_seed: int = 0, supersample: int = 1,
                   noise: float = 0.02, **sample_kwargs: Any) -> FaceBatch:
    """``render(sample_params(n, seed, **sample_kwargs), size, ...)`` in one call."""
    return render(sample_params(n, seed, **sample_kwargs), size, identity_seed=identity_seed,
                  supersample=supersample, noise=noise)


class SyntheticFaceDataset(Dataset):
    """A rendered :class:`FaceBatch` as a torch dataset of ``(image, landmarks, visible)``:
    image (3, H, W) float in [0, 1], landmarks (68, 2) float32 pixels, visible (68,) bool."""

    def __init__(self, batch: FaceBatch):
        self.batch = batch
        self.images = torch.from_numpy(batch.images).permute(0, 3, 1, 2).contiguous()
        self.landmarks = torch.from_numpy(batch.landmarks)
        self.visible = torch.from_numpy(batch.visible)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].float() / 255.0, self.landmarks[i], self.visible[i]


def _benchmark(n: int = 512, sizes=(64, 128), supersample: int = 1) -> dict[int, float]:
    """Faces per second on the current thread (one core)."""
    out = {}
    for size in sizes:
        params = sample_params(n, 0, occluder_prob=0.2)
        t0 = time.perf_counter()
        render(params, size, supersample=supersample)
        out[size] = n / (time.perf_counter() - t0)
    return out


if __name__ == "__main__":  # pragma: no cover
    print(_benchmark())
