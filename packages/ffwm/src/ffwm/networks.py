"""FFWM's networks: the flow networks F and B, the generator with Warp Attention Modules, the
multi-scale discriminator, and the two feature networks of the losses (VGG-19 layout for the
perceptual loss, LightCNN-29 layout for the identity loss).

Sizes follow the official code at ``image_size=128, ngf=64``; ``image_size`` may be any power of two
>= 32 (the embedded default uses 64), and the generator's outputs / the flows live at
``image_size / 4``, ``/ 2`` and ``/ 1``. Every network is ordinary ``nn.Module`` code written for
this package from the paper and our reading of the official code.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .ops import hflip, resize_grid, warp

__all__ = [
    "FFWMGenerator",
    "FlowNet",
    "LightCNN29",
    "MSDiscriminator",
    "SKIP_MODES",
    "VGG19Features",
    "rgb_to_gray",
]

#: generator skip connections: the paper's WAM and the ablations (see FFWMGenerator).
SKIP_MODES = ("wam", "noflip", "noatt", "unet", "none")


def _scales(image_size: int) -> list[int]:
    return [image_size // 4, image_size // 2, image_size]


def _check_size(image_size: int, minimum: int = 32) -> None:
    if image_size < minimum or image_size & (image_size - 1):
        raise ValueError(f"image_size={image_size} must be a power of two >= {minimum}")


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=False)


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation on every conv / transposed conv / linear layer (the official ``sn=True``)."""
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            setattr(module, name, spectral_norm(child))
        else:
            apply_spectral_norm(child)
    return module


class ResBlock(nn.Module):
    """conv3x3-BN-LReLU-conv3x3-BN plus the identity."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), nn.BatchNorm2d(ch), _act(),
                                  nn.Conv2d(ch, ch, 3, 1, 1), nn.BatchNorm2d(ch))

    def forward(self, x):
        return x + self.body(x)


def _cbr(cin: int, cout: int, k: int, s: int, p: int, bn: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, p)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(_act())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------- flow networks


class FlowNet(nn.Module):
    """FlowNetS-style encoder-decoder that maps an image to absolute sampling grids at
    ``S/4, S/2, S`` (``tanh`` heads; ``F.grid_sample`` convention, ``align_corners=False``).

    Encoder: conv0 at S, then stride-2 stages down to 2x2 with widths ``ngf * (1, 2, 4, 8, 16, 16, ...)``
    (capped at 16 ngf). Decoder: transposed convs back up with the encoder skip and the upsampled
    coarser grid concatenated at every level; flow heads (3x3 conv + tanh) at the three top levels.
    F (forward) reads the profile and predicts where each frontal pixel comes from in the profile;
    B (backward) also reads the profile and predicts where each profile pixel comes from in the frontal.
    """

    def __init__(self, image_size: int = 128, ngf: int = 64, in_channels: int = 3):
        super().__init__()
        _check_size(image_size)
        self.image_size, self.ngf = image_size, ngf
        n_down = int(math.log2(image_size)) - 1  # bottom at 2x2
        widths = [ngf] + [ngf * min(2 ** k, 16) for k in range(n_down)]
        widths[-1] = ngf * 16
        self.widths = widths
        self.conv0 = _cbr(in_channels, widths[0], 3, 1, 1, bn=False)
        self.down = nn.ModuleList(_cbr(widths[k], widths[k + 1], 4, 2, 1) for k in range(n_down))
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        self.heads = nn.ModuleDict()
        self.flow_levels = [n_down - k for k in (2, 1, 0)]  # decoder levels of S/4, S/2, S (counted from the bottom)
        prev = widths[-1]
        for lvl in range(1, n_down + 1):  # output of level lvl has resolution S / 2^(n_down - lvl)
            k = n_down - lvl  # encoder index with the same resolution
            out = widths[k]
            self.up.append(nn.Sequential(nn.ConvTranspose2d(prev, out, 4, 2, 1), nn.BatchNorm2d(out), _act()))
            extra = 2 if lvl - 1 in self.flow_levels else 0  # the coarser grid, when there is one
            self.fuse.append(_cbr(out + widths[k] + extra, out, 3, 1, 1))
            if lvl in self.flow_levels:
                self.heads[str(lvl)] = nn.Conv2d(out, 2, 3, 1, 1)
            prev = out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Grids ``[(B, S/4, S/4, 2), (B, S/2, S/2, 2), (B, S, S, 2)]``."""
        feats = [self.conv0(x)]
        for d in self.down:
            feats.append(d(feats[-1]))
        h = feats[-1]
        n_down = len(self.down)
        grids: list[torch.Tensor] = []
        for lvl in range(1, n_down + 1):
            h = self.up[lvl - 1](h)
            parts = [h, feats[n_down - lvl]]
            if lvl - 1 in self.flow_levels:
                parts.append(resize_grid(grids[-1], h.shape[-1]).permute(0, 3, 1, 2))
            h = self.fuse[lvl - 1](torch.cat(parts, 1))
            if lvl in self.flow_levels:
                grids.append(torch.tanh(self.heads[str(lvl)](h)).permute(0, 2, 3, 1))
        return grids


