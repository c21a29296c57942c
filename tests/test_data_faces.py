"""The synthetic face renderer (shared.data.faces): exact landmarks, determinism, independent factors."""

import numpy as np
import pytest

from shared.data import faces
from shared.data.faces import FLIP_PERMUTATION, eye_centers, generate_faces, render, sample_params

MAGENTA = np.array([1, 0, 1, 1, 0, 1, 0], np.float32)


def _frontal(n=6, **kw):
    kw = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0, **kw}
    return sample_params(n, seed=3, **kw)


def test_eye_centres_lie_in_the_drawn_pupils():
    p = _frontal(8, yaw=(-20, 20), pitch=(-10, 10), roll=(-20, 20), expression_strength=0.0)
    b = render(p, 128, noise=0.0)
    for centre in eye_centers(b.landmarks):
        ij = np.round(centre).astype(int)
        pix = b.images[np.arange(len(b)), ij[:, 1], ij[:, 0]]
        assert (pix == 0).all(), "the pupil (black albedo) must be drawn at the mean of the eye landmarks"


def test_inner_landmarks_land_on_the_face_not_the_background():
    p = _frontal(6, yaw=(-25, 25), roll=(-15, 15)).replace(background=np.tile(MAGENTA, (6, 1)))
    b = render(p, 96, noise=0.0)
    ij = np.round(b.landmarks[:, 17:]).astype(int)
    pix = b.images[np.arange(6)[:, None], ij[..., 1], ij[..., 0]]
    assert not np.all(pix == [255, 0, 255], axis=-1).any()
    # and the corners of the image are background
    assert (b.images[:, 0, 0] == [255, 0, 255]).all()


def test_jaw_is_the_skin_background_boundary():
    p = _frontal(4, expression_strength=0.0).replace(background=np.tile(MAGENTA, (4, 1)))
    b = render(p, 128, noise=0.0)
    bg = np.all(b.images == [255, 0, 255], axis=-1)
    centre = b.landmarks[:, 27:36].mean(1, keepdims=True)
    jaw = b.landmarks[:, 2:15]
    direction = (jaw - centre) / np.linalg.norm(jaw - centre, axis=-1, keepdims=True)
    inner, outer = np.round(jaw - 2.5 * direction).astype(int), np.round(jaw + 2.5 * direction).astype(int)
    rows = np.arange(4)[:, None]
    assert not bg[rows, inner[..., 1], inner[..., 0]].any()
    assert bg[rows, outer[..., 1], outer[..., 0]].all()


def test_deterministic_per_seed_and_independent_of_the_batch():
    a, b = generate_faces(5, 48, seed=7, occluder_prob=0.5), generate_faces(5, 48, seed=7, occluder_prob=0.5)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    c = generate_faces(5, 48, seed=8)
    assert not np.array_equal(a.images, c.images)
    alone = render(a.params.subset(slice(3, 4)), 48)
    np.testing.assert_array_equal(alone.images[0], a.images[3])


def test_identity_and_pose_vary_independently():
    base = sample_params(4, seed=1, identities=[5, 5, 5, 9]).replace(
        expression=np.tile(faces.NEUTRAL_EXPRESSION, (4, 1)))
    poses = np.array([[0, 0, 0], [30, -10, 5], [-20, 10, -10], [30, -10, 5]], np.float32)
    b = render(base.replace(pose=poses), 64)
    # the same identity has the same 3D shape under any pose ...
    np.testing.assert_allclose(b.landmarks_3d[0], b.landmarks_3d[1])
    np.testing.assert_allclose(b.landmarks_3d[0], b.landmarks_3d[2])
    # ... whose projection moves with the pose; another identity has another shape
    assert np.abs(b.landmarks[0] - b.landmarks[1]).max() > 2
    assert np.abs(b.landmarks_3d[1] - b.landmarks_3d[3]).max() > 0.01
    # projection is exactly scale * R p + t
    s = base.scale * 64 / (2 * faces.identity_model(base.identity).axes[:, 1])
    rot = faces.rotation_matrices(poses)
    proj = s[:, None, None] * np.einsum("bij,bkj->bki", rot, b.landmarks_3d.astype(np.float64))
    np.testing.assert_allclose(b.landmarks, proj[..., :2] + base.center[:, None] * 64 - 0.5, atol=1e-3)


