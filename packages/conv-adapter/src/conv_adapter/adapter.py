"""Conv-Adapter: the adapter module, the four adaptation schemes, and a PEFT-shaped API.

Read top to bottom:

1. :class:`ConvAdapter` -- the bottleneck of the official code ("design 2 v4"): a KxK *grouped*
   down-projection ``C_in -> C_in/gamma`` (``groups = C_in/gamma``, so every filter sees ``gamma``
   input channels), an activation, a 1x1 up-projection ``-> C_out`` and a learnable channel-wise
   scale ``alpha`` (``Delta h = alpha * W_up * act(W_down *_g h)``). Both convs have biases.
2. The four schemes: the adapter modulates one KxK conv (``conv_*``) or a whole residual block
   (``residual_*``), and reads either the module's input (``*_parallel``: ``y = f(x) + A(x)``) or its
   output (``*_sequential``: ``y = f(x) + A(f(x))``).
3. :func:`inject_adapters` attaches adapters to the modules whose qualified name matches
   ``target_modules`` (a regex, or a list of exact names), a hard error when nothing matches.

The adapter is registered as a child ``conv_adapter`` of the module it adapts and applied by a
forward hook, so the backbone's own parameter names do not change (``layer1.0.conv1.weight`` stays
``layer1.0.conv1.weight``): pretrained weights load before or after injection, and the adapter-only
state dict holds exactly the keys containing ``conv_adapter.``. The hooks are module-level functions
that look the adapter up on the module, so ``copy.deepcopy`` and DDP work.

A Conv-Adapter cannot be merged into the conv it adapts (the activation sits between the two
projections), so there is no ``merge`` -- unlike LoRA.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from torchvision.models.convnext import CNBlock
from torchvision.models.resnet import BasicBlock, Bottleneck

ADAPTER_NAME = "conv_adapter"
SCHEMES = ("conv_parallel", "conv_sequential", "residual_parallel", "residual_sequential")
INITS = ("kaiming", "trunc_normal")  # weight init of the two convs; alpha is set separately
#: The one default compression factor gamma of this package (API and configs): the official trainer's
#: command-line default (`--adapt_size 8.0` in the released `main.py`). The paper's own gamma is not in the
#: part of its text we could retrieve (see the README).
DEFAULT_REDUCTION = 8
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class ConvAdapter(nn.Module):
    """``alpha * up(act(down(x)))`` with a grouped KxK down-projection (official "design 2 v4").

    Args:
        in_channels: channels of the adapter's input ``C_in``.
        out_channels: channels of the adapted module's output ``C_out``.
        kernel_size, stride, padding, dilation: of the down-projection; for ``conv_parallel`` the
            adapted conv's own values, so the adapter output has the conv output's shape.
        reduction: the compression factor ``gamma`` (``adapt_size`` in the official code); the hidden
            width is ``C_in / gamma`` and must be a whole number.
        act: ``relu`` (ResNet), ``gelu`` (ConvNeXt) or ``silu``.
        init: weight init of both convs: ``kaiming`` (official for ResNet: Kaiming-normal fan_out) or
            ``trunc_normal`` (official for ConvNeXt: std 0.02); biases 0 either way.
        alpha: initial value of the scale ``alpha``: 1 in the official code; 0 (*not* the official code)
            makes the adapted network start exactly at the frozen backbone.

    Memory layout: on the CPU the adapter runs channels-last (its input is laid out NHWC; the adapted
    network keeps its own layout, since the hooks add the adapter's output to the module's). oneDNN's
    grouped convolution with few channels per group is several times slower on NCHW input: measured on
    the 2-core CPU, forward plus backward of a ResNet-50 stage-1 adapter 18.5 ms NCHW vs 9.6 ms NHWC
    (including the copy). The same values up to float rounding; the attribute ``channels_last`` (None:
    CPU only, the default) forces it on (True) or off (False).

    Parameter count: ``C_in*K*K`` (down weight) ``+ C_in/gamma`` (down bias) ``+ C_in/gamma*C_out``
    (up weight) ``+ 2*C_out`` (up bias, alpha).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 stride: int | tuple[int, int] = 1, padding: int | str | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, reduction: float = DEFAULT_REDUCTION, act: str = "relu",
                 init: str = "kaiming", alpha: float = 1.0):
        super().__init__()
        width = in_channels / reduction
        if reduction <= 0 or width != int(width) or width < 1:
            raise ValueError(
                f"ConvAdapter: reduction (gamma) = {reduction} must divide the input channels "
                f"{in_channels} (the hidden width C_in/gamma is the number of groups of the grouped "
                f"down-projection). Pick a gamma that divides every adapted channel count, e.g. a power of 2.")
        if act not in ACTIVATIONS:
            raise ValueError(f"ConvAdapter: unknown act {act!r}; expected one of {sorted(ACTIVATIONS)}.")
        if init not in INITS:
            raise ValueError(f"ConvAdapter: unknown init {init!r}; expected one of {INITS}.")
        width = int(width)
        self.in_channels, self.out_channels, self.reduction, self.width = in_channels, out_channels, reduction, width
        self.down = nn.Conv2d(in_channels, width, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=width, bias=True)
        self.act = ACTIVATIONS[act]()
        self.up = nn.Conv2d(width, out_channels, 1, bias=True)
        # the official code calls this parameter `se`; it is the channel-wise scale alpha
        self.scale = nn.Parameter(torch.ones(1, out_channels, 1, 1))
        self.enabled = True
        self.channels_last: bool | None = None  # None: channels-last on the CPU only (see the class docstring)
        self.reset_parameters(init, alpha)

    def reset_parameters(self, init: str = "kaiming", alpha: float = 1.0) -> None:
        for conv in (self.down, self.up):
            if init == "trunc_normal":  # the ConvNeXt initialisation loop (timm / the official code)
                nn.init.trunc_normal_(conv.weight, std=0.02)
            else:  # the ResNet initialisation loop of torchvision / the official code
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.scale, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" if self.channels_last is None else self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.up(self.act(self.down(x))) * self.scale

    def extra_repr(self) -> str:
        return f"gamma={self.reduction:g}, width={self.width}"


