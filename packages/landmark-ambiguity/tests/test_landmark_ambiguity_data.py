"""Readers on fixtures written in the publishers' formats: .pts (1-based), 300W layout + face-box .mat,
AFLW sqlite (19-point protocol), 300-VW frames; crops map landmarks exactly."""

import sqlite3

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from landmark_ambiguity.data import (crop_samples, read_300vw, read_300w, read_aflw, read_pts, write_pts,
                                     DatasetNotFoundError)


def test_pts_round_trip_with_1_based_offset(tmp_path):
    p = tmp_path / "a.pts"
    p.write_text("version: 1\nn_points: 3\n{\n1 1\n10.5 20.25\n3 4\n}\n")
    np.testing.assert_allclose(read_pts(p), [[0, 0], [9.5, 19.25], [2, 3]])
    pts = np.random.default_rng(0).uniform(0, 100, (68, 2)).astype(np.float32)
    write_pts(tmp_path / "b.pts", pts)
    assert (tmp_path / "b.pts").read_text().splitlines()[3] == f"{pts[0, 0] + 1:.3f} {pts[0, 1] + 1:.3f}"
    np.testing.assert_allclose(read_pts(tmp_path / "b.pts"), pts, atol=1e-3)
    (tmp_path / "bad.pts").write_text("version: 1\nn_points: 4\n{\n1 1\n}\n")
    with pytest.raises(ValueError, match="n_points says 4"):
        read_pts(tmp_path / "bad.pts")


def _face_image(path, pts, size=80):
    img = np.zeros((size, size, 3), np.uint8)
    for x, y in np.round(pts).astype(int):
        img[y, x] = 255
    Image.fromarray(img).save(path)


def _write_300w(root, rng):
    sets = {"afw": 2, "helen/trainset": 1, "lfpw/trainset": 1, "helen/testset": 2, "lfpw/testset": 1, "ibug": 1}
    for folder, n in sets.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            pts = rng.uniform(20, 60, (68, 2))
            write_pts(root / folder / f"img{i}.pts", pts)
            _face_image(root / folder / f"img{i}.png", pts)


def test_300w_splits_boxes_and_crops(tmp_path):
    rng = np.random.default_rng(0)
    _write_300w(tmp_path, rng)
    assert [len(read_300w(tmp_path, s)) for s in ("train", "common", "challenging", "full")] == [4, 3, 1, 4]
    (tmp_path / "Bounding Boxes").mkdir()
    boxes = np.array([{"imgName": "img0.png", "bb_detector": np.array([11.0, 12.0, 61.0, 70.0]),
                       "bb_ground_truth": np.array([21.0, 21.0, 61.0, 61.0])}], dtype=object)
    savemat(tmp_path / "Bounding Boxes" / "bounding_boxes_ibug.mat", {"bounding_boxes": boxes})
    s = read_300w(tmp_path, "challenging", box_source="ground_truth")
    np.testing.assert_allclose(s[0].box, [20, 20, 60, 60])  # 1-based -> 0-based
    # crops: the bright pixel at each (rounded) landmark lands at the mapped landmark position
    samples = read_300w(tmp_path, "challenging")
    for sm in samples:
        sm.landmarks = np.round(sm.landmarks)
    out = crop_samples(samples, size=40, box_scale=1.0)
    img = out["images"][0].numpy().max(0)
    lm = out["landmarks"][0].numpy()
    inside = (lm >= 0.5).all(1) & (lm <= 38.5).all(1)
    vals = img[np.round(lm[inside, 1]).astype(int), np.round(lm[inside, 0]).astype(int)]
    assert (vals > 40).mean() > 0.9  # bilinear down-sampling halves a lone pixel at worst
    with pytest.raises(DatasetNotFoundError, match="300W"):
        read_300w(tmp_path / "nope", "train")
    with pytest.raises(ValueError, match="unknown 300W split"):
        read_300w(tmp_path, "valid")


def test_aflw_sqlite_19_point_protocol(tmp_path):
    con = sqlite3.connect(tmp_path / "aflw.sqlite")
    con.executescript("""
        CREATE TABLE FaceImages (file_id TEXT, filepath TEXT);
        CREATE TABLE Faces (face_id INTEGER, file_id TEXT);
        CREATE TABLE FaceRect (face_id INTEGER, x INTEGER, y INTEGER, w INTEGER, h INTEGER);
        CREATE TABLE FeatureCoords (face_id INTEGER, feature_id INTEGER, x REAL, y REAL);
        INSERT INTO FaceImages VALUES ('f1', '0/image1.jpg'), ('f2', '2/image2.jpg');
        INSERT INTO Faces VALUES (7, 'f1'), (9, 'f2');
        INSERT INTO FaceRect VALUES (7, 10, 20, 30, 40), (9, 0, 0, 50, 50);
    """)
    rows = [(7, f, float(f), float(100 + f)) for f in range(1, 22) if f != 4]  # face 7: point 4 missing
    rows += [(9, 1, 1.0, 1.0)]
    con.executemany("INSERT INTO FeatureCoords VALUES (?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    for rel in ("0/image1.jpg", "2/image2.jpg"):
        (tmp_path / "flickr" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64)).save(tmp_path / "flickr" / rel)
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "full_test.txt").write_text("7\n")
    faces = read_aflw(tmp_path, "full_test")
    assert len(faces) == 1 and faces[0].landmarks.shape == (19, 2)
    keep = [f for f in range(1, 22) if f not in (13, 17)]  # ears dropped
    assert faces[0].visible.tolist() == [f != 4 for f in keep]
    np.testing.assert_allclose(faces[0].landmarks[keep.index(18)], [18, 118])
    np.testing.assert_allclose(faces[0].box, [10, 20, 40, 60])
    assert str(faces[0].image).endswith("flickr/0/image1.jpg")
    assert len(read_aflw(tmp_path)) == 2
    with pytest.raises(DatasetNotFoundError, match="split"):
        read_aflw(tmp_path, "frontal_test")
    (tmp_path / "flickr" / "2" / "image2.jpg").unlink()  # a listed image is missing: named before any training
    with pytest.raises(DatasetNotFoundError, match="image2.jpg"):
        read_aflw(tmp_path)


def test_300vw_categories_and_frames(tmp_path):
    for vid in ("114", "203", "001"):
        (tmp_path / vid / "annot").mkdir(parents=True)
        (tmp_path / vid / "frames").mkdir()
        for f in (1, 2):
            pts = np.full((68, 2), 10.0 + f)
            write_pts(tmp_path / vid / "annot" / f"{f:06d}.pts", pts)
            _face_image(tmp_path / vid / "frames" / f"{f:06d}.png", pts, 32)
    assert len(read_300vw(tmp_path, "A")) == 2 and len(read_300vw(tmp_path, "B")) == 2
    train = read_300vw(tmp_path, "train")
    assert len(train) == 2 and all("/001/" in str(s.image) for s in train)
    np.testing.assert_allclose(read_300vw(tmp_path, "A", every=2)[0].landmarks, np.full((68, 2), 11.0))
    (tmp_path / "114" / "frames" / "000002.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="ffmpeg"):
        read_300vw(tmp_path, "A")
