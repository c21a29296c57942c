"""The feature networks of the perceptual and identity losses (and of the identity evaluation).

The official code uses ImageNet VGG-19 (perceptual) and a LightCNN-29 fine-tuned on Multi-PIE
(identity). Neither may be downloaded here, so:

* ``weights: <path>`` loads a local file: a torchvision ``vgg19`` state dict (``features.*``; the
  classifier is ignored) or a LightCNN-29 checkpoint (``{'state_dict': {'module.conv1.filter.weight', ...}}``
  or a plain state dict);
* ``weights: null`` trains the same *layouts* (narrower, see ``width``) here, as identity classifiers
  on synthetic faces (identities disjoint from every pair set, frontal-ish poses, random lights and
  camera colour gains), cached in ``<cache_dir>/ffwm/featnet-<hash>.pt``.

Every result records which (``describe()``): "synthetic VGG-19 layout (width 1/8) ..." vs the file.
A second synthetic LightCNN, trained from another seed and never used by any loss, scores identity in
the evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from shared.data.faces import generate_faces
from shared.errors import CheckpointError, ConfigError
from shared.runtime import save_checkpoint

from .networks import LightCNN29, VGG19Features, rgb_to_gray

log = logging.getLogger("ffwm")

FEATNET_ID_OFFSET = 1_000_000  # synthetic identities of the feature networks (disjoint from pairs)


def _key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _faces(spec: dict[str, Any], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = spec["num_identities"] * spec["per_identity"]
    ids = FEATNET_ID_OFFSET + np.repeat(np.arange(spec["num_identities"]), spec["per_identity"])
    batch = generate_faces(n, spec["image_size"], seed, identities=ids, yaw=(-20, 20), pitch=(-8, 8), roll=(-5, 5),
                           expression_strength=0.0, light_azimuth=(-80, 80), light_elevation=(-30, 50),
                           light_strength=(0.4, 1.0), ambient=(0.2, 0.6), scale=(0.76, 0.84), center_jitter=0.02)
    x = torch.from_numpy(batch.images).permute(0, 3, 1, 2).float() / 255
    gain = torch.from_numpy(np.random.default_rng(seed + 1).uniform(0.8, 1.2, (n, 3, 1, 1))).float()
    x = (x * gain).clamp(0, 1)  # a camera colour response, so that features do not hinge on it
    y = torch.from_numpy(ids - FEATNET_ID_OFFSET).long()
    return x, y


def train_synthetic(kind: str, spec: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train a ``vgg19`` / ``lightcnn29`` layout as a synthetic-identity classifier. Runs inside
    ``fork_rng`` so the caller's RNG stream is untouched."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        x, y = _faces(spec, spec["seed"])
        xt, yt = _faces({**spec, "per_identity": max(2, spec["per_identity"] // 4)}, spec["seed"] + 99)
        net = build_net(kind, spec, num_classes=spec["num_identities"])
        opt = torch.optim.Adam(net.parameters(), lr=spec["lr"])
        gen = torch.Generator().manual_seed(spec["seed"])
        steps_per_epoch = -(-len(x) // spec["batch_size"])
        total = spec["epochs"] * steps_per_epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec["lr"], total_steps=total, pct_start=0.15)
        net.train()
        for _ in range(spec["epochs"]):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), spec["batch_size"]):
                idx = perm[i:i + spec["batch_size"]]
                xb = x[idx]
                flip = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
                loss = F.cross_entropy(_logits(kind, net, xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            acc = float((_logits(kind, net, xt).argmax(1) == yt).float().mean()) * 100
    metrics = {"heldout_acc": acc, "train_loss": float(loss.detach()), "seconds": time.perf_counter() - t0}
    return {k: v for k, v in net.state_dict().items()}, metrics


def _logits(kind: str, net, x):
    return net.classify(x) if kind == "vgg19" else net(rgb_to_gray(x))[0]


def build_net(kind: str, spec: dict[str, Any], num_classes: int = 0):
    if kind == "vgg19":
        return VGG19Features(width=spec["width"], num_classes=num_classes, batch_norm=spec.get("batch_norm", False))
    if kind == "lightcnn29":
        return LightCNN29(width=spec["width"], image_size=spec["input_size"], num_classes=num_classes,
                          batch_norm=spec.get("batch_norm", False))
    raise ConfigError(f"unknown feature network {kind!r}; use vgg19 or lightcnn29")


def synthetic_featnet(kind: str, spec: dict[str, Any], cache_dir: str | os.PathLike):
    """A frozen synthetic feature network (trained now or loaded from the cache) and its metrics."""
    full = {"kind": kind, **spec}
    path = Path(os.path.expanduser(str(cache_dir))) / "ffwm" / f"featnet-{_key(full)}.pt"
    if path.is_file():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state, metrics = ckpt["state"], ckpt["metrics"]
    else:
        log.info("training the synthetic %s feature network (cache miss: %s)", kind, path)
        state, metrics = train_synthetic(kind, spec)
        save_checkpoint({"state": state, "metrics": metrics, "spec": full}, path)
        log.info("synthetic %s: held-out identity accuracy %.1f%% after %.0fs", kind, metrics["heldout_acc"],
                 metrics["seconds"])
    net = build_net(kind, spec, num_classes=spec["num_identities"])
    net.load_state_dict(state)
    return _freeze(net), metrics


def _freeze(net):
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def load_vgg19_file(path: str | os.PathLike) -> VGG19Features:
    """torchvision VGG-19 weights from a local file (a state dict; ``features.*`` keys are used)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    net = VGG19Features(width=1.0)
    feats = {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) < len(net.features)}
    missing = net.load_state_dict(feats, strict=False).missing_keys
    if missing:
        raise CheckpointError(f"{path} is not a torchvision vgg19 state dict (missing {missing[0]}); "
                              "pass the file torchvision saves for vgg19 (features.* keys)")
    return _freeze(net)