# ------------------------------------------------------------------------------------ hooks
# A parallel adapter reads the module's input, a sequential one its output; both add to the output.


def _parallel_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    adapter = module.conv_adapter
    return output + adapter(args[0]) if adapter.enabled else output


def _sequential_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    adapter = module.conv_adapter
    return output + adapter(output) if adapter.enabled else output


# The official ResNet Bottleneck placement: the adapter reads conv2's input, and its output is added
# after relu(bn2(conv2(x))), i.e. to conv3's input (it bypasses bn2 and the ReLU). torchvision's
# Bottleneck reuses one ReLU module, so this is done with a pre-hook on conv2 (compute) and a pre-hook
# on conv3 (add).


def _official_capture_hook(adapter: ConvAdapter, conv2: nn.Module, args: tuple) -> None:
    adapter._delta = adapter(args[0]) if adapter.enabled else None


def _official_add_hook(adapter: ConvAdapter, conv3: nn.Module, args: tuple):
    delta, adapter._delta = getattr(adapter, "_delta", None), None
    return None if delta is None else (args[0] + delta,)


# ---------------------------------------------------------------------------- configuration


@dataclass
class ConvAdapterConfig:
    """Where and how to inject Conv-Adapters (the PEFT ``LoraConfig`` of this package).

    Attributes:
        target_modules: a regex matched with ``re.fullmatch`` against qualified module names, or a
            list of exact names. ``conv_*`` schemes need ``nn.Conv2d`` targets; ``residual_*`` schemes
            need residual blocks (torchvision ``BasicBlock``, ``Bottleneck``, ``CNBlock``).
        scheme: one of :data:`SCHEMES`.
        reduction: the compression factor gamma.
        kernel_size: kernel of the adapter for ``residual_*`` schemes (``conv_*`` schemes use the
            adapted conv's kernel, as the official code); 3 for ResNet, 7 for ConvNeXt.
        act: adapter activation (``relu`` ResNet, ``gelu`` ConvNeXt, as the official code).
        init: weight init, ``kaiming`` (ResNet) or ``trunc_normal`` (ConvNeXt), as the official code.
        alpha: initial scale; 1 (official) or 0 (deviation: the adapted model starts as the backbone).
        placement: ``conv`` adds a ``conv_parallel`` adapter to the adapted conv's output (the paper's
            ``y' = y + Delta h``); ``official`` reproduces the released ResNet-Bottleneck code, which adds
            it after ``relu(bn2(conv2))`` (only for ``conv_parallel`` on Bottleneck ``conv2``).
    """

    target_modules: str | Sequence[str]
    scheme: str = "conv_parallel"
    reduction: float = DEFAULT_REDUCTION
    kernel_size: int = 3
    act: str = "relu"
    init: str = "kaiming"
    alpha: float = 1.0
    placement: str = "conv"

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"Unknown Conv-Adapter scheme {self.scheme!r}; expected one of {SCHEMES}.")
        if self.init not in INITS:
            raise ValueError(f"Unknown Conv-Adapter init {self.init!r}; expected one of {INITS} "
                             "(alpha=0 gives the zero-initialised deviation).")
        if self.placement not in ("conv", "official"):
            raise ValueError(f"placement must be 'conv' (paper) or 'official', got {self.placement!r}.")
        if self.placement == "official" and self.scheme != "conv_parallel":
            raise ValueError("placement='official' only exists for scheme='conv_parallel' (ResNet Bottleneck).")
        if not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)

    def to_dict(self) -> dict:
        return asdict(self)


