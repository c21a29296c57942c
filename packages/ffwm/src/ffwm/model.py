"""The FFWM model and one training step of each stage, readable top to bottom.

Stage 1 (flow pre-training, ``train_flow.py`` in the official code): F and B from the profile, each
trained with ``20 * correctness + 0.01 * affine + landmark``.

Stage 2 (``train_ffwm.py``): the generator frontalises the profile with F's flows inside its Warp
Attention Modules; the Illumination Preserving Module supervises it with two pathways --
(1) *preserving*: warp the outputs back to the profile with B and take the masked L1 to the input;
(2) *adaption*: guided-filter every output with the ground truth as target (``I_gf = GF(I_out, I_gt)``)
and compute every ground-truth loss (L1, perceptual, facial parts, identity, adversarial) on ``I_gf``, so
the generator never has to reproduce the ground truth's (inconsistent) illumination. During a warm-up
(``warmup_images`` images seen) the ground-truth losses use the raw outputs. F and B are fine-tuned
jointly with the generator at their own learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .losses import (
    IBUG68_PARTS,
    correctness_loss,
    facial_part_centres,
    facial_part_loss,
    identity_loss,
    illumination_preserving_loss,
    lsgan_loss,
    masked_l1,
    multiscale_affine_loss,
    multiscale_landmark_loss,
    perceptual_loss,
    pyramid,
)

from .networks import FFWMGenerator, FlowNet, MSDiscriminator
from .ops import guided_filter

__all__ = ["FFWM", "FlowLossConfig", "GenLossConfig", "discriminator_step_loss", "flow_step_loss",
           "generator_forward", "generator_loss", "gt_pyramid"]


class FFWM(nn.Module):
    """The trainable networks: ``flow_f``, ``flow_b``, ``generator``, ``discriminator``."""

    def __init__(self, image_size: int = 128, ngf: int = 64, ndf: int = 64, flow_ngf: int = 64,
                 skip: str = "wam", sn: bool = True):
        super().__init__()
        self.image_size = image_size
        self.flow_f = FlowNet(image_size, flow_ngf)
        self.flow_b = FlowNet(image_size, flow_ngf)
        self.generator = FFWMGenerator(image_size, ngf, skip=skip, sn=sn)
        self.discriminator = MSDiscriminator(image_size, ndf, sn=sn)

    @property
    def uses_forward_flow(self) -> bool:
        return self.generator.skip in ("wam", "noflip", "noatt")

    def frontalize(self, profile: torch.Tensor):
        """``(images [S/4, S/2, S], attention maps or None, forward grids or None)``."""
        grids = self.flow_f(profile) if self.uses_forward_flow else None
        images, att = self.generator(profile, grids)
        return images, att, grids

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def flow_parameters(self) -> list[nn.Parameter]:
        return list(self.flow_f.parameters()) + list(self.flow_b.parameters())


# --------------------------------------------------------------------------------- stage 1


@dataclass
class FlowLossConfig:
    correctness: float = 20.0
    affine: float = 0.01
    landmark: float = 1.0
    landmark_scale_weights: tuple[float, float, float] = (1500.0, 1000.0, 1000.0)  # S/4, S/2, S
    landmark_convention: str = "consistent"
    sampler: str = "bilinear"  # official default (use_bilinear_sampling=True); "gaussian" = GFLA's Resample2d
    correctness_layers: tuple[int, ...] = (0, 1, 2)  # relu1_1, relu2_1, relu3_1 <-> grids S, S/2, S/4


def flow_step_loss(model: FFWM, vgg, batch: dict[str, torch.Tensor], cfg: FlowLossConfig):
    """The pre-training loss of F and B on one batch: ``(total, {term: value})``.

    F maps frontal pixels to profile positions: correctness with source = profile features, target =
    frontal features, landmarks frontal -> profile. B maps profile pixels to frontal positions: the roles
    swap (and the profile mask is used)."""
    profile, frontal = batch["profile"], batch["frontal"]
    size = profile.shape[-1]
    grids_f = model.flow_f(profile)
    grids_b = model.flow_b(profile)
    with torch.no_grad():
        feat_p, feat_f = vgg(profile), vgg(frontal)
    terms = {}
    for name, grids, src, tgt, mask, dst_pts, src_pts in (
            ("f", grids_f, feat_p, feat_f, batch["mask_frontal"], batch["pts_frontal"], batch["pts_profile"]),
            ("b", grids_b, feat_f, feat_p, batch["mask_profile"], batch["pts_profile"], batch["pts_frontal"])):
        fine_to_coarse = grids[::-1]
        corr = sum(correctness_loss(src[layer], tgt[layer], fine_to_coarse[i], mask, cfg.sampler)
                   for i, layer in enumerate(cfg.correctness_layers))
        affine = multiscale_affine_loss(grids)
        lm = multiscale_landmark_loss(grids, dst_pts, src_pts, batch["gate"], size, cfg.landmark_scale_weights,
                                      cfg.landmark_convention)
        terms[f"{name}_correctness"] = corr
        terms[f"{name}_affine"] = affine
        terms[f"{name}_landmark"] = lm
    total = sum(cfg.correctness * terms[f"{d}_correctness"] + cfg.affine * terms[f"{d}_affine"]
                + cfg.landmark * terms[f"{d}_landmark"] for d in ("f", "b"))
    return total, terms


# --------------------------------------------------------------------------------- stage 2


@dataclass
class GenLossConfig:
    l1: float = 5.0
    perceptual: float = 1.0
    facial: float = 1.0
    identity_raw: float = 0.5
    identity_gf: float = 1.0
    illumination: float = 15.0
    adversarial: float = 0.1
    scale_weights: tuple[float, float, float] = (1.5, 1.0, 1.0)  # S/4, S/2, S
    facial_patch_frac: float = 0.25  # 32 px patches at 128
    facial_weights: tuple[float, ...] = (2.0, 2.0, 1.0, 1.0)  # right eye, left eye, nose, mouth (official)
    preserve: bool = True  # IPM pathway 1 (backward-warp L1 to the input)
    adapt: bool = True  # IPM pathway 2 (guided filter before the ground-truth losses)
    warmup_images: int = 20000
    gf_radius_frac: float = 0.25  # r = 32 / 16 / 8 at 128 / 64 / 32
    gf_eps: float = 1e-8
    parts: Any = None  # {part: [landmark indices]}; None = the iBUG-68 parts


def _gf(out: torch.Tensor, gt: torch.Tensor, cfg: GenLossConfig) -> torch.Tensor:
    return guided_filter(out, gt, max(1, int(round(out.shape[-1] * cfg.gf_radius_frac))), cfg.gf_eps)


def gt_pyramid(gt: torch.Tensor, mask: torch.Tensor):
    """The ground truth at S/4, S/2, S (bilinear, as the official code) and its mask (nearest)."""
    s = gt.shape[-1]
    imgs = [F.interpolate(gt, size=(s // k, s // k), mode="bilinear", align_corners=False) for k in (4, 2)] + [gt]
    masks = [F.interpolate(mask, size=(s // k, s // k), mode="nearest") for k in (4, 2)] + [mask]
    return imgs, masks


def generator_forward(model: FFWM, batch: dict[str, torch.Tensor], cfg: GenLossConfig) -> dict[str, Any]:
    """One forward pass shared by the D and G steps: the outputs at three scales, the backward flows and
    ``gf`` = GF(output, ground truth) at full size (the image D judges; the raw output without the IPM)."""
    outputs, att, grids = model.frontalize(batch["profile"])
    back = model.flow_b(batch["profile"]) if cfg.preserve else None
    gf = _gf(outputs[-1], batch["frontal"], cfg) if cfg.adapt else outputs[-1]
    m = batch["mask_frontal"]
    return {"outputs": outputs, "back": back, "gf": gf, "fake": gf * m, "real": batch["frontal"] * m}


def generator_loss(model: FFWM, vgg, lightcnn, batch: dict[str, torch.Tensor], fwd: dict[str, Any],
                   cfg: GenLossConfig, images_seen: int):
    """The generator's loss ``(total, terms)`` for a forward pass (after the D step, as officially)."""
    outputs, gt = fwd["outputs"], batch["frontal"]
    gts, masks_f = gt_pyramid(gt, batch["mask_frontal"])
    adapt_active = cfg.adapt and images_seen >= cfg.warmup_images  # the official warm-up (`titers`, in images)
    if adapt_active:  # GF(output, ground truth) at every scale, coarse to fine
        adapted = [_gf(outputs[0], gts[0], cfg), _gf(outputs[1], gts[1], cfg), fwd["gf"]]
    else:
        adapted = list(outputs)
    w = cfg.scale_weights
    terms: dict[str, torch.Tensor] = {}
    terms["l1"] = sum(ws * masked_l1(a, g, m) for ws, a, g, m in zip(w, adapted, gts, masks_f))
    terms["perceptual"] = sum(ws * perceptual_loss(vgg, a * m, g * m) for ws, a, g, m in zip(w, adapted, gts, masks_f))
    size = gt.shape[-1]
    centres = facial_part_centres(batch["landmarks_frontal"], cfg.parts or IBUG68_PARTS)
    patch = max(4, int(round(size * cfg.facial_patch_frac)))
    terms["facial"] = facial_part_loss(vgg, fwd["gf"], gt, centres, patch, cfg.facial_weights)  # always on GF (official)
    terms["identity"] = (cfg.identity_raw * identity_loss(lightcnn, outputs[-1], gt)
                         + cfg.identity_gf * identity_loss(lightcnn, adapted[-1], gt))
    if cfg.preserve:
        terms["illumination"] = illumination_preserving_loss(outputs, fwd["back"], batch["profile"],
                                                             batch["mask_profile"], w)
    terms["adversarial"] = lsgan_loss(model.discriminator(fwd["fake"]), True)
    total = (cfg.l1 * terms["l1"] + cfg.perceptual * terms["perceptual"] + cfg.facial * terms["facial"]
             + terms["identity"] + cfg.adversarial * terms["adversarial"])
    if cfg.preserve:
        total = total + cfg.illumination * terms["illumination"]
    terms["adapt_active"] = torch.tensor(float(adapt_active))
    return total, terms


def discriminator_step_loss(discriminator: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """LSGAN discriminator loss ``0.5 * (fake + real)`` on masked images (the fake is detached)."""
    return 0.5 * (lsgan_loss(discriminator(fake.detach()), False) + lsgan_loss(discriminator(real), True))
