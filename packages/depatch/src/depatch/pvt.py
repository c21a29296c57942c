"""PVT-v1 backbones and DPT (PVT-v1 with DePatch in stages 2-4), plus the model registry.

The layout and parameter names follow the official PVT-v1 / DPT code (``patch_embed{1..4}``,
``pos_embed{1..4}``, ``block{1..4}``, ``norm``, ``cls_token``, ``head``), so parameter counts match
the papers exactly (DPT-T/S/M 15.15/26.41/46.13 M, PVT-T/S/M 13.23/24.49/44.21 M) and official
checkpoints load after :func:`convert_official_state_dict` drops their constant buffers.

Beyond the official classification code:

* any input size: stage grids come from the runtime shape and the learned position embeddings are
  bilinearly resized when the grid differs from the one they were trained at;
* ``features_only=True``: the model returns the NCHW maps of the stages in ``out_indices``
  (strides 4/8/16/32, no cls token, no final norm, like the official detection variant);
* ``forward(x, return_boxes=True)``: the DePatch rectangles of every deformable stage, for figures
  (instead of the official stateful ``box_coder.boxes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from depatch.depatch import DEFAULT_SIZE_BIAS, DePatchEmbed, PatchEmbed

__all__ = ["PyramidVisionTransformer", "create_model", "list_models", "register_model", "model_config",
           "convert_official_state_dict", "count_parameters", "depatch_flags", "load_pretrained", "resize_pos_embed"]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """PVT-v1 spatial-reduction attention: keys/values come from the map downsampled by a
    ``sr x sr / s sr`` conv + LayerNorm (no reduction when ``sr == 1``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, sr_ratio: int = 1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}.")
        self.num_heads, self.sr_ratio, self.attn_drop = num_heads, sr_ratio, attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        nh = self.num_heads
        q = self.q(x).reshape(B, N, nh, C // nh).transpose(1, 2)
        if self.sr_ratio > 1:
            if min(H, W) < self.sr_ratio:
                raise ValueError(f"stage grid {H}x{W} is smaller than the spatial-reduction ratio {self.sr_ratio}; "
                                 "use a larger input image.")
            # the (possible) cls token is not part of the map: PVT-v1 only reduces with sr > 1 in stages
            # that have no cls token
            kv_in = self.norm(self.sr(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2))
        else:
            kv_in = x
        k, v = self.kv(kv_in).reshape(B, -1, 2, nh, C // nh).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, sr_ratio: int,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, sr_ratio)
        self.drop_path = StochasticDepth(drop_path, "row")  # p may change during training (set_drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, H, W):
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PyramidVisionTransformer(nn.Module):
    """PVT-v1; with ``depatch=(False, True, True, True)`` it is DPT.

    Args:
        embed_dims, depths, num_heads, mlp_ratios, sr_ratios: per-stage widths and depths.
        depatch: per stage, whether its patch embedding is a :class:`DePatchEmbed` (stage 1 is
            always the fixed 4x4 patch in the paper).
        img_size: the size the position embeddings are laid out for (other sizes interpolate).
        num_points: DePatch sample points per axis (3 in the paper).
        predict_size: DePatch predicts shift and size (the paper); ``False``: shift only (ablation).
        features_only: return the stage maps in ``out_indices`` instead of logits.
    """

    def __init__(self, embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (2, 2, 2, 2),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), depatch: Sequence[bool] = (False, False, False, False),
                 img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 num_points: int = 3, size_bias: float = DEFAULT_SIZE_BIAS, first_patch_size: int = 4,
                 predict_size: bool = True, features_only: bool = False, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        n = len(embed_dims)
        if not all(len(s) == n for s in (depths, num_heads, mlp_ratios, sr_ratios, depatch)):
            raise ValueError("embed_dims, depths, num_heads, mlp_ratios, sr_ratios and depatch need one entry per stage.")
        if not features_only and sr_ratios[-1] > 1:
            raise ValueError("the last stage carries the cls token, so its sr_ratio must be 1 (as in PVT-v1).")
        if depatch[0]:
            raise ValueError("DePatch replaces the 2x2 patch embedding of stages 2+; stage 1 stays a fixed patch.")
        self.num_stages, self.embed_dims, self.depatch = n, list(embed_dims), [bool(d) for d in depatch]
        self.depths, self.drop_path_rate = list(depths), float(drop_path_rate)
        self.num_classes, self.features_only = num_classes, features_only
        self.out_indices = tuple(out_indices)
        if any(not 0 <= i < n for i in self.out_indices):
            raise ValueError(f"out_indices {self.out_indices} must lie in [0, {n}).")
        self.strides = [first_patch_size * 2 ** i for i in range(n)]
        self.feature_info = [{"num_chs": embed_dims[i], "reduction": self.strides[i], "module": f"block{i + 1}"}
                             for i in self.out_indices]

        dpr = self._drop_path_rates(drop_path_rate)
        grid = img_size
        self.pos_grids: list[int] = []
        cur = 0
        for i in range(n):
            patch = first_patch_size if i == 0 else 2
            in_ch = in_chans if i == 0 else embed_dims[i - 1]
            grid = grid // patch
            self.pos_grids.append(grid)
            if depatch[i]:
                embed = DePatchEmbed(in_ch, embed_dims[i], patch, num_points, size_bias, predict_size)
            else:
                embed = PatchEmbed(in_ch, embed_dims[i], patch)
            setattr(self, f"patch_embed{i + 1}", embed)
            extra = 1 if i == n - 1 else 0  # the cls-token slot of the last stage (official layout)
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, grid * grid + extra, embed_dims[i])))
            setattr(self, f"pos_drop{i + 1}", nn.Dropout(drop_rate))
            setattr(self, f"block{i + 1}", nn.ModuleList([
                Block(embed_dims[i], num_heads[i], mlp_ratios[i], qkv_bias, sr_ratios[i], drop_rate,
                      attn_drop_rate, dpr[cur + j]) for j in range(depths[i])]))
            cur += depths[i]
        if not features_only:
            self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[-1]))
            self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    # ------------------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """Official init: trunc-normal(0.02) linear weights and position embeddings, zero biases,
        unit LayerNorms, default conv init, then the DePatch predictors set to zero."""
        for i in range(self.num_stages):
            nn.init.trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)
        if not self.features_only:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, DePatchEmbed):
                m.reset_offset()

    def _drop_path_rates(self, rate: float) -> list[float]:
        """Stochastic-depth probability of every block: linear from 0 to ``rate`` over all blocks."""
        total = sum(self.depths)
        return [rate * j / (total - 1) if total > 1 else 0.0 for j in range(total)]

    def set_drop_path(self, rate: float) -> None:
        """Reset every block's stochastic-depth probability (the official ImageNet trainer trains DPT
        without drop path for its first 100 epochs, then switches it on)."""
        blocks = [blk for i in range(self.num_stages) for blk in getattr(self, f"block{i + 1}")]
        for blk, p in zip(blocks, self._drop_path_rates(rate)):
            blk.drop_path.p = p

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides biases and norms (official: cls_token)."""
        return {"cls_token"}

    def depatch_modules(self) -> dict[int, DePatchEmbed]:
        """``{stage (1-based): DePatchEmbed}`` for the deformable stages."""
        return {i + 1: getattr(self, f"patch_embed{i + 1}") for i in range(self.num_stages) if self.depatch[i]}

    # ------------------------------------------------------------------------------ forward
    def _pos_embed(self, i: int, h: int, w: int) -> torch.Tensor:
        pos = getattr(self, f"pos_embed{i + 1}")
        if i == self.num_stages - 1:
            pos = pos[:, 1:]
        g = self.pos_grids[i]
        if (h, w) == (g, g):
            return pos
        pos = pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(h, w), mode="bilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def _stages(self, x: torch.Tensor):
        B = x.shape[0]
        feats: list[torch.Tensor] = []
        boxes: dict[int, torch.Tensor] = {}
        cls_out = None
        last = self.num_stages - 1
        for i in range(self.num_stages):
            embed = getattr(self, f"patch_embed{i + 1}")
            if isinstance(embed, DePatchEmbed):
                x, (H, W), b = embed(x, return_boxes=True)
                boxes[i + 1] = b
            else:
                x, (H, W) = embed(x)
            x = x + self._pos_embed(i, H, W)
            with_cls = i == last and not self.features_only
            if with_cls:
                pos_cls = getattr(self, f"pos_embed{i + 1}")[:, :1]
                x = torch.cat([self.cls_token.expand(B, -1, -1) + pos_cls, x], dim=1)
            x = getattr(self, f"pos_drop{i + 1}")(x)
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, H, W)
            if with_cls:
                cls_out = self.norm(x)[:, 0]
            else:
                x = x.transpose(1, 2).reshape(B, -1, H, W)
                feats.append(x)
        return feats, cls_out, boxes

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """``features_only``: the list of stage maps; otherwise the normalised cls token (B, D)."""
        feats, cls_out, _ = self._stages(x)
        return [feats[i] for i in self.out_indices] if self.features_only else cls_out

    def forward(self, x: torch.Tensor, return_boxes: bool = False):
        if x.dim() != 4:
            raise ValueError(f"expected an image batch (B, C, H, W), got shape {tuple(x.shape)}.")
        feats, cls_out, boxes = self._stages(x)
        out = [feats[i] for i in self.out_indices] if self.features_only else self.head(cls_out)
        return (out, boxes) if return_boxes else out