def _matches(name: str, targets: str | list[str]) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return name in targets


def _block_io(block: nn.Module) -> tuple[int, int, int]:
    """``(in_channels, out_channels, stride)`` of a residual block."""
    if isinstance(block, Bottleneck):
        return block.conv1.in_channels, block.conv3.out_channels, block.conv2.stride[0]
    if isinstance(block, BasicBlock):
        return block.conv1.in_channels, block.conv2.out_channels, block.conv1.stride[0]
    if isinstance(block, CNBlock):
        dw = block.block[0]
        return dw.in_channels, dw.out_channels, 1
    raise TypeError(f"residual_* schemes need a torchvision BasicBlock, Bottleneck or CNBlock target, "
                    f"got {type(block).__name__}; target the block's convolutions with a conv_* scheme instead.")


def _build_adapter(name: str, module: nn.Module, cfg: ConvAdapterConfig) -> ConvAdapter:
    kw = dict(reduction=cfg.reduction, act=cfg.act, init=cfg.init, alpha=cfg.alpha)
    if cfg.scheme.startswith("conv_"):
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"scheme {cfg.scheme!r} adapts nn.Conv2d modules, but target {name!r} is a "
                            f"{type(module).__name__}. Narrow target_modules to convolutions.")
        if cfg.scheme == "conv_parallel":  # same kernel/stride/padding as the conv: same output shape
            return ConvAdapter(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                               module.padding, module.dilation, **kw)
        return ConvAdapter(module.out_channels, module.out_channels, module.kernel_size, 1, "same", **kw)
    c_in, c_out, stride = _block_io(module)
    k = cfg.kernel_size
    if cfg.scheme == "residual_parallel":
        return ConvAdapter(c_in, c_out, k, stride, k // 2, **kw)
    return ConvAdapter(c_out, c_out, k, 1, "same", **kw)


def inject_adapters(model: nn.Module, config: ConvAdapterConfig) -> list[str]:
    """Attach a :class:`ConvAdapter` to every module of ``model`` matched by ``config`` (in place).

    Returns the qualified names of the adapted modules. Raises ``ValueError`` when nothing matches
    (listing a few candidate names) or when a module already has an adapter.
    """
    targets = [(n, m) for n, m in model.named_modules() if n and _matches(n, config.target_modules)]
    if not targets:
        kind = nn.Conv2d if config.scheme.startswith("conv_") else (BasicBlock, Bottleneck, CNBlock)
        candidates = [n for n, m in model.named_modules() if isinstance(m, kind)][:8]
        raise ValueError(f"Conv-Adapter: target_modules={config.target_modules!r} matched no module of "
                         f"{type(model).__name__}. Candidate names for scheme {config.scheme!r}: {candidates} ...")
    if not isinstance(config.target_modules, str):
        missing = set(config.target_modules) - {n for n, _ in targets}
        if missing:
            raise ValueError(f"Conv-Adapter: target module(s) {sorted(missing)} do not exist in the model.")
    modules = dict(model.named_modules())
    for name, module in targets:
        if hasattr(module, ADAPTER_NAME):
            raise ValueError(f"Conv-Adapter: {name!r} already has an adapter.")
        adapter = _build_adapter(name, module, config)
        module.add_module(ADAPTER_NAME, adapter)
        if config.placement == "official":
            parent_name, _, attr = name.rpartition(".")
            block = modules.get(parent_name)
            if not (isinstance(block, Bottleneck) and attr == "conv2"):
                raise ValueError(f"placement='official' reproduces the released ResNet Bottleneck code and "
                                 f"needs Bottleneck conv2 targets, got {name!r} (in a {type(block).__name__}). "
                                 "Use placement='conv' for other modules.")
            # partials (not closures) so that copy.deepcopy maps them onto the copied adapter
            module.register_forward_pre_hook(functools.partial(_official_capture_hook, adapter))
            block.conv3.register_forward_pre_hook(functools.partial(_official_add_hook, adapter))
        elif config.scheme.endswith("_parallel"):
            module.register_forward_hook(_parallel_hook)
        else:
            module.register_forward_hook(_sequential_hook)
    return [n for n, _ in targets]


# --------------------------------------------------------------------------------- helpers


def adapter_modules(model: nn.Module) -> Iterator[tuple[str, ConvAdapter]]:
    for name, module in model.named_modules():
        if isinstance(module, ConvAdapter):
            yield name, module


def is_adapter_param(name: str) -> bool:
    return f"{ADAPTER_NAME}." in name or name.startswith(f"{ADAPTER_NAME}.")


def adapter_state_dict(model: nn.Module, extra_prefixes: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (plus any parameter/buffer whose name starts with one of
    ``extra_prefixes``, e.g. the new head ``("fc.",)``): a few % of the full state dict."""
    sd = model.state_dict()
    return {k: v.detach().clone() for k, v in sd.items()
            if is_adapter_param(k) or any(k.startswith(p) for p in extra_prefixes)}


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an :func:`adapter_state_dict` into a model with the same adapters injected. Every key of
    ``state`` must exist in the model and every adapter tensor of the model must be in ``state``."""
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    missing = sorted(k for k in own if is_adapter_param(k) and k not in state)
    if unknown or missing:
        raise KeyError(f"adapter state dict does not fit this model: unknown keys {unknown[:5]}, missing adapter "
                       f"keys {missing[:5]}. Inject adapters with the same ConvAdapterConfig first.")
    model.load_state_dict(state, strict=False)


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Within the context every adapter is bypassed: the model computes the backbone's output."""
    adapters = [a for _, a in adapter_modules(model)]
    previous = [a.enabled for a in adapters]
    for a in adapters:
        a.enabled = False
    try:
        yield model
    finally:
        for a, p in zip(adapters, previous):
            a.enabled = p


def mark_only_adapters_trainable(model: nn.Module, extra: Sequence[str] = ()) -> None:
    """Freeze everything except the adapters and the parameters whose name starts with ``extra``
    (e.g. the new head ``("fc.",)``)."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_param(name) or name.startswith(tuple(extra)))


def count_adapter_parameters(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if is_adapter_param(n))


def closed_form_count(channels: Sequence[tuple[int, int, int]], reduction: float) -> int:
    """Parameters of conv-parallel adapters on convs ``(C_in, C_out, K)``:
    ``C_in*K^2 + C_in/gamma + C_in/gamma*C_out + 2*C_out`` each."""
    total = 0
    for c_in, c_out, k in channels:
        w = c_in / reduction
        total += c_in * k * k + w + w * c_out + 2 * c_out
    return int(round(total))


def trainable_report(model: nn.Module, full_count: int | None = None) -> dict[str, float]:
    """``{trainable, total, full, percent}``: ``percent`` is trainable parameters as a % of full
    fine-tuning, ``100 * trainable / full``. ``full`` is ``full_count`` when given (``apply_method``
    passes the backbone + head count taken before anything was added), else every parameter of ``model``
    that is not an adapter's (the backbone and head as they are now)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    full = full_count if full_count is not None else sum(
        p.numel() for n, p in model.named_parameters() if not is_adapter_param(n))
    return {"trainable": trainable, "total": total, "full": full,
            "percent": 100.0 * trainable / full if full else math.nan}
