"""Data: the ImageNet reader + DeiT transforms on an ImageFolder fixture, mixup/cutmix soft targets,
and the synthetic varied-scale splits."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from depatch.data import MEAN, STD, MixupCutmix, imagenet_splits, synthetic_splits
from shared.data.root import DatasetNotFoundError

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
    with pytest.raises(ValueError, match="data.num_classes=5"):
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