def load_lightcnn_file(path: str | os.PathLike) -> LightCNN29:
    """LightCNN-29 weights from a local checkpoint (``state_dict`` with or without the ``module.`` prefix)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    num_classes = state["fc2.weight"].shape[0] if "fc2.weight" in state else 0
    net = LightCNN29(width=1.0, image_size=128, num_classes=num_classes)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path} is not a LightCNN-29 checkpoint ({str(e).splitlines()[0]}); pass "
                              "LightCNN_29Layers_checkpoint.pth.tar or the FFWM release's lightCNN_10_checkpoint.pth") from None
    return _freeze(net)


def build_feature_nets(fcfg: Any, cache_dir: str | os.PathLike):
    """``(vgg, lightcnn, eval_lightcnn, info)`` for a ``features`` config group; ``info`` says what each is."""
    info: dict[str, Any] = {}
    spec_p = dict(fcfg.synthetic_perceptual)
    spec_i = dict(fcfg.synthetic_identity)
    if fcfg.perceptual_weights:
        vgg = load_vgg19_file(fcfg.perceptual_weights)
        info["perceptual"] = f"VGG-19 from {fcfg.perceptual_weights}"
    else:
        vgg, m = synthetic_featnet("vgg19", spec_p, cache_dir)
        info["perceptual"] = (f"synthetic VGG-19 layout (width {spec_p['width']:g}) trained here as a synthetic-identity "
                              f"classifier ({m['heldout_acc']:.0f}% held-out accuracy)")
    if fcfg.identity_weights:
        idnet = load_lightcnn_file(fcfg.identity_weights)
        info["identity"] = f"LightCNN-29 from {fcfg.identity_weights}"
    else:
        idnet, m = synthetic_featnet("lightcnn29", spec_i, cache_dir)
        info["identity"] = (f"synthetic LightCNN-29 layout (width {spec_i['width']:g}) trained here "
                            f"({m['heldout_acc']:.0f}% held-out accuracy)")
    if fcfg.eval_identity_weights:
        evalnet = load_lightcnn_file(fcfg.eval_identity_weights)
        info["eval_identity"] = f"LightCNN-29 from {fcfg.eval_identity_weights}"
    else:
        spec_e = {**spec_i, "seed": spec_i["seed"] + 1}
        evalnet, m = synthetic_featnet("lightcnn29", spec_e, cache_dir)
        info["eval_identity"] = (f"a second synthetic LightCNN-29 layout (seed {spec_e['seed']}, not used by any loss; "
                                 f"{m['heldout_acc']:.0f}% held-out accuracy)")
    return vgg, idnet, evalnet, info