# ---------------------------------------------------------------------------------- the generator


class WarpAttentionModule(nn.Module):
    """Warp an encoder feature with the flow, concatenate its horizontal flip (facial symmetry fills
    what the profile hides), and gate the result with a sigmoid attention map of the same channels
    (conv + residual block + sigmoid) computed from it."""

    def __init__(self, ch: int, flip: bool = True, attention: bool = True):
        super().__init__()
        self.flip, self.use_attention = flip, attention
        self.out_channels = ch * (2 if flip else 1)
        if attention:
            c = self.out_channels
            self.attention = nn.Sequential(_cbr(c, c, 3, 1, 1), ResBlock(c), nn.Sigmoid())

    def forward(self, feat: torch.Tensor, grid: torch.Tensor | None):
        w = warp(feat, grid) if grid is not None else feat
        if self.flip:
            w = torch.cat([w, hflip(w)], 1)
        if not self.use_attention:
            return w, None
        a = self.attention(w)
        return w * a, a


class _Up(nn.Module):
    """conv3x3 to 4x channels + PixelShuffle(2) + BN + LReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, 4 * cout, 3, 1, 1), nn.PixelShuffle(2), nn.BatchNorm2d(cout), _act())

    def forward(self, x):
        return self.body(x)


class FFWMGenerator(nn.Module):
    """The FFWM generator (official ``FFWM(num_layers=3, isflip=True, sn=True)``).

    Encoder e0 (7x7, ngf, S, + res block), e1 (4x4/2, ngf, S/2), e2 (2 ngf, S/4), e3 (4 ngf, S/8), each
    with BN, LReLU and a res block. Three decoder levels (PixelShuffle up-blocks to 2 ngf @ S/4, ngf @ S/2,
    ngf @ S); at level i the skip feature (e2, e1, e0) enters through a Warp Attention Module driven by
    the forward flow at that scale, is concatenated with the decoder feature and the x2-upsampled
    previous output, fused (conv, two res blocks), and a 3x3 conv + sigmoid gives that scale's image.

    ``skip`` selects the skip connection: ``wam`` (the paper), ``noflip`` (WAM without the flipped copy),
    ``noatt`` (warp + flip, no attention), ``unet`` (plain U-Net skips: encoder features, not warped),
    ``none`` (no skips: encoder-decoder).
    """

    def __init__(self, image_size: int = 128, ngf: int = 64, skip: str = "wam", sn: bool = True):
        super().__init__()
        _check_size(image_size)
        if skip not in SKIP_MODES:
            raise ValueError(f"skip={skip!r}; expected one of {SKIP_MODES}")
        self.image_size, self.ngf, self.skip = image_size, ngf, skip
        self.e0 = nn.Sequential(_cbr(3, ngf, 7, 1, 3), ResBlock(ngf))
        self.e1 = nn.Sequential(_cbr(ngf, ngf, 4, 2, 1), ResBlock(ngf))
        self.e2 = nn.Sequential(_cbr(ngf, 2 * ngf, 4, 2, 1), ResBlock(2 * ngf))
        self.e3 = nn.Sequential(_cbr(2 * ngf, 4 * ngf, 4, 2, 1), ResBlock(4 * ngf))
        skip_ch = [2 * ngf, ngf, ngf]  # e2, e1, e0
        dec_ch = [2 * ngf, ngf, ngf]
        self.ups = nn.ModuleList([_Up(4 * ngf, dec_ch[0]), _Up(dec_ch[0], dec_ch[1]), _Up(dec_ch[1], dec_ch[2])])
        self.wams = nn.ModuleList()
        self.fuse = nn.ModuleList()
        self.to_img = nn.ModuleList()
        for i in range(3):
            if skip in ("wam", "noflip", "noatt"):
                wam = WarpAttentionModule(skip_ch[i], flip=skip != "noflip", attention=skip != "noatt")
                self.wams.append(wam)
                s_ch = wam.out_channels
            else:
                self.wams.append(nn.Identity())
                s_ch = skip_ch[i] if skip == "unet" else 0
            cin = dec_ch[i] + s_ch + (3 if i else 0)
            self.fuse.append(nn.Sequential(_cbr(cin, dec_ch[i], 3, 1, 1), ResBlock(dec_ch[i]), ResBlock(dec_ch[i])))
            self.to_img.append(nn.Sequential(nn.Conv2d(dec_ch[i], 3, 3, 1, 1), nn.Sigmoid()))
        if sn:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor, grids: Sequence[torch.Tensor] | None = None):
        """``x`` the profile ``(B, 3, S, S)``; ``grids`` the forward flows at S/4, S/2, S (needed unless
        ``skip`` is ``unet``/``none``). Returns ``(images at [S/4, S/2, S], attention maps or None)``."""
        if self.skip in ("wam", "noflip", "noatt") and grids is None:
            raise ValueError(f"skip={self.skip!r} warps encoder features and needs the forward flows")
        e0 = self.e0(x)
        e1 = self.e1(e0)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        skips = [e2, e1, e0]
        h, img = e3, None
        images, attentions = [], []
        for i in range(3):
            h = self.ups[i](h)
            parts = [h]
            if self.skip in ("wam", "noflip", "noatt"):
                s, a = self.wams[i](skips[i], grids[i])
                parts.append(s)
                attentions.append(a)
            elif self.skip == "unet":
                parts.append(skips[i])
            if img is not None:
                parts.append(F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False))
            h = self.fuse[i](torch.cat(parts, 1))
            img = self.to_img[i](h)
            images.append(img)
        return images, (attentions if attentions and attentions[0] is not None else None)


# ------------------------------------------------------------------------------ the discriminator


class MSDiscriminator(nn.Module):
    """Multi-scale discriminator (InGAN style): one sub-net per scale of the input (S, S/2, ... down
    to 16 px), each three stride-2 spectral-norm convs (BN after the first) with LReLU and a 1x1 head;
    the per-scale score maps are upsampled to the finest map's size and summed. Trained with LSGAN."""

    def __init__(self, image_size: int = 128, ndf: int = 64, min_size: int = 16, sn: bool = True):
        super().__init__()
        self.num_scales = max(1, int(math.log2(image_size // min_size)) + 1)
        self.nets = nn.ModuleList()
        for _ in range(self.num_scales):
            self.nets.append(nn.Sequential(_cbr(3, ndf, 4, 2, 1, bn=False), _cbr(ndf, 2 * ndf, 4, 2, 1),
                                           _cbr(2 * ndf, 4 * ndf, 4, 2, 1), nn.Conv2d(4 * ndf, 1, 1)))
        if sn:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for k, net in enumerate(self.nets):
            if k:
                x = F.avg_pool2d(x, 2)
            y = net(x)
            out = y if out is None else out + F.interpolate(y, size=out.shape[-2:], mode="bilinear", align_corners=False)
        return out


# --------------------------------------------------------------------------- feature networks


_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512]  # up to relu5_1
#: indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in torchvision's ``vgg19().features``
VGG_TAPS = (1, 6, 11, 20, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """VGG-19 convolutional layers up to relu5_1, indexed like torchvision's ``vgg19().features`` so an
    ImageNet state dict (``features.*``) loads directly at ``width=1``. ``width < 1`` divides every
    channel count (the synthetic stand-in trained here). Returns the five relu*_1 activations of the
    ImageNet-normalised input. ``num_classes`` adds a pooled linear head (used only to train the
    synthetic stand-in)."""

    def __init__(self, width: float = 1.0, num_classes: int = 0, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        taps, cin = [], 3
        for v in _VGG19:
            if v == "M":  # ceil_mode: as torchvision for even sizes, and small patches keep >= 1 pixel
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                c = max(4, int(round(v * width)))
                layers += [nn.Conv2d(cin, c, 3, 1, 1)] + ([nn.BatchNorm2d(c)] if batch_norm else []) + [nn.ReLU(inplace=False)]
                cin = c
                if len(taps) < 5 and (not taps or isinstance(layers[-4 if batch_norm else -3], nn.MaxPool2d)):
                    taps.append(len(layers) - 1)
        self.taps = tuple(taps)  # relu1_1 ... relu5_1 (torchvision's indices 1, 6, 11, 20, 29 without BN)
        self.features = nn.Sequential(*layers)
        for m in self.features:
            if isinstance(m, nn.Conv2d):  # torchvision's VGG init (a plain 16-conv stack trains from it)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.out_channels = cin
        self.head = nn.Linear(cin, num_classes) if num_classes else None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        outs = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                outs.append(h)
        return outs

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(x)[-1].mean((2, 3)))


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of ``(B, 3, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` (LightCNN takes grayscale)."""
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


class _MFM(nn.Module):
    """Max-Feature-Map: a conv (or linear) with twice the outputs, then the element-wise max of the halves
    (``bn`` adds a BatchNorm before the max; only for the synthetic stand-in)."""

    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1, p: int = 1, linear: bool = False, bn: bool = False):
        super().__init__()
        self.cout = cout
        self.filter = nn.Linear(cin, 2 * cout) if linear else nn.Conv2d(cin, 2 * cout, k, s, p)
        self.bn = (nn.BatchNorm1d(2 * cout) if linear else nn.BatchNorm2d(2 * cout)) if bn else None

    def forward(self, x):
        y = self.filter(x)
        if self.bn is not None:
            y = self.bn(y)
        a, b = y.split(self.cout, 1)
        return torch.maximum(a, b)


class _Group(nn.Module):
    def __init__(self, cin: int, cout: int, bn: bool = False):
        super().__init__()
        self.conv_a = _MFM(cin, cin, 1, 1, 0, bn=bn)
        self.conv = _MFM(cin, cout, 3, 1, 1, bn=bn)

    def forward(self, x):
        return self.conv(self.conv_a(x))


class _MFMRes(nn.Module):
    def __init__(self, ch: int, bn: bool = False):
        super().__init__()
        self.conv1 = _MFM(ch, ch, bn=bn)
        self.conv2 = _MFM(ch, ch, bn=bn)

    def forward(self, x):
        return x + self.conv2(self.conv1(x))


class LightCNN29(nn.Module):
    """LightCNN-29 (Wu et al.) on grayscale input: MFM conv 5x5 (48), pool, 1 res block, group (96), pool,
    2 res blocks, group (192), pool, 3 res blocks, group (128), 4 res blocks, group (128), pool, MFM fc
    (256). Module names follow the public LightCNN release so its checkpoints load at ``width=1,
    image_size=128``. Returns ``(logits or None, fc feature (B, 256 w), pooled map)``."""

    def __init__(self, width: float = 1.0, image_size: int = 128, num_classes: int = 0, fc_dim: int = 256,
                 batch_norm: bool = False):
        super().__init__()
        c = [max(2, int(round(v * width))) for v in (48, 96, 192, 128, 128)]
        bn = batch_norm
        pool = lambda: nn.MaxPool2d(2, 2, ceil_mode=True)  # noqa: E731
        self.conv1 = _MFM(1, c[0], 5, 1, 2, bn=bn)
        self.pool1 = pool()
        self.block1 = nn.Sequential(*[_MFMRes(c[0], bn) for _ in range(1)])
        self.group1 = _Group(c[0], c[1], bn)
        self.pool2 = pool()
        self.block2 = nn.Sequential(*[_MFMRes(c[1], bn) for _ in range(2)])
        self.group2 = _Group(c[1], c[2], bn)
        self.pool3 = pool()
        self.block3 = nn.Sequential(*[_MFMRes(c[2], bn) for _ in range(3)])
        self.group3 = _Group(c[2], c[3], bn)
        self.block4 = nn.Sequential(*[_MFMRes(c[3], bn) for _ in range(4)])
        self.group4 = _Group(c[3], c[4], bn)
        self.pool4 = pool()
        side = -(-image_size // 16)
        self.fc_dim = max(8, int(round(fc_dim * width))) if width != 1 else fc_dim
        self.fc = _MFM(side * side * c[4], self.fc_dim, linear=True)
        self.fc2 = nn.Linear(self.fc_dim, num_classes) if num_classes else None
        self.image_size = image_size
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, gray: torch.Tensor):
        if gray.shape[-1] != self.image_size:
            gray = F.interpolate(gray, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = self.pool1(self.conv1(gray))
        x = self.pool2(self.group1(self.block1(x)))
        x = self.pool3(self.group2(self.block2(x)))
        x = self.group3(self.block3(x))
        pooled = self.pool4(self.group4(self.block4(x)))
        fc = self.fc(pooled.flatten(1))
        logits = self.fc2(F.dropout(fc, 0.2, self.training)) if self.fc2 is not None else None
        return logits, fc, pooled