# ---------------------------------------------------------------------------------- registry

_MODELS: dict[str, dict[str, Any]] = {}


def register_model(name: str, **config: Any) -> None:
    """Register an architecture under ``name`` (raises on duplicates, like torchvision)."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered.")
    _MODELS[name] = config


_PVT = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1))
_DEPTHS = {"tiny": (2, 2, 2, 2), "small": (3, 4, 6, 3), "medium": (3, 4, 18, 3), "large": (3, 8, 27, 3)}
for _size, _d in _DEPTHS.items():
    register_model(f"pvt_{_size}", **_PVT, depths=_d, depatch=(False, False, False, False))
    # dpt_large is not in the official release (PVT-v1 large + DePatch in stages 2-4)
    register_model(f"dpt_{_size}", **_PVT, depths=_d, depatch=(False, True, True, True))
# mini models for the CPU embedded default and the reproduce runs (not in the paper): same
# design, widths 32-128, one block per stage, 64 px inputs (grids 16/8/4/2)
_MINI = dict(num_heads=(1, 2, 3, 4), mlp_ratios=(4, 4, 4, 4), sr_ratios=(4, 2, 1, 1), depths=(1, 1, 1, 1), img_size=64)
register_model("pvt_mini", **_MINI, embed_dims=(32, 64, 96, 128), depatch=(False, False, False, False))
register_model("dpt_mini", **_MINI, embed_dims=(32, 64, 96, 128), depatch=(False, True, True, True))
# the parameter-matched baseline of dpt_mini: the same PVT with every stage widened (16-19%, head widths
# 38/38/38/37) until it has as many parameters as dpt_mini, whose DePatch layers add 37% to pvt_mini:
# 679,562 vs 681,742 at 32 px and 8 classes (-0.3%), 692,616 vs 692,752 at 64 px and 10 classes (-0.02%)
register_model("pvt_mini_wide", **_MINI, embed_dims=(38, 76, 114, 148), depatch=(False, False, False, False))


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a shell-style ``pattern``."""
    import fnmatch

    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_config(name: str) -> dict[str, Any]:
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return dict(_MODELS[name])


