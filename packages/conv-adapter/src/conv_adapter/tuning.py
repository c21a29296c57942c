"""The tuning methods compared in the paper, as one function that decides what trains.

``linear``        linear probing: only the new head.
``full``          full fine-tuning: everything.
``bitfit``        bias tuning: every bias term (zero-initialised biases are added to bias-free convs,
                  as the official ``bias`` method does, so the output is unchanged at start) + head.
``prompt``        visual prompting with a pad prompter (Bahng et al. 2022; the paper's "Prompt"
                  baseline): a learnable frame of ``prompt_size`` pixels added to the image + head.
``conv_adapter``  Conv-Adapter (any of the four schemes) + head.

Every method may add the official ResNet's trainable ``BatchNorm2d`` before pooling (``pool_norm``).

BatchNorm statistics (:func:`set_train_mode`): ``bn_mode='train'`` (the default) is the official trainer,
which calls ``model.train()``: every BatchNorm, frozen or not, updates its running statistics on the
target data (statistics are buffers, not parameters: the pre-trained *parameters* stay frozen, as the
paper says). With ``bn_mode='eval'`` a BatchNorm layer whose *scale* is frozen keeps the pretrained
statistics (it runs in eval mode); a layer that trains its scale (full fine-tuning, ``train_norms``, the
new ``pool_norm``) updates them as usual. BitFit trains only the shift of each BN, so under ``eval`` its
statistics stay fixed too: the frozen part of the network sees the same normalisation under every
parameter-efficient method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .adapter import DEFAULT_REDUCTION, inject_adapters, is_adapter_param, trainable_report
from .models import POOL_NORM_PREFIX, adapter_config, add_pool_norm, head_prefix

METHODS = ("linear", "full", "bitfit", "prompt", "conv_adapter")
BN_MODES = ("eval", "train")


class PadPrompter(nn.Module):
    """Learnable pixels on a frame of width ``prompt_size`` around an ``image_size`` image (zero inside),
    added to the input. Initialised with a standard normal, as Bahng et al."""

    def __init__(self, image_size: int, prompt_size: int):
        super().__init__()
        if not 0 < 2 * prompt_size < image_size:
            raise ValueError(f"prompt_size={prompt_size} must satisfy 0 < 2*prompt_size < image_size={image_size}.")
        inner = image_size - 2 * prompt_size
        self.image_size, self.prompt_size = image_size, prompt_size
        self.pad_up = nn.Parameter(torch.randn(1, 3, prompt_size, image_size))
        self.pad_down = nn.Parameter(torch.randn(1, 3, prompt_size, image_size))
        self.pad_left = nn.Parameter(torch.randn(1, 3, inner, prompt_size))
        self.pad_right = nn.Parameter(torch.randn(1, 3, inner, prompt_size))

    def prompt(self) -> torch.Tensor:
        p = self.prompt_size
        inner = self.pad_up.new_zeros(1, 3, self.image_size - 2 * p, self.image_size - 2 * p)
        middle = torch.cat([self.pad_left, inner, self.pad_right], dim=3)
        return torch.cat([self.pad_up, middle, self.pad_down], dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"PadPrompter was built for {self.image_size}x{self.image_size} inputs, got {tuple(x.shape[-2:])}.")
        return x + self.prompt()


def _prompt_hook(model: nn.Module, args: tuple):
    return (model.prompter(args[0]),) + tuple(args[1:])


@dataclass
class TuningInfo:
    method: str
    arch: str
    adapted: list[str] = field(default_factory=list)
    adapter_config: dict | None = None
    trainable: int = 0
    full: int = 0
    percent: float = 0.0


def apply_method(model: nn.Module, arch: str, method: str, *, image_size: int, scheme: str = "conv_parallel",
                 reduction: float = DEFAULT_REDUCTION, init: str = "official", placement: str = "conv",
                 target_modules: str | None = None, prompt_size: int | None = None, train_norms: bool = False,
                 pool_norm: bool = False) -> TuningInfo:
    """Set up ``model`` (a backbone with its new head already in place) for ``method``, in place:
    inject adapters / prompter / biases and set ``requires_grad``. Returns what was done and the
    trainable-parameter count as a % of full fine-tuning: ``full`` counts the backbone + the new head
    *before* anything is added (adapters, prompter, BitFit biases, pool norm are extra parameters).

    ``train_norms`` also trains every normalisation layer's affine parameters (the official
    ``conv_adapt`` trains all parameters with ``norm`` in their name, which on ConvNeXt are the block
    LayerNorms); off by default. ``pool_norm`` adds the official ResNet's trainable BatchNorm before
    global pooling (:func:`conv_adapter.models.add_pool_norm`); it trains under every method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}.")
    full = sum(p.numel() for p in model.parameters())
    info = TuningInfo(method=method, arch=arch, full=full)
    head = head_prefix(arch)
    if pool_norm:
        add_pool_norm(model, arch)
    if method == "conv_adapter":
        cfg = adapter_config(model, arch, scheme, reduction, init, placement, target_modules)
        info.adapted = inject_adapters(model, cfg)
        info.adapter_config = cfg.to_dict()
    elif method == "bitfit":
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.bias is None:
                m.bias = nn.Parameter(torch.zeros(m.out_channels))
    elif method == "prompt":
        if prompt_size is None:  # keep the covered fraction of Bahng et al.'s 10 px at 224
            prompt_size = max(1, round(10 * image_size / 224))
        model.prompter = PadPrompter(image_size, prompt_size)
        model.register_forward_pre_hook(_prompt_hook)

    for name, p in model.named_parameters():
        trainable = (
            method == "full"
            or name.startswith((head, POOL_NORM_PREFIX))
            or (method == "conv_adapter" and is_adapter_param(name))
            or (method == "bitfit" and name.endswith(".bias"))
            or (method == "prompt" and name.startswith("prompter."))
        )
        p.requires_grad_(trainable)
    if train_norms and method != "full":
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(True)
    report = trainable_report(model, full_count=full)
    info.trainable, info.percent = report["trainable"], report["percent"]
    return info


def frozen_norm_layers(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose scale does not train (frozen, or BitFit's shift-only tuning): under
    ``bn_mode='eval'`` their running statistics stay the pretrained ones."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not (m.weight is not None and m.weight.requires_grad)]


def set_train_mode(model: nn.Module, bn_mode: str = "train") -> nn.Module:
    """``model.train()``, then (``bn_mode='eval'``) put the BatchNorm layers whose scale is frozen back in
    eval mode, so their running statistics stay the pretrained ones (module docstring).
    ``bn_mode='train'`` (default) is the official behaviour: every BN updates its statistics."""
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}.")
    model.train()
    if bn_mode == "eval":
        for m in frozen_norm_layers(model):
            m.eval()
    return model
