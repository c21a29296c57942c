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

from shared.errors import ConfigError

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
        raise ConfigError(f"image_size={image_size} must be a power of two >= {minimum}; use 32, 64 or 128")


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
    """The official residual block: ``act(body(x) + conv1x1(x))`` with body = conv3x3-BN-LReLU-conv3x3-BN
    (the shortcut is a 1x1 conv, and the activation -- LReLU, or sigmoid in the attention -- follows the sum)."""

    def __init__(self, cin: int, cout: int | None = None, act: str = "lrelu"):
        super().__init__()
        cout = cout or cin
        self.shortcut = nn.Conv2d(cin, cout, 1, 1, 0)
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), _act(),
                                  nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))
        self.out = nn.Sigmoid() if act == "sigmoid" else _act()

    def forward(self, x):
        return self.out(self.body(x) + self.shortcut(x))


def _cbr(cin: int, cout: int, k: int, s: int, p: int, bn: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, p)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(_act())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------- flow networks


def _deconv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), _act())


class FlowNet(nn.Module):
    """FlowNetS-style encoder-decoder (the official ``FlowNet``, after NVIDIA flownet2) mapping an image to
    absolute sampling grids at ``S/4, S/2, S`` (``tanh`` heads; ``F.grid_sample`` convention).

    Encoder: conv0 (ngf) at S, then stride-2 stages of two convs each down to 2x2 with widths
    ``ngf * (2, 2, 4, 8, 8, 16)`` at 128 px (the last ``log2(S) - 1`` of them at other sizes). Decoder:
    a flow is predicted at every level from the bottom up; each level concatenates the deconvolved
    features, the encoder skip (only below S/4, as in the official code) and the coarser flow upsampled
    by a learned transposed conv; decoder widths shrink to ``ngf/2, ngf/4`` at S/2 and S. MSRA init.
    F (forward) reads the profile and predicts where each frontal pixel comes from in the profile;
    B (backward) also reads the profile and predicts where each profile pixel comes from in the frontal.
    """

    def __init__(self, image_size: int = 128, ngf: int = 64, in_channels: int = 3):
        super().__init__()
        _check_size(image_size)
        self.image_size, self.ngf = image_size, ngf
        n = int(math.log2(image_size)) - 1  # stride-2 stages: 128 -> 6, 64 -> 5 (bottom at 2x2)
        mult = [2, 2, 4, 8, 8, 16][-n:] if n <= 6 else [2] * (n - 6) + [2, 2, 4, 8, 8, 16]
        enc = [ngf] + [ngf * m for m in mult]  # width after conv0 and after each stage
        self.enc_widths = enc
        self.conv0 = _cbr(in_channels, ngf, 3, 1, 1)
        self.down = nn.ModuleList(nn.Sequential(_cbr(enc[k], enc[k + 1] if k else ngf, 3, 2, 1),
                                                _cbr(enc[k + 1] if k else ngf, enc[k + 1], 3, 1, 1))
                                  for k in range(n))
        # decoder levels l = n-1 .. 0 (resolution S / 2^l); widths: mirror of the encoder, then ngf, ngf/2, ngf/4
        dec = [max(1, int(ngf * 2.0 ** (lvl - 2))) for lvl in range(n)]  # ngf/4, ngf/2, ngf, 2 ngf, ... (official)
        self.predict = nn.ModuleDict({str(n): nn.Sequential(nn.Conv2d(enc[n], 2, 3, 1, 1), nn.Tanh())})
        self.up_flow = nn.ModuleDict()
        self.deconv = nn.ModuleDict()
        self.inter = nn.ModuleDict()
        concat = enc[n]  # channels of the previous level's concatenation (the bottom: its features)
        for lvl in range(n - 1, -1, -1):
            skip = enc[lvl] if lvl >= 3 else 0  # encoder skips only below S/4 (as in the official decoder)
            self.deconv[str(lvl)] = _deconv(concat, dec[lvl])
            self.up_flow[str(lvl)] = nn.ConvTranspose2d(2, 2, 4, 2, 1)
            concat = skip + dec[lvl] + 2
            self.inter[str(lvl)] = _cbr(concat, dec[lvl], 3, 1, 1)
            self.predict[str(lvl)] = nn.Sequential(nn.Conv2d(dec[lvl], 2, 3, 1, 1), nn.Tanh())
        self.levels = n
        for m in self.modules():  # official: initialize_msra
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Grids ``[(B, S/4, S/4, 2), (B, S/2, S/2, 2), (B, S, S, 2)]``."""
        feats = [self.conv0(x)]
        for d in self.down:
            feats.append(d(feats[-1]))
        n = self.levels
        concat = feats[n]
        flow = self.predict[str(n)](concat)
        flows = {}
        for lvl in range(n - 1, -1, -1):
            parts = [self.deconv[str(lvl)](concat), self.up_flow[str(lvl)](flow)]
            if lvl >= 3:
                parts.insert(0, feats[lvl])
            concat = torch.cat(parts, 1)
            flow = self.predict[str(lvl)](self.inter[str(lvl)](concat))
            flows[lvl] = flow
        return [flows[lvl].permute(0, 2, 3, 1) for lvl in (2, 1, 0)]


# ---------------------------------------------------------------------------------- the generator


class WarpAttentionModule(nn.Module):
    """Warp an encoder feature with the flow, concatenate its horizontal flip (facial symmetry fills
    what the profile hides), and gate the result with an attention map of the same channels computed
    from it (official ``att_i``: conv-BN-LReLU, then a residual block whose activation is a sigmoid)."""

    def __init__(self, ch: int, flip: bool = True, attention: bool = True):
        super().__init__()
        self.flip, self.use_attention = flip, attention
        self.out_channels = ch * (2 if flip else 1)
        if attention:
            c = self.out_channels
            self.attention = nn.Sequential(_cbr(c, c, 3, 1, 1), ResBlock(c, c, act="sigmoid"))

    def forward(self, feat: torch.Tensor, grid: torch.Tensor | None):
        w = warp(feat, grid) if grid is not None else feat
        if self.flip:
            w = torch.cat([w, hflip(w)], 1)
        if not self.use_attention:
            return w, None
        a = self.attention(w)
        return w * a, a


class _Up(nn.Module):
    """conv3x3 to 4x channels + PixelShuffle(2) + BN + LReLU (official ``PixelSuffleBlock``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, 4 * cout, 3, 1, 1), nn.PixelShuffle(2), nn.BatchNorm2d(cout), _act())

    def forward(self, x):
        return self.body(x)