def depatch_flags(stages: Sequence[int] | None, num_stages: int = 4) -> tuple[bool, ...] | None:
    """``[2, 3, 4]`` (1-based stages that use DePatch) -> ``(False, True, True, True)``; None -> None."""
    if stages is None:
        return None
    bad = [s for s in stages if not 2 <= int(s) <= num_stages]
    if bad:
        raise ValueError(f"DePatch stages {list(stages)}: stage {bad[0]} is not one of 2..{num_stages} "
                         "(stage 1 always keeps its fixed patch embedding, as in the paper).")
    return tuple(i + 1 in {int(s) for s in stages} for i in range(num_stages))


def create_model(name: str, pretrained: str | None = None, depatch_stages: Sequence[int] | None = None,
                 **kwargs: Any) -> PyramidVisionTransformer:
    """Build a registered model; ``kwargs`` override the registered config (``num_classes``,
    ``drop_path_rate``, ``img_size``, ``features_only``, ``out_indices``, ``num_points``,
    ``predict_size``...). ``depatch_stages`` (e.g. ``[4]`` or ``[2, 3]``) chooses which stages use
    DePatch instead of the architecture's own choice (the paper's stage ablation).

    ``pretrained`` is a local checkpoint path (official DPT/PVT or one of ours); nothing is
    downloaded. See :func:`load_pretrained` for what may differ between checkpoint and model.
    """
    cfg = model_config(name)
    cfg.update(kwargs)
    flags = depatch_flags(depatch_stages, len(cfg["embed_dims"]))
    if flags is not None:
        cfg["depatch"] = flags
    model = PyramidVisionTransformer(**cfg)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def convert_official_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DPT/PVT checkpoint (or one of our ``last.pt``) -> a plain state dict of ours: unwrap
    ``{'model': ...}`` and drop the constant buffers of the official DePatch (``anchor``,
    ``value_spatial_shapes``, ``value_level_start_index``) that we compute from the input size instead."""
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    drop = ("box_coder.anchor", "value_spatial_shapes", "value_level_start_index")
    return {k: v for k, v in state.items() if not k.endswith(drop)}


#: keys that only the classification model has (skipped when a backbone is loaded from a classifier)
CLASSIFIER_KEYS = ("head.weight", "head.bias", "cls_token", "norm.weight", "norm.bias")


def resize_pos_embed(pos: torch.Tensor, new_grid: int, extra_tokens: int = 0) -> torch.Tensor:
    """Bilinearly resize a square position embedding (1, extra + g*g, D) to ``new_grid`` (the extra
    tokens, e.g. the cls slot of the last stage, are kept as they are)."""
    extra, grid = pos[:, :extra_tokens], pos[:, extra_tokens:]
    g = round(grid.shape[1] ** 0.5)
    if g * g != grid.shape[1]:
        raise ValueError(f"position embedding with {grid.shape[1]} tokens is not a square grid")
    grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new_grid, new_grid), mode="bilinear", align_corners=False)
    return torch.cat([extra, grid.flatten(2).transpose(1, 2).to(pos.dtype)], dim=1)


def load_pretrained(model: PyramidVisionTransformer, path: str) -> dict[str, list[str]]:
    """Load a local checkpoint into ``model`` (strict, except for what fine-tuning needs):

    * a classification head of another class count is dropped with a warning (the model keeps its
      freshly initialised head); a ``features_only`` backbone skips the classifier-only keys
      (``head``, ``cls_token``, final ``norm``) silently;
    * position embeddings laid out for another ``img_size`` are bilinearly resized to this model's
      grid (the last stage's cls slot is kept);
    * anything else that is missing, unexpected or of another shape is a
      :class:`~shared.errors.CheckpointError` naming the keys: a checkpoint of another architecture
      (a DPT checkpoint in a PVT, other widths) never loads half-way.

    Returns ``{"dropped": [...], "resized": [...], "skipped": [...]}``.
    """
    import warnings

    from shared.errors import CheckpointError
    from shared.runtime import load_checkpoint

    state = convert_official_state_dict(load_checkpoint(path))
    own = model.state_dict()
    report: dict[str, list[str]] = {"dropped": [], "resized": [], "skipped": []}
    if model.features_only:
        report["skipped"] = [k for k in CLASSIFIER_KEYS if k in state and k not in own]
        state = {k: v for k, v in state.items() if k not in report["skipped"]}
    ckpt_classes = state["head.weight"].shape[0] if "head.weight" in state else None
    other_classes = ("head.weight" in state and "head.weight" in own and state["head.weight"].shape[1:] ==
                     own["head.weight"].shape[1:] and state["head.weight"].shape[0] != own["head.weight"].shape[0])
    for key in ("head.weight", "head.bias"):
        if other_classes and key in state:  # the same head for another class count (fine-tuning)
            report["dropped"].append(key)
            del state[key]
    if report["dropped"]:
        warnings.warn(f"{path}: dropped the checkpoint's classification head ({ckpt_classes} classes); this "
                      f"model's head for {model.num_classes} classes keeps its fresh initialisation", stacklevel=2)
    for i in range(model.num_stages):
        key = f"pos_embed{i + 1}"
        if key in state and key in own and state[key].shape != own[key].shape:
            extra = 1 if i == model.num_stages - 1 else 0
            state[key] = resize_pos_embed(state[key], model.pos_grids[i], extra)
            report["resized"].append(key)
    missing = [k for k in own if k not in state and k not in report["dropped"]]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameter(s) of this model are missing ({', '.join(missing[:4])}"
                        f"{', ...' if len(missing) > 4 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) ({', '.join(unexpected[:4])}"
                        f"{', ...' if len(unexpected) > 4 else ''})")
    if wrong:
        problems.append(f"shapes differ: {', '.join(wrong[:3])}")
    if problems:
        raise CheckpointError(f"weights {path} do not fit this model: {'; '.join(problems)}; pass weights of the "
                              "same architecture (model.arch, widths, DePatch stages), or weights=null")
    own.update(state)
    model.load_state_dict(own)
    return report


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
