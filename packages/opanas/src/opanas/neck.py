"""The OPANAS neck: six information paths, the densely connected super-net, fixed sub-nets, and
the FPN / PAFPN baselines, all with torchvision's ``FeaturePyramidNetwork`` interface
(``OrderedDict`` of C2..C5 in, ``OrderedDict`` of P2..P5 (+ extra levels) out, ``out_channels``).

Every path maps a 4-level pyramid [P2, P3, P4, P5] (all C channels; index 0..3 below) to another.
"conv" is a 3x3 DCN-v1 (:class:`opanas.dcn.DeformConv`) with bias, no norm and no activation; it is
a plain conv at level 0 and deformable at levels >= 1 (SEPC's ``part_deform``), as in the official code.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from opanas.arch import NUM_EDGES, NUM_NODES, OPS, edge_index, parse_arch
from opanas.dcn import DeformConv

__all__ = ["FPN", "NECKS", "BottomUp", "FusingSplitting", "NoneOp", "OPANASNeck", "PAFPN", "RetinaNetLevels",
           "ScaleEqualizing", "Skip", "TopDown", "build_neck", "extract_subnet", "fpn_inner_channels_for",
           "opanas_param_count"]

#: the necks :func:`build_neck` offers
NECKS = ("opanas", "fpn", "pafpn")

NUM_LEVELS = 4


def up_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Nearest upsampling to ``ref``'s size (= ``scale_factor=2`` when sizes are exact multiples)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


def down_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """2x2/2 max-pool, then nearest resize if the shape still differs from ``ref`` (odd sizes)."""
    x = F.max_pool2d(x, 2, stride=2)
    return x if x.shape[-2:] == ref.shape[-2:] else F.interpolate(x, size=ref.shape[-2:], mode="nearest")


def match(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return x if x.shape[-2:] == ref.shape[-2:] else F.interpolate(x, size=ref.shape[-2:], mode="nearest")


class _Path(nn.Module):
    def __init__(self, channels: int, deformable: bool = True, offset_init: str = "zero", dcn_impl: str = "auto"):
        super().__init__()
        self.kw = dict(deformable=deformable, offset_init=offset_init, impl=dcn_impl)
        self.channels = channels

    def conv(self, cin: int | None = None, stride: int = 1) -> DeformConv:
        return DeformConv(cin or self.channels, self.channels, stride=stride, **self.kw)


class TopDown(_Path):
    """F3 = conv(P3) (called at level 1: deformable); Fi = conv_i(Pi + up(F(i+1))) for i = 2, 1, 0."""

    def __init__(self, channels: int, **kw):
        super().__init__(channels, **kw)
        self.convs = nn.ModuleList([self.conv() for _ in range(NUM_LEVELS)])

    def forward(self, p: list[torch.Tensor]) -> list[torch.Tensor]:
        top = NUM_LEVELS - 1
        out = [None] * NUM_LEVELS
        out[top] = self.convs[top](p[top], level=1)
        for i in range(top - 1, -1, -1):
            out[i] = self.convs[i](p[i] + up_to(out[i + 1], p[i]), level=i)
        return out


class BottomUp(_Path):
    """F0 = conv(P0) (level 0: plain); Fi = conv_i(Pi + maxpool(F(i-1))) (PANet's bottom-up path)."""

    def __init__(self, channels: int, **kw):
        super().__init__(channels, **kw)
        self.convs = nn.ModuleList([self.conv() for _ in range(NUM_LEVELS)])

    def forward(self, p: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [self.convs[0](p[0], level=0)]
        for i in range(1, NUM_LEVELS):
            out.append(self.convs[i](p[i] + down_to(out[i - 1], p[i]), level=i))
        return out


class FusingSplitting(_Path):
    """A = P1 + maxpool(P0), B = up(P3) + P2; G1 = conv(cat[A, up(B)]) at level 1 and
    G2 = conv(cat[maxpool(A), B]) at level 2 (both called with level index 1: deformable);
    outputs [up(G1), G1, G2, maxpool(G2)].

    ``shared_weights=True`` reproduces the official code, whose two fuse convs are one module
    (a list built by repetition); ``False`` gives the two separate convs the paper describes.
    """

    def __init__(self, channels: int, shared_weights: bool = False, **kw):
        super().__init__(channels, **kw)
        self.shared_weights = shared_weights
        first = self.conv(2 * channels)
        self.fuse = nn.ModuleList([first] if shared_weights else [first, self.conv(2 * channels)])

    def forward(self, p: list[torch.Tensor]) -> list[torch.Tensor]:
        a = p[1] + down_to(p[0], p[1])
        b = up_to(p[3], p[2]) + p[2]
        g1 = self.fuse[0](torch.cat([a, up_to(b, a)], dim=1), level=1)
        g2 = self.fuse[-1](torch.cat([down_to(a, b), b], dim=1), level=1)
        return [up_to(g1, p[0]), g1, g2, down_to(g2, p[3])]


class ScaleEqualizing(_Path):
    """SEPC's pyramid convolution with three convs shared across levels:
    Fi = ReLU(conv_b(Pi) + conv_c,stride2(P(i-1)) [i > 0] + up(conv_a(P(i+1))) [i < 3]).

    Convs are called with the output level (plain at level 0); ``up`` is bilinear with
    ``align_corners=True`` (SEPC's ``F.upsample_bilinear``). Weights init normal(0, 0.01), as in SEPC.
    """

    def __init__(self, channels: int, **kw):
        super().__init__(channels, **kw)
        self.conv_a, self.conv_b, self.conv_c = self.conv(), self.conv(), self.conv(stride=2)
        for m in (self.conv_a, self.conv_b, self.conv_c):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)

    def forward(self, p: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i in range(NUM_LEVELS):
            f = self.conv_b(p[i], level=i)
            if i > 0:
                f = f + match(self.conv_c(p[i - 1], level=i), f)
            if i < NUM_LEVELS - 1:
                f = f + F.interpolate(self.conv_a(p[i + 1], level=i), size=f.shape[-2:], mode="bilinear",
                                      align_corners=True)
            out.append(F.relu(f))
        return out


class Skip(nn.Module):
    def forward(self, p):
        return p


class NoneOp(nn.Module):
    """The ``none`` path: zero output (represented as ``None`` so no zeros are computed)."""

    def forward(self, p):
        return None


def make_op(name: str, channels: int, fs_shared_weights: bool = False, **kw) -> nn.Module:
    if name == "none":
        return NoneOp()
    if name == "skip_connect":
        return Skip()
    if name == "TD":
        return TopDown(channels, **kw)
    if name == "BU":
        return BottomUp(channels, **kw)
    if name == "FS":
        return FusingSplitting(channels, shared_weights=fs_shared_weights, **kw)
    if name == "SE":
        return ScaleEqualizing(channels, **kw)
    raise ValueError(f"unknown path {name!r}; expected one of {OPS}")


def _add(a: list[torch.Tensor] | None, b: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
    if a is None:
        return b
    if b is None:
        return a
    return [x + y for x, y in zip(a, b)]


class OPANASNeck(nn.Module):
    """Super-net (``arch=None``: every edge holds all six paths) or fixed sub-net (``arch`` given:
    every edge holds only its chosen path). Parameter names agree, so a sub-net loads the matching
    slice of a super-net's state dict (:func:`extract_subnet`).

    Pre/post-processing as in the official ``OPA_FPN``: 1x1 lateral convs C_i -> C (no norm/act);
    the global-context term (``top_context``: 1x1 conv of the global-average-pooled top lateral,
    broadcast-added to it); output = N1 + ... + N5; extra levels from ``extra_blocks`` (default:
    torchvision's ``LastLevelMaxPool`` = max-pool k1 s2 on the top output, as the official P6).

    In super-net mode the path of each edge comes from ``forward(x, arch)`` or, when a detector
    calls the neck, from :meth:`set_arch` (SPOS: one path per edge per step).
    """

    def __init__(self, in_channels_list: Sequence[int], out_channels: int, arch=None, *, deformable: bool = True,
                 fs_shared_weights: bool = False, top_context: bool = True, offset_init: str = "zero",
                 dcn_impl: str = "auto", extra_blocks: ExtraFPNBlock | None | str = "maxpool"):
        super().__init__()
        if len(in_channels_list) != NUM_LEVELS:
            raise ValueError(f"the OPANAS paths are defined on a {NUM_LEVELS}-level pyramid (C2..C5); got "
                             f"{len(in_channels_list)} input levels with channels {list(in_channels_list)}.")
        self.out_channels = out_channels
        self.arch = None if arch is None else parse_arch(arch)
        self.active_arch: tuple[int, ...] | None = None
        self.lateral = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels_list])
        self.context = nn.Conv2d(out_channels, out_channels, 1) if top_context else None
        for m in [*self.lateral, *([self.context] if self.context is not None else [])]:
            nn.init.xavier_uniform_(m.weight)  # the official neck's init_weights
            nn.init.zeros_(m.bias)
        kw = dict(fs_shared_weights=fs_shared_weights, deformable=deformable, offset_init=offset_init, dcn_impl=dcn_impl)
        self._build_kwargs = dict(kw, top_context=top_context)
        self.edges = nn.ModuleList()
        for e in range(NUM_EDGES):
            names = OPS if self.arch is None else (OPS[self.arch[e]],)
            self.edges.append(nn.ModuleDict({n: make_op(n, out_channels, **kw) for n in names}))
        self.extra_blocks = _extra(extra_blocks, out_channels)

    @property
    def is_supernet(self) -> bool:
        return self.arch is None

    def set_arch(self, arch) -> None:
        """Choose the path of every edge for the next forward passes (super-net mode)."""
        self.active_arch = None if arch is None else parse_arch(arch)

    def laterals(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        if self.context is not None:
            lat[-1] = lat[-1] + self.context(F.adaptive_avg_pool2d(lat[-1], 1))
        return lat

    def forward_pyramid(self, feats: list[torch.Tensor], arch=None) -> list[torch.Tensor]:
        arch = parse_arch(arch) if arch is not None else (self.arch or self.active_arch)
        if arch is None:
            raise RuntimeError("super-net forward needs an architecture: call neck.set_arch(code) or pass arch=...")
        if self.arch is not None and arch != self.arch:
            raise ValueError(f"this sub-net was built for {self.arch}; it cannot run {arch}. Build a super-net "
                             f"(arch=None) to run other architectures.")
        nodes: list[list[torch.Tensor] | None] = [self.laterals(feats)]
        for k in range(1, NUM_NODES + 1):
            total = None
            for j in range(k):
                name = OPS[arch[edge_index(k - 1, j)]]
                src = nodes[j]
                if name == "none":
                    continue
                if src is None:  # a zero node: parameter-free paths keep it zero; others see real zeros
                    if name == "skip_connect":
                        continue
                    src = [torch.zeros_like(t) for t in nodes[0]]
                total = _add(total, self.edges[edge_index(k - 1, j)][name](src))
            nodes.append(total)
        out = None
        for node in nodes[1:]:
            out = _add(out, node)
        return out if out is not None else [torch.zeros_like(t) for t in nodes[0]]

    def forward(self, x: "OrderedDict[str, torch.Tensor]", arch=None) -> "OrderedDict[str, torch.Tensor]":
        names, feats = list(x.keys()), list(x.values())
        outs = self.forward_pyramid(feats, arch)
        if self.extra_blocks is not None:
            outs, names = self.extra_blocks(outs, feats, names)
        return OrderedDict(zip(names, outs))


def extract_subnet(supernet: OPANASNeck, arch, **overrides) -> OPANASNeck:
    """A stand-alone sub-net for ``arch`` carrying the super-net's weights for that architecture."""
    if not supernet.is_supernet:
        raise ValueError("extract_subnet needs a super-net (built with arch=None).")
    arch = parse_arch(arch)
    sub = OPANASNeck([m.in_channels for m in supernet.lateral], supernet.out_channels, arch=arch,
                     extra_blocks=copy.deepcopy(supernet.extra_blocks), **{**supernet._build_kwargs, **overrides})
    state = supernet.state_dict()
    keep = sub.state_dict().keys()
    sub.load_state_dict({k: state[k] for k in keep}, strict=True)
    return sub


class PAFPN(nn.Module):
    """PANet's path aggregation FPN as in mmdetection's ``PAFPN``: FPN top-down (1x1 laterals, nearest
    2x upsampling, 3x3 output convs), then a bottom-up pass (3x3/s2 downsample conv added to the next
    level, followed by a 3x3 conv). No norm, no activation; extra levels from ``extra_blocks``."""

    def __init__(self, in_channels_list: Sequence[int], out_channels: int, extra_blocks: ExtraFPNBlock | None | str = "maxpool"):
        super().__init__()
        n = len(in_channels_list)
        self.out_channels = out_channels
        self.lateral = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels_list])
        self.fpn_convs = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(n)])
        self.downsample = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(n - 1)])
        self.pafpn_convs = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(n - 1)])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.extra_blocks = _extra(extra_blocks, out_channels)

    def forward(self, x: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        names, feats = list(x.keys()), list(x.values())
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + up_to(lat[i], lat[i - 1])
        inter = [conv(t) for conv, t in zip(self.fpn_convs, lat)]
        for i in range(len(inter) - 1):
            inter[i + 1] = inter[i + 1] + match(self.downsample[i](inter[i]), inter[i + 1])
        outs = [inter[0]] + [conv(t) for conv, t in zip(self.pafpn_convs, inter[1:])]
        if self.extra_blocks is not None:
            outs, names = self.extra_blocks(outs, feats, names)
        return OrderedDict(zip(names, outs))


class FPN(nn.Module):
    """FPN (Lin et al. 2017) exactly as torchvision's ``FeaturePyramidNetwork`` (1x1 laterals, nearest
    top-down upsampling, 3x3 output convs, no norm/act, kaiming-uniform(a=1) init), with one addition:
    ``inner_channels`` sets the width of the laterals and the top-down sums (default: ``out_channels``,
    the standard FPN). A wider inner pyramid is how this package builds a **parameter-matched FPN**:
    the same detector heads (they see ``out_channels``) with as many neck parameters as a searched neck
    (:func:`fpn_inner_channels_for`)."""

    def __init__(self, in_channels_list: Sequence[int], out_channels: int, inner_channels: int | None = None,
                 extra_blocks: ExtraFPNBlock | None | str = "maxpool"):
        super().__init__()
        inner = int(inner_channels or out_channels)
        self.out_channels, self.inner_channels = out_channels, inner
        self.inner_blocks = nn.ModuleList([nn.Conv2d(c, inner, 1) for c in in_channels_list])
        self.layer_blocks = nn.ModuleList([nn.Conv2d(inner, out_channels, 3, padding=1) for _ in in_channels_list])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)
        self.extra_blocks = _extra(extra_blocks, out_channels)

    def forward(self, x: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        names, feats = list(x.keys()), list(x.values())
        last = self.inner_blocks[-1](feats[-1])
        outs = [self.layer_blocks[-1](last)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[i](feats[i])
            last = lateral + up_to(last, lateral)
            outs.insert(0, self.layer_blocks[i](last))
        if self.extra_blocks is not None:
            outs, names = self.extra_blocks(outs, feats, names)
        return OrderedDict(zip(names, outs))


def fpn_inner_channels_for(target_params: int, in_channels_list: Sequence[int], out_channels: int) -> int:
    """The inner width W whose :class:`FPN` has the parameter count closest to ``target_params`` (extra
    blocks excluded): params(W) = W * (sum(C_i) + L + 9 * L * out) + L * out for L levels."""
    n = len(in_channels_list)
    per_w = sum(in_channels_list) + n + 9 * n * out_channels
    return max(1, int(round((int(target_params) - n * out_channels) / per_w)))


class RetinaNetLevels(ExtraFPNBlock):
    """RetinaNet's pyramid P3-P7 from a P2-P5 neck (ours; the official RetinaNet config was not released):
    P2 is dropped from the outputs (the OPANAS paths still use it inside the neck), P6 = 3x3/s2 conv of P5
    and P7 = 3x3/s2 conv of relu(P6), as torchvision's ``LastLevelP6P7`` on P5 (mmdet ``add_extra_convs``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        for m in (self.p6, self.p7):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)

    def forward(self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]):
        p6 = self.p6(p[-1])
        p7 = self.p7(F.relu(p6))
        return list(p[1:]) + [p6, p7], list(names[1:]) + ["p6", "p7"]


def _extra(extra_blocks, channels: int) -> ExtraFPNBlock | None:
    """``"maxpool"`` (P6 = max-pool k1 s2 of P5: Faster R-CNN), ``"retinanet"`` (P3-P7), None, or a module."""
    if extra_blocks == "maxpool":
        return LastLevelMaxPool()
    if extra_blocks == "retinanet":
        return RetinaNetLevels(channels)
    if extra_blocks is None or isinstance(extra_blocks, nn.Module):
        return extra_blocks
    raise ValueError(f"extra_blocks must be 'maxpool', 'retinanet', None or a module, got {extra_blocks!r}")


def opanas_param_count(neck: "OPANASNeck", arch) -> int:
    """Parameters of the sub-net ``arch`` of super-net ``neck`` (laterals, context and the chosen path of
    every edge; extra blocks included), without building it: every edge holds the same ops."""
    arch = parse_arch(arch)
    shared = sum(p.numel() for n, p in neck.named_parameters() if not n.startswith("edges."))
    per_op = {name: sum(p.numel() for p in op.parameters()) for name, op in neck.edges[0].items()}
    return shared + sum(per_op[OPS[a]] for a in arch)


def build_neck(kind: str, in_channels_list: Sequence[int], out_channels: int, arch=None,
               extra_blocks: ExtraFPNBlock | None | str = "maxpool", inner_channels: int | None = None,
               **opanas_kwargs) -> nn.Module:
    """``kind``: ``opanas`` (``arch=None`` -> super-net, else the fixed sub-net), ``fpn`` (:class:`FPN`;
    ``inner_channels`` widens it) or ``pafpn``. ``extra_blocks``: ``maxpool`` | ``retinanet`` | None | a module."""
    if kind not in NECKS:
        raise ValueError(f"unknown neck {kind!r}; expected one of {', '.join(NECKS)}.")
    if kind != "fpn" and inner_channels is not None:
        raise ValueError(f"inner_channels applies to the fpn neck only, not {kind!r}.")
    if kind == "opanas":
        return OPANASNeck(in_channels_list, out_channels, arch=arch, extra_blocks=extra_blocks, **opanas_kwargs)
    if opanas_kwargs:
        raise ValueError(f"options {sorted(opanas_kwargs)} apply to the opanas neck only, not {kind!r}.")
    if kind == "fpn":
        return FPN(in_channels_list, out_channels, inner_channels=inner_channels, extra_blocks=extra_blocks)
    return PAFPN(in_channels_list, out_channels, extra_blocks=extra_blocks)
