"""Fixture writers in the publishers' formats (300W folders of image + .pts, AFLW's sqlite + flickr/)."""

import sqlite3

import numpy as np
import pytest
from PIL import Image

from landmark_ambiguity.data import write_pts
from shared.data.faces import generate_faces


def _save(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


@pytest.fixture
def w300_root(tmp_path):
    """A 300W tree of synthetic faces (48 px): 6 train, common 3 (helen 2 + lfpw 1), challenging 2."""
    root = tmp_path / "300w"
    sets = {"afw": 2, "helen/trainset": 2, "lfpw/trainset": 2, "helen/testset": 2, "lfpw/testset": 1, "ibug": 2}
    faces = generate_faces(sum(sets.values()), 48, seed=5)
    i = 0
    for folder, n in sets.items():
        for j in range(n):
            _save(root / folder / f"img{j}.png", faces.images[i])
            write_pts(root / folder / f"img{j}.pts", faces.landmarks[i])
            i += 1
    return root


# AFLW: 21 feature ids; the 19-point protocol drops the ears (13, 17)
AFLW_KEEP = [f for f in range(1, 22) if f not in (13, 17)]


@pytest.fixture
def aflw_root(tmp_path):
    """aflw.sqlite + flickr/ images of 6 synthetic faces; face 3 misses feature 4 and face 5 features 1-2;
    split lists full_train (faces 1-4), full_test (5, 6) and frontal_test (6)."""
    root = tmp_path / "aflw"
    faces = generate_faces(6, 48, seed=6)
    lm68_to_21 = [17, 19, 21, 22, 24, 26, 36, 39, 42, 45, 31, 33, 35, 48, 0, 54, 16, 57, 8, 30, 62]  # a plausible pick
    root.mkdir(parents=True)
    con = sqlite3.connect(root / "aflw.sqlite")
    con.executescript("""
        CREATE TABLE FaceImages (file_id TEXT, filepath TEXT);
        CREATE TABLE Faces (face_id INTEGER, file_id TEXT);
        CREATE TABLE FaceRect (face_id INTEGER, x INTEGER, y INTEGER, w INTEGER, h INTEGER);
        CREATE TABLE FeatureCoords (face_id INTEGER, feature_id INTEGER, x REAL, y REAL);
    """)
    missing = {3: {4}, 5: {1, 2}}
    for f in range(1, 7):
        _save(root / "flickr" / "0" / f"image{f}.png", faces.images[f - 1])
        con.execute("INSERT INTO FaceImages VALUES (?, ?)", (f"f{f}", f"0/image{f}.png"))
        con.execute("INSERT INTO Faces VALUES (?, ?)", (f, f"f{f}"))
        con.execute("INSERT INTO FaceRect VALUES (?, 4, 4, 40, 40)", (f,))
        for feat in range(1, 22):
            if feat not in missing.get(f, ()):
                x, y = faces.landmarks[f - 1, lm68_to_21[feat - 1]]
                con.execute("INSERT INTO FeatureCoords VALUES (?, ?, ?, ?)", (f, feat, float(x), float(y)))
    con.commit()
    con.close()
    (root / "split").mkdir()
    (root / "split" / "full_train.txt").write_text("1\n2\n3\n4\n")
    (root / "split" / "full_test.txt").write_text("5\n6\n")
    (root / "split" / "frontal_test.txt").write_text("6\n")
    return root