class FFWMGenerator(nn.Module):
    """The FFWM generator (official ``FFWM(num_layers=3, isflip=True, sn=True)``), widths in units of ngf.

    Encoder e0 (7x7 conv + LReLU + res block, ngf, S; no BN), e1 (4x4/2, ngf, S/2), e2 (2 ngf, S/4),
    e3 (4 ngf, S/8), each conv-BN-LReLU + res block. Three decoder levels: a PixelShuffle up-block (to 2 ngf,
    ngf, ngf), the skip feature (e2, e1, e0) through a Warp Attention Module driven by the forward flow at
    that scale, concatenated with the up-block output and (levels 1, 2) the x2-upsampled previous output;
    two residual blocks at that full width; a 3x3 conv + sigmoid gives the scale's image. Spectral norm on
    every conv (``sn``).

    ``skip``: ``wam`` (the paper), ``noflip`` (WAM without the flipped copy), ``noatt`` (warp + flip, no
    attention), ``unet`` (plain U-Net skips: the encoder features, not warped), ``none`` (no skips).
    """

    def __init__(self, image_size: int = 128, ngf: int = 64, skip: str = "wam", sn: bool = True):
        super().__init__()
        _check_size(image_size)
        if skip not in SKIP_MODES:
            raise ConfigError(f"skip={skip!r} is not a known skip mode; use one of {', '.join(SKIP_MODES)}")
        self.image_size, self.ngf, self.skip = image_size, ngf, skip
        self.e0 = nn.Sequential(_cbr(3, ngf, 7, 1, 3, bn=False), ResBlock(ngf))
        self.e1 = nn.Sequential(_cbr(ngf, ngf, 4, 2, 1), ResBlock(ngf))
        self.e2 = nn.Sequential(_cbr(ngf, 2 * ngf, 4, 2, 1), ResBlock(2 * ngf))
        self.e3 = nn.Sequential(_cbr(2 * ngf, 4 * ngf, 4, 2, 1), ResBlock(4 * ngf))
        skip_ch = [2 * ngf, ngf, ngf]  # e2, e1, e0
        up_ch = [2 * ngf, ngf, ngf]
        self.ups = nn.ModuleList()
        self.wams = nn.ModuleList()
        self.dres = nn.ModuleList()
        self.to_img = nn.ModuleList()
        prev = 4 * ngf
        for i in range(3):
            if skip in ("wam", "noflip", "noatt"):
                wam = WarpAttentionModule(skip_ch[i], flip=skip != "noflip", attention=skip != "noatt")
                self.wams.append(wam)
                s_ch = wam.out_channels
            else:
                self.wams.append(nn.Identity())
                s_ch = skip_ch[i] if skip == "unet" else 0
            self.ups.append(_Up(prev, up_ch[i]))
            width = up_ch[i] + s_ch + (3 if i else 0)
            self.dres.append(nn.Sequential(ResBlock(width), ResBlock(width)))
            self.to_img.append(nn.Sequential(nn.Conv2d(width, 3, 3, 1, 1), nn.Sigmoid()))
            prev = width
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
            parts = []
            if self.skip in ("wam", "noflip", "noatt"):
                s, a = self.wams[i](skips[i], grids[i])
                parts.append(s)
                attentions.append(a)
            elif self.skip == "unet":
                parts.append(skips[i])
            parts.append(self.ups[i](h))
            if img is not None:
                parts.append(F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False))
            h = self.dres[i](torch.cat(parts, 1))
            img = self.to_img[i](h)
            images.append(img)
        return images, (attentions if attentions and attentions[0] is not None else None)


