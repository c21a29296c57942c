"""Data: the ImageNet reader + DeiT transforms on an ImageFolder fixture, mixup/cutmix soft targets,
and the synthetic varied-scale splits."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from depatch.data import MEAN, STD, MixupCutmix, generate_parts, imagenet_splits, part_patterns, parts_splits, synthetic_splits
from shared.errors import DatasetFormatError, DatasetNotFoundError

IMAGENET = dict(kind="imagenet", num_classes=2, image_size=32, crop_pct=0.875, randaug_magnitude=9,
                random_erasing=0.25, mixup=0.8, cutmix=1.0, mix_switch_prob=0.5)


def test_imagenet_folder_fixture(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            (tmp_path / split / wnid).mkdir(parents=True)
            for k in range(2):
                Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(
                    tmp_path / split / wnid / f"{wnid}_{k}.JPEG")
    d = OmegaConf.create(dict(IMAGENET, root=str(tmp_path)))
    train, val = imagenet_splits(d)
    assert train.classes == ["n01440764", "n01443537"] and len(train) == 4 and len(val) == 4
    x, y = train[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    # eval: resize short side to 32/0.875 = 36, centre crop 32, normalise with the ImageNet statistics
    img = Image.open(tmp_path / "val" / "n01440764" / "n01440764_0.JPEG").convert("RGB")
    from torchvision.transforms import v2
    ref = v2.functional.center_crop(v2.functional.resize(v2.functional.pil_to_tensor(img), 36,
                                                         interpolation=v2.InterpolationMode.BICUBIC), 32)
    ref = (ref.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    # PIL and tensor resizing may round a few pixels to the neighbouring grey level (1/255/std = 0.0175)
    torch.testing.assert_close(val[0][0], ref, atol=0.018, rtol=0)
    with pytest.raises(DatasetNotFoundError, match="Image folder dataset not found"):
        imagenet_splits(OmegaConf.create(dict(IMAGENET, root=str(tmp_path / "missing"))))
    with pytest.raises(DatasetFormatError, match="data.num_classes=5"):
        imagenet_splits(OmegaConf.create(dict(IMAGENET, root=str(tmp_path), num_classes=5)))


def test_mixup_cutmix_soft_targets():
    torch.manual_seed(0)
    mix = MixupCutmix(4, 0.8, 1.0, 0.5, label_smoothing=0.1)
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    xm, soft = mix(x, y)
    assert xm.shape == x.shape and soft.shape == (6, 4)
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    assert soft.min() >= 0.1 / 4 - 1e-6  # label smoothing floor
    plain = MixupCutmix(4, 0.0, 0.0, 0.5, label_smoothing=0.1)
    _, s = plain(x, y)
    torch.testing.assert_close(s[0], torch.tensor([0.925, 0.025, 0.025, 0.025]))


def test_synthetic_splits_are_disjoint_and_normalised():
    d = OmegaConf.create(dict(kind="synthetic", num_classes=4, image_size=32, n_train=40, n_test=12, domain="shapes-a",
                              scale_range=[0.15, 0.9], position_jitter=1.0, max_rotation=20, data_seed=0))
    train, test = synthetic_splits(d)
    assert len(train) == 40 and len(test) == 12
    tr = {img.tobytes() for img in train.base.images}
    assert not any(img.tobytes() in tr for img in test.base.images)
    x, y = train[0]
    raw = torch.from_numpy(train.base.images[0]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(x, (raw - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1))
    assert sorted(set(train.base.labels.tolist())) == [0, 1, 2, 3]


def test_part_glyphs_are_distinct_up_to_translation():
    g = part_patterns(12)
    assert g.shape == (12, 3, 3) and (g.sum((1, 2)) == 5).all()
    crops = set()
    for glyph in g:
        ys, xs = torch.nonzero(glyph, as_tuple=True)
        crop = glyph[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        crops.add((tuple(crop.shape), tuple(crop.flatten().tolist())))
    assert len(crops) == 12
    assert torch.equal(part_patterns(12), g)  # fixed: the classes do not depend on the data seed


def test_parts_task_draws_the_class_glyph_at_any_offset():
    d = generate_parts(400, 8, 32, seed=3, scales=(2, 3), noise=0.0, distractors=2)
    images, labels, masks, boxes = d["images"], d["labels"], d["masks"], d["boxes"]
    assert images.shape == (400, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [50] * 8  # balanced
    glyphs = part_patterns(8)
    for i in range(0, 400, 37):
        x0, y0, x1, y1 = boxes[i].tolist()
        s = (x1 - x0) // 3
        assert s in (2, 3) and y1 - y0 == 3 * s
        # the mask is the class glyph upsampled by its scale, at its box
        expect = glyphs[labels[i]].repeat_interleave(s, 0).repeat_interleave(s, 1).bool()
        assert torch.equal(masks[i, y0:y1, x0:x1], expect) and masks[i].sum() == expect.sum()
        # the glyph pixels share one colour (drawn last, no noise here), different from the background corner
        px = images[i][:, masks[i]]
        assert (px == px[:, :1]).all()
    offsets = (boxes[:, 0] % 8).unique()
    assert len(offsets) == 8  # every offset from the 8-pixel stage-2 patch grid occurs
    assert torch.equal(generate_parts(50, 8, 32, seed=3)["images"], generate_parts(50, 8, 32, seed=3)["images"])
    assert not torch.equal(generate_parts(50, 8, 32, seed=4)["images"], generate_parts(50, 8, 32, seed=3)["images"])


def test_parts_fixed_colours_are_white_on_black():
    kw = dict(scales=(2, 3), noise=0.0, distractors=2, glyph_set="symbols")
    d = generate_parts(64, 4, 32, seed=5, colours="fixed", **kw)
    img, glyph, clutter = d["images"], d["masks"], d["distractor_masks"]
    white = (img == 255).all(1)
    assert torch.equal(white, glyph | clutter)  # glyph and visible distractors white, nothing else
    assert ((img == 0).all(1) == ~white).all()  # the rest black
    assert clutter.any() and glyph.any()
    # only the colours change: same glyphs, positions and labels as the random-colour task
    r = generate_parts(64, 4, 32, seed=5, colours="random", **kw)
    assert torch.equal(r["masks"], glyph) and torch.equal(r["labels"], d["labels"])
    assert not torch.equal(r["images"], img)
    with pytest.raises(ValueError, match="colours='grey'"):
        generate_parts(4, 4, 32, seed=0, colours="grey")


def test_parts_splits_are_disjoint_and_normalised():
    d = OmegaConf.create(dict(kind="parts", num_classes=4, image_size=32, n_train=40, n_test=12, scales=[2, 3],
                              on_cells=5, noise=0.1, distractors=2, distractor_sizes=[2, 4], data_seed=0, glyph_set="random"))
    train, test = parts_splits(d)
    assert len(train) == 40 and len(test) == 12
    tr = {img.numpy().tobytes() for img in train.images}
    assert not any(img.numpy().tobytes() in tr for img in test.images)
    fixed = parts_splits(OmegaConf.merge(d, {"colours": "fixed", "noise": 0.0}))[0].images
    assert ((fixed == 0) | (fixed == 255)).all() and not ((train.images == 0) | (train.images == 255)).all()
    x, y = train[0]
    torch.testing.assert_close(x, (train.images[0].float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1))
    assert y == int(train.labels[0])
