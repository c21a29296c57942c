"""Semantic-ambiguity simulator: training labels drawn the way annotators place them.

Points with no clear definition (face contour, eyebrows, nose bridge; configurable) slide along the
local contour tangent: each annotator has a consistent per-landmark bias along the tangent, plus a
random per-image slide, plus a little noise normal to the contour. Points with a clear definition
(eye and mouth corners, nostrils, ...) get only small isotropic noise. All amounts are fractions of
the inter-ocular distance (outer eye corners) of each face, so they scale with the face.
Test labels are never passed through this: they are the renderer's exact landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from shared.data.faces import LANDMARK_GROUPS


@dataclass(frozen=True)
class AmbiguityConfig:
    weak_groups: tuple[str, ...] = ("jaw", "right_brow", "left_brow", "nose_bridge")
    num_annotators: int = 5
    bias_std: float = 0.08  # per-annotator, per-landmark tangential bias (x inter-ocular distance)
    tangent_std: float = 0.10  # per-image tangential slide
    normal_std: float = 0.015  # per-image noise along the contour normal
    strong_std: float = 0.015  # isotropic noise of well-defined points


def weak_mask(groups=AmbiguityConfig.weak_groups, num_landmarks: int = 68) -> np.ndarray:
    unknown = [g for g in groups if g not in LANDMARK_GROUPS]
    if unknown:
        raise ValueError(f"unknown landmark group(s) {unknown}; choose from {sorted(LANDMARK_GROUPS)}.")
    m = np.zeros(num_landmarks, bool)
    for g in groups:
        m[list(LANDMARK_GROUPS[g])] = True
    return m


def _neighbours() -> tuple[np.ndarray, np.ndarray]:
    prev, nxt = np.arange(68), np.arange(68)
    for idx in LANDMARK_GROUPS.values():
        idx = list(idx)
        for j, k in enumerate(idx):
            prev[k] = idx[max(j - 1, 0)]
            nxt[k] = idx[min(j + 1, len(idx) - 1)]
    return prev, nxt


_PREV, _NEXT = _neighbours()


def tangents(landmarks: np.ndarray) -> np.ndarray:
    """Unit contour tangents (N, 68, 2): central differences within each group, one-sided at ends."""
    t = landmarks[:, _NEXT] - landmarks[:, _PREV]
    return t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-9)


def inter_ocular_np(landmarks: np.ndarray) -> np.ndarray:
    return np.linalg.norm(landmarks[:, 36] - landmarks[:, 45], axis=-1)


def simulate_annotations(landmarks: np.ndarray, cfg: AmbiguityConfig = AmbiguityConfig(), seed: int = 0,
                         annotators: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Noisy annotations of exact 68-point ``landmarks`` (N, 68, 2). Returns (labels, annotator id per image)."""
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        raise ValueError(f"simulate_annotations needs (N, 68, 2) landmarks, got {landmarks.shape}.")
    rng = np.random.default_rng(seed)
    n = len(landmarks)
    bias = rng.normal(0, cfg.bias_std, (cfg.num_annotators, 68))
    if annotators is None:
        annotators = rng.integers(0, cfg.num_annotators, n)
    weak = weak_mask(cfg.weak_groups)
    tan = tangents(landmarks)
    nor = np.stack([-tan[..., 1], tan[..., 0]], -1)
    iod = inter_ocular_np(landmarks)[:, None, None]
    slide = bias[annotators] + rng.normal(0, cfg.tangent_std, (n, 68))
    off_weak = tan * slide[..., None] + nor * rng.normal(0, cfg.normal_std, (n, 68, 1))
    off_strong = rng.normal(0, cfg.strong_std, (n, 68, 2))
    off = np.where(weak[None, :, None], off_weak, off_strong) * iod
    return (landmarks + off).astype(np.float32), annotators