# ------------------------------------------------------------------------------ the discriminator


class MSDiscriminator(nn.Module):
    """Multi-scale discriminator (official, after InGAN): one sub-net per scale ``S, S/2, ...`` with
    ``ceil(log2(S / 16))`` scales (3 at 128 px, 2 at 64), each three stride-2 3x3 spectral-norm convs with
    BN and LReLU and a plain 1x1 head; the input is bilinearly downscaled for each scale and the score
    maps are upsampled to the finest map's size and summed. Trained with LSGAN."""

    def __init__(self, image_size: int = 128, ndf: int = 64, min_size: int = 16, sn: bool = True):
        super().__init__()
        self.num_scales = max(1, math.ceil(math.log2(image_size / min_size)))
        self.nets = nn.ModuleList()
        for _ in range(self.num_scales):
            body = nn.Sequential(_cbr(3, ndf, 3, 2, 1), _cbr(ndf, 2 * ndf, 3, 2, 1), _cbr(2 * ndf, 4 * ndf, 3, 2, 1))
            if sn:
                apply_spectral_norm(body)
            self.nets.append(nn.Sequential(body, nn.Conv2d(4 * ndf, 1, 1)))  # the head has no spectral norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.nets[0](x)
        for k in range(1, self.num_scales):
            y = self.nets[k](F.interpolate(x, scale_factor=0.5 ** k, mode="bilinear", align_corners=False))
            out = out + F.interpolate(y, size=out.shape[-2:], mode="bilinear", align_corners=False)
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

    def __init__(self, width: float = 1.0, num_classes: int = 0, batch_norm: bool = False, normalize: bool = False):
        super().__init__()
        self.normalize = normalize  # the official loss feeds [0, 1] images without ImageNet normalisation
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
        h = (x - self.mean) / self.std if self.normalize else x
        outs = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                outs.append(h)
        return outs

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(x)[-1].mean((2, 3)))


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W) -> (B, 1, H, W)``: the channel mean, as the official identity loss and test feed
    LightCNN (not a luma weighting)."""
    return x.mean(1, keepdim=True)


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
