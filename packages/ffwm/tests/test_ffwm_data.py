"""Synthetic pairs (geometry, lights, masks, correspondences, flips) and the Multi-PIE / LFW readers on
fixtures written in their layouts."""

import numpy as np
import pytest
import torch
from PIL import Image

from ffwm.metrics import lfw_accuracy
from ffwm.readers import (
    LFWImages,
    MultiPIEPairs,
    merge_rank1_by_angle,
    parse_multipie_name,
    read_lfw_pairs,
)
from ffwm.synthetic import (
    PairConfig,
    PairDataset,
    chart_lattice,
    correspondence_maps,
    flip_item,
    load_pairs,
    make_pairs,
    project_chart,
)
from shared.data import DatasetNotFoundError
from shared.data.faces import identity_model, project_landmarks, rotation_matrices, sample_params

CFG = PairConfig(n=12, size=32, seed=3, num_identities=5, extras=True)


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(CFG)


def test_projection_matches_the_renderer_landmarks():
    p = sample_params(6, 0, yaw=(-80, 80), expression_strength=0.0)
    chart = identity_model(p.identity).chart
    ours, vis = project_chart(p, chart, 48)
    ref, ref_vis = project_landmarks(p, 48)
    assert np.allclose(ours, ref, atol=1e-4) and np.array_equal(vis, ref_vis)


def test_pairs_shapes_determinism_and_identity_sharing(pairs):
    again = make_pairs(CFG)
    for k in pairs:
        assert np.array_equal(pairs[k], again[k]), k
    assert pairs["profile"].shape == (12, 32, 32, 3) and pairs["frontal"].dtype == np.uint8
    assert set(np.abs(pairs["yaw"]).astype(int)) <= {15, 30, 45, 60, 75, 90}
    assert pairs["pts_profile"].shape == pairs["pts_frontal"].shape == (12, len(chart_lattice(24)), 2)
    other = make_pairs(PairConfig(n=12, size=32, seed=4, num_identities=5))
    assert not np.array_equal(other["profile"], pairs["profile"])


def test_ground_truth_light_is_inconsistent_and_the_consistent_target_is_not(pairs):
    lit = lambda k: pairs[k].astype(np.float32)  # noqa: E731
    assert np.abs(lit("frontal") - lit("consistent")).mean() > 5  # the problem exists
    same = make_pairs(PairConfig(n=12, size=32, seed=3, num_identities=5, gt_light="consistent"))
    assert np.array_equal(same["frontal"], same["consistent"])
    # the consistent target is the profile's own (head-fixed) light: a pure-ambient face looks the same
    # from both cameras, and the camera-fixed ground truth equals it when the yaw is 0
    zero = make_pairs(PairConfig(n=4, size=32, seed=3, num_identities=5, yaws=(0,), gt_gain=(1.0, 1.0, 1.0)))
    assert np.abs(zero["frontal"].astype(int) - zero["consistent"].astype(int)).max() <= 1


def test_masks_are_the_head_silhouette(pairs):
    m = pairs["mask_frontal"]
    assert 0.15 < m.mean() < 0.6 and not m[:, 0, 0].any()  # corners are background
    assert m[:, 16, 16].all()  # the face centre is foreground
    bg = pairs["consistent"][~m].astype(np.float32)
    assert np.abs(bg - 127.5).mean() < 5  # the grey background


def test_dense_correspondences_follow_the_yaw(pairs):
    # a point visible in the profile lands on the same chart location: its frontal position is near the
    # profile position for small yaws and far for large ones
    d = np.linalg.norm(pairs["pts_frontal"] - pairs["pts_profile"], axis=-1)
    small, large = np.abs(pairs["yaw"]) <= 30, np.abs(pairs["yaw"]) >= 75
    if small.any() and large.any():
        assert d[small].mean() < d[large].mean()
    # the gate is the profile's self-visibility: about half the points disappear at +-90
    at90 = np.abs(pairs["yaw"]) == 90
    if at90.any():
        assert 0.3 < pairs["gate"][at90].mean() < 0.75