def test_project_landmarks_equals_render():
    p = sample_params(4, seed=2, yaw=(-60, 60))
    lm, vis = faces.project_landmarks(p, 48)
    b = render(p, 48)
    np.testing.assert_array_equal(lm, b.landmarks)
    np.testing.assert_array_equal(vis, b.self_visible)


def test_relighting_changes_pixels_only():
    p = _frontal(3)
    a = render(p, 64, noise=0.0)
    lit = p.replace(light_dir=np.tile([0.8, -0.2, 0.56], (3, 1)).astype(np.float32))
    b = render(lit, 64, noise=0.0)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert np.abs(a.images.astype(int) - b.images.astype(int)).max() > 20
    flat = p.replace(ambient=np.ones(3, np.float32))  # full ambient: the light direction no longer matters
    np.testing.assert_array_equal(render(flat, 64, noise=0.0).images, render(flat.replace(light_dir=lit.light_dir), 64,
                                                                            noise=0.0).images)


def test_yaw_sign_and_self_occlusion():
    p = _frontal(2).replace(pose=np.array([[70, 0, 0], [-70, 0, 0]], np.float32))
    b = render(p, 64)
    nose_dx = b.landmarks[:, 30, 0] - 0.5 * (b.landmarks[:, 0, 0] + b.landmarks[:, 16, 0])
    assert nose_dx[0] > 0 > nose_dx[1]
    # turning toward +x hides the image-right side of the jaw (points 12..16), and vice versa
    assert not b.self_visible[0, 13:17].any() and b.self_visible[0, 0:4].all()
    assert not b.self_visible[1, 0:4].any() and b.self_visible[1, 13:17].all()
    frontal = render(_frontal(2), 64)
    assert frontal.self_visible.all()


def test_occluder_flags_match_the_drawn_occluder():
    p = _frontal(20, occluder_prob=1.0, occluder_size=(0.2, 0.3))
    b = render(p, 64, noise=0.0)
    assert b.occluded.any() and not b.occluded.all()
    np.testing.assert_array_equal(b.visible, b.self_visible & ~b.occluded)
    colour = np.round(p.occluder_color * 255)
    i, k = np.nonzero(b.occluded)
    ij = np.round(b.landmarks[i, k]).astype(int)
    pix = b.images[i, ij[:, 1], ij[:, 0]].astype(float)
    # stripes are 1.0 or 0.5 times the occluder colour
    ratio_ok = np.isclose(pix, colour[i], atol=1.01).all(1) | np.isclose(pix, np.round(colour[i] * 0.5), atol=1.01).all(1)
    assert ratio_ok.mean() > 0.9  # landmarks exactly on a stripe boundary may round to the neighbour


def test_flip_permutation_mirrors_the_template():
    assert (FLIP_PERMUTATION[FLIP_PERMUTATION] == np.arange(68)).all()
    mirrored = faces._TEMPLATE[FLIP_PERMUTATION] * [-1, 1]
    np.testing.assert_allclose(mirrored, faces._TEMPLATE, atol=1e-12)


def test_supersampling_keeps_the_landmark_frame():
    p = _frontal(2, expression_strength=0.0)
    a, b = render(p, 64, noise=0.0), render(p, 64, noise=0.0, supersample=3)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert np.abs(a.images.astype(float) - b.images.astype(float)).mean() < 4


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        render(sample_params(1), 4)
    with pytest.raises(ValueError, match="leading dimension"):
        sample_params(3).replace(pose=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="lower bound"):
        sample_params(3, yaw=(10, -10))