def test_occlusion_map_is_on_the_side_turned_away():
    p = sample_params(2, 0, identities=[1, 1], yaw=0.0, pitch=0.0, roll=0.0, center_jitter=0.0, scale=0.8)
    occ, hit, grid = correspondence_maps(p, np.array([60.0, -60.0]), 64)
    cols = np.nonzero(occ[0].any(0))[0]
    # positive yaw turns the nose toward the image's right: the face's image-right side turns away
    rot = rotation_matrices(np.array([[60.0, 0, 0]]))[0]
    assert rot[2, 0] < 0 and cols.min() > 32  # n_z = R[2, 0] n_x + ...: points with n_x > 0 are hidden
    assert np.array_equal(occ[1], occ[0][:, ::-1])  # +-yaw: mirror images
    assert grid.shape == (2, 64, 64, 2) and (np.abs(grid[hit]) < 1.5).all()


def test_true_grid_samples_the_profile_into_the_consistent_frontal():
    cfg = PairConfig(n=6, size=64, seed=1, num_identities=3, yaws=(30,), extras=True, noise=0.0)
    a = make_pairs(cfg)
    prof = torch.from_numpy(a["profile"]).permute(0, 3, 1, 2).float() / 255
    cons = torch.from_numpy(a["consistent"]).permute(0, 3, 1, 2).float() / 255
    grid = torch.from_numpy(a["true_grid"].astype(np.float32))
    warped = torch.nn.functional.grid_sample(prof, grid, align_corners=False)
    vis = torch.from_numpy(a["mask_frontal"] & ~a["occluded"])[:, None].float()
    err = ((warped - cons).abs() * vis).sum() / (vis.sum() * 3)
    wrong = ((torch.nn.functional.grid_sample(prof, grid.flip(2), align_corners=False) - cons).abs() * vis).sum() / (vis.sum() * 3)
    assert err < 0.06 and wrong > 2 * err  # same head-fixed light: warping the profile gives the target


def test_dataset_flip_doubling(pairs):
    ds = PairDataset(pairs, flip_double=True)
    assert len(ds) == 24
    a, b = ds[1], ds[13]
    assert torch.equal(b["profile"], a["profile"].flip(-1)) and b["yaw"] == -a["yaw"]
    assert torch.allclose(b["pts_frontal"][:, 0], 31 - a["pts_frontal"][:, 0])
    # the landmarks are relabelled: the mirrored right-eye corner (36) is the old left-eye corner (45)
    assert torch.allclose(b["landmarks_frontal"][36, 0], 31 - a["landmarks_frontal"][45, 0])
    assert torch.allclose(flip_item(flip_item(a, 32), 32)["landmarks_frontal"], a["landmarks_frontal"], atol=1e-5)
    assert a["profile"].dtype == torch.float32 and a["profile"].max() <= 1 and a["mask_frontal"].shape == (1, 32, 32)


def test_pairs_cache_round_trip(tmp_path):
    cfg = PairConfig(n=3, size=32, seed=0, num_identities=2)
    a = load_pairs(cfg, tmp_path)
    files = list((tmp_path / "ffwm").glob("pairs-*.npz"))
    assert len(files) == 1
    b = load_pairs(cfg, tmp_path)
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ Multi-PIE


def _png(path, value, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_multipie_file_names_parse():
    n = parse_multipie_name("001_01_01_051_07.png")
    assert (n.subject, n.session, n.recording, n.camera, n.illumination) == ("001", "01", "01", "051", "07")
    assert n.key == "001_01_01_051" and n.yaw == 0 and parse_multipie_name("250_02_01_240_13.png").yaw == 90
    with pytest.raises(ValueError, match="SSS_ss_rr_ccc_ii"):
        parse_multipie_name("001-01-01-051-07.png")
    with pytest.raises(ValueError, match="camera"):
        parse_multipie_name("001_01_01_999_07.png")


def test_multipie_pairs_share_subject_session_recording_and_illumination(tmp_path):
    root = tmp_path / "multipie"
    img = root / "train" / "images"
    for sub in ("001", "002"):
        for ill in ("07", "13"):
            _png(img / f"{sub}_01_01_051_{ill}.png", 100 + int(ill))
            _png(img / f"{sub}_01_01_090_{ill}.png", 20 + int(ill))
            _png(img / f"{sub}_01_01_081_{ill}.png", 5)  # elevated camera: excluded
    _png(img / "003_01_01_190_07.png", 30)  # no frontal: not paired
    (root / "train" / "masks").mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(root / "train" / "masks" / "001_01_01_090.png")
    lm = {"lm_S": {"001_01_01_090": np.array([[10, 20], [30, 40]])}, "lm_F": {"001_01_01_090": np.array([[12, 22], [32, 42]])},
          "gate": {"001_01_01_090": np.array([1, 0])}}
    np.save(root / "train" / "landmarks.npy", lm, allow_pickle=True)
    ds = MultiPIEPairs(root, "train", image_size=16)
    assert len(ds) == 4
    for i in range(len(ds)):
        pf, ff, n = ds.pairs[i]
        assert ff == f"{n.subject}_01_01_051_{n.illumination}.png" and n.camera == "090"
        item = ds[i]
        assert item["profile"][0, 0, 0].item() == pytest.approx((20 + int(n.illumination)) / 255)
        assert item["frontal"][0, 0, 0].item() == pytest.approx((100 + int(n.illumination)) / 255)
        assert item["yaw"].item() == -60
    first = next(ds[i] for i in range(4) if ds.pairs[i][2].subject == "001")
    assert first["mask_profile"].min() == 1.0 and torch.equal(first["gate"], torch.tensor([True, False]))
    assert torch.allclose(first["pts_profile"], torch.tensor([[10.0, 20.0], [30.0, 40.0]]) * 16 / 128)
    assert ds.gallery() == ["001_01_01_051_07.png", "002_01_01_051_07.png"]


def test_multipie_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="multipie"):
        MultiPIEPairs(tmp_path / "multipie", "train")
    img = tmp_path / "mp" / "train" / "images"
    _png(img / "001_01_01_090_07.png", 1)
    with pytest.raises(ValueError, match="frontal"):
        MultiPIEPairs(tmp_path / "mp", "train")


def test_rank1_merge_by_angle():
    merged = merge_rank1_by_angle({"050": (9, 10), "140": (10, 10), "110": (1, 4), "240": (0, 4)})
    assert merged == {15: 95.0, 90: 12.5}


# ------------------------------------------------------------------------------------------ LFW


def _lfw(root, folds=2, per=1):
    lines = [f"{folds}\t{per}"]
    names = []
    for f in range(folds):
        a, b = f"Person_{f}A", f"Person_{f}B"
        lines += [f"{a}\t1\t2"] * per + [f"{a}\t1\t{b}\t1"] * per
        names += [(a, 1), (a, 2), (b, 1)]
    (root).mkdir(parents=True, exist_ok=True)
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    for name, k in names:
        _png(root / "images" / name / f"{name}_{k:04d}.jpg", 50 + k)
    return names


def test_lfw_pairs_and_images(tmp_path):
    _lfw(tmp_path / "lfw")
    pairs, labels, folds = read_lfw_pairs(tmp_path / "lfw" / "pairs.txt")
    assert pairs[0] == ("Person_0A", 1, "Person_0A", 2) and labels == [True, False, True, False]
    assert folds == [0, 0, 1, 1]
    ds = LFWImages(tmp_path / "lfw", image_size=8)
    assert len(ds) == 6 and ds[0].shape == (3, 8, 8) and ds.pair_indices().shape == (4, 2)


def test_lfw_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="pairs"):
        read_lfw_pairs(tmp_path / "nope.txt")
    (tmp_path / "bad.txt").write_text("2\t1\nA\t1\t2\n")
    with pytest.raises(ValueError, match="header"):
        read_lfw_pairs(tmp_path / "bad.txt")
    _lfw(tmp_path / "lfw")
    (tmp_path / "lfw" / "images" / "Person_1B" / "Person_1B_0001.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="Person_1B_0001"):
        LFWImages(tmp_path / "lfw")


def test_lfw_accuracy_protocol():
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3, 0.95, 0.05])
    labels = np.array([1, 1, 0, 0, 1, 0, 1, 0])
    out = lfw_accuracy(scores, labels, np.repeat(np.arange(4), 2))
    assert out["acc"] == 100.0 and out["auc"] == 100.0
    flipped = lfw_accuracy(-scores, labels, np.repeat(np.arange(4), 2))
    assert flipped["auc"] == 0.0
