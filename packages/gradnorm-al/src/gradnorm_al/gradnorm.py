"""Per-sample gradient norms of a label-free loss: the score of GradNorm active learning.

For every sample x the score is ``||grad_theta L(x)||`` with (Wang et al., AAAI 2022)

* ``entropy``:  L(x) = H(p) = -sum_i p_i log p_i                         (entropy-gradnorm, SCHEME=1)
* ``expected``: L(x) = sum_i p_i CE(z, i), posterior *not* detached      (expected-gradnorm, SCHEME=0)

Because sum_i p_i CE(z, i) = sum_i p_i (-log p_i) = H(p) as functions of theta, the two losses have
identical gradients: the official code's two schemes are one selection rule. With the posterior
detached the gradient is identically zero (``expected_detached``, kept only to test that fact).
``egl`` is the expected gradient length of Settles et al. (2008), sum_y p_y ||grad CE(x, y)||, a
different, meaningful "expected" score offered as a clearly named variant.

Norm over parameters (``aggregate``):

* ``sum_of_norms`` (official): sum over parameter tensors T of ||grad_T L||_2;
* ``global_l2``: the L2 norm of all parameter gradients concatenated.

Three ways to compute the per-sample gradients (``impl``), all in eval mode by default:

* ``loop``  -- one forward + backward per sample (the official code; reference path for tests);
* ``vmap``  -- ``torch.func.vmap(grad(...))`` over memory-bounded chunks;
* ``ghost`` -- one batched forward + backward per chunk with module hooks that turn each layer's
  input activations ``a`` and output gradients ``g`` into per-sample squared gradient norms without
  ever forming the parameter gradient of the batch. Per conv/linear layer it picks the cheaper of
  materialising the per-sample weight gradient (``g_i^T U_i``, P*O*D flops) and the ghost-norm
  identity ``||g_i^T U_i||^2 = <U_i U_i^T, g_i g_i^T>`` (P^2*(O+D) flops), where U_i is the unfolded
  input (P positions x D = C_in*k*k) -- the same choice as in mixed ghost clipping.
  Parameters are switched to ``requires_grad=False`` during the pass, so autograd computes only the
  activation gradients it needs to reach earlier layers.
* ``head``  -- the closed form for a linear head (``params`` selecting only the last ``nn.Linear``, whose
  output is the logits): one forward pass without any graph through the backbone, g = dL/dz on the
  logits alone, then ||grad_W||^2 = ||g||^2 ||h||^2 and ||grad_b||^2 = ||g||^2 with h the head's input.
* ``auto`` -- ``head`` when ``params`` selects only the last linear layer, else ``ghost`` when every
  parameterised module is supported, otherwise ``vmap``.

Per-sample gradients are only defined when samples do not interact: BatchNorm must use its running
statistics (eval mode). A model with BatchNorm in train mode cannot be scored by ``vmap`` or
``ghost`` (and the batch statistics would make the "per-sample" gradient depend on the batch); those
paths raise. The official code scores in eval mode, which is the default here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("entropy", "expected", "expected_detached")
SCORES = ("entropy", "expected", "expected_detached", "egl")
IMPLS = ("auto", "head", "ghost", "vmap", "loop")
AGGREGATES = ("sum_of_norms", "global_l2")

LossFn = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------ losses


def logits_of(output) -> torch.Tensor:
    """The logits of a model output (models that return tuples, like the official ResNet, give them first)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample predictive entropy ``H(softmax(z))``, shape (B,)."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def expected_loss(logits: torch.Tensor, detach_posterior: bool = False) -> torch.Tensor:
    """Per-sample ``sum_i p_i CE(z, i)`` written as the official code does: one cross-entropy per class,
    weighted by the (undetached, unless asked) posterior. Equal to the entropy as a function of theta."""
    p = F.softmax(logits, dim=-1)
    if detach_posterior:
        p = p.detach()
    total = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
    for i in range(logits.shape[-1]):  # loop over classes (as the official SCHEME=0), not samples
        target = torch.full((logits.shape[0],), i, dtype=torch.long, device=logits.device)
        total = total + p[:, i] * F.cross_entropy(logits, target, reduction="none")
    return total


def class_ce_loss(y: int) -> LossFn:
    """``z -> CE(z, y)`` per sample (the per-label loss of EGL)."""

    def loss(logits: torch.Tensor) -> torch.Tensor:
        target = torch.full((logits.shape[0],), y, dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, target, reduction="none")

    return loss


def loss_fn(name: str) -> LossFn:
    if name == "entropy":
        return entropy_loss
    if name == "expected":
        return expected_loss
    if name == "expected_detached":
        return lambda z: expected_loss(z, detach_posterior=True)
    raise ValueError(f"Unknown gradnorm loss {name!r}; expected one of {LOSSES} (or 'egl' for scores).")


# --------------------------------------------------------------------------------- parameters


def selected_parameters(model: nn.Module, params: str | None = "all") -> dict[str, nn.Parameter]:
    """The parameters whose gradient enters the norm: every trainable one (``all``, official: the
    official loop skips tensors whose grad is None), or those whose name matches a regex."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if params in (None, "all"):
        chosen = named
    else:
        pattern = re.compile(params)
        chosen = {n: p for n, p in named.items() if pattern.search(n)}
    if not chosen:
        raise ValueError(f"params={params!r} selects no trainable parameter of {type(model).__name__}; "
                         f"names are e.g. {list(named)[:6]}. Use params='all' or a matching regex.")
    return chosen


def check_samples_independent(model: nn.Module, impl: str) -> None:
    """Vectorised per-sample gradients need samples that do not interact (no BN batch statistics)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats):
            raise ValueError(
                f"impl={impl!r} cannot compute per-sample gradients: BatchNorm module {name!r} uses batch "
                f"statistics (train mode or track_running_stats=False), so samples in a batch interact and "
                f"torch.func.vmap/ghost hooks do not apply. Score in eval mode (the official setting, "
                f"eval_mode=True) or use impl='loop'.")


def aggregate_norms(sq_norms: dict[str, torch.Tensor], aggregate: str = "sum_of_norms") -> torch.Tensor:
    """Per-tensor squared norms ``{name: (B,)}`` -> per-sample score (B,)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"Unknown aggregate {aggregate!r}; expected one of {AGGREGATES}.")
    stacked = torch.stack(list(sq_norms.values()), dim=1).clamp_min(0)
    if aggregate == "sum_of_norms":
        return stacked.sqrt().sum(1)
    return stacked.sum(1).sqrt()


# ------------------------------------------------------------------------------- loop (reference)


def loop_sq_norms(model: nn.Module, x: torch.Tensor, loss: LossFn, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """One forward + backward per sample, as the official code (batch size 1)."""
    out = {n: torch.zeros(len(x), dtype=torch.float64, device=x.device) for n in params}
    plist = list(params.items())
    for i in range(len(x)):
        value = loss(logits_of(model(x[i:i + 1]))).sum()
        grads = torch.autograd.grad(value, [p for _, p in plist], allow_unused=True)
        for (n, _), g in zip(plist, grads):
            if g is not None:  # official: tensors without a gradient are skipped
                out[n][i] = g.double().pow(2).sum()
    return out


# ------------------------------------------------------------------------------------ vmap


def vmap_sq_norms(model: nn.Module, x: torch.Tensor, loss: LossFn, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """``vmap(grad(loss of one sample))`` over the rows of ``x`` (call it on one chunk at a time)."""
    from torch.func import functional_call, grad, vmap

    trainable = {n: p.detach() for n, p in params.items()}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in trainable}
    fixed.update({n: b for n, b in model.named_buffers()})

    def one(theta: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        z = logits_of(functional_call(model, {**theta, **fixed}, (xi.unsqueeze(0),)))
        return loss(z).sum()

    grads = vmap(grad(one), in_dims=(None, 0))(trainable, x)
    return {n: grads[n].flatten(1).double().pow(2).sum(1) for n in params}


# ----------------------------------------------------------------------------------- ghost


_GHOST_TYPES = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def ghost_unsupported(model: nn.Module, params: dict[str, nn.Parameter]) -> str | None:
    """Why ``impl='ghost'`` cannot score this model (None if it can)."""
    wanted = {id(p) for p in params.values()}
    owners: dict[int, str] = {}
    for mname, m in model.named_modules():
        own = [p for p in m.parameters(recurse=False) if id(p) in wanted]
        if not own:
            continue
        if not isinstance(m, _GHOST_TYPES):
            return f"module {mname!r} ({type(m).__name__}) has parameters and no ghost rule"
        if isinstance(m, nn.Conv2d) and (isinstance(m.padding, str) or m.padding_mode != "zeros"):
            return f"conv {mname!r} uses padding={m.padding!r}/padding_mode={m.padding_mode!r} (only explicit zero padding)"
        for p in own:
            if id(p) in owners:
                return f"parameter shared by modules {owners[id(p)]!r} and {mname!r}"
            owners[id(p)] = mname
    return None


def _conv_choice(P: int, O: int, D: int) -> str:
    """Cheaper way to get ||g^T U||^2 for one sample: materialise (P*O*D) or ghost (P^2*(O+D))."""
    return "materialise" if P * O * D <= P * P * (O + D) else "ghost"


def _matrix_sq_norm(G: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||G_b^T U_b||_F^2`` for G (B, P, O) and U (B, P, D), the cheaper way."""
    B, P, O = G.shape
    D = U.shape[2]
    if _conv_choice(P, O, D) == "materialise":
        return torch.bmm(G.transpose(1, 2), U).pow(2).sum((1, 2))
    return (torch.bmm(U, U.transpose(1, 2)) * torch.bmm(G, G.transpose(1, 2))).sum((1, 2))


class _GhostHooks:
    """Forward hooks that capture each supported layer's input and register a hook on its output
    gradient; the gradient hook converts (input, output-gradient) into per-sample squared norms."""

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter]):
        self.model = model
        self.pid_to_name = {id(p): n for n, p in params.items()}
        self.sq: dict[str, torch.Tensor] = {}
        self.handles = []
        self.calls: dict[str, int] = {}
        for mname, m in model.named_modules():
            own = [(pn, p) for pn, p in m.named_parameters(recurse=False) if id(p) in self.pid_to_name]
            if own:
                self.handles.append(m.register_forward_hook(self._forward_hook(mname, dict(own))))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _forward_hook(self, mname: str, own: dict[str, nn.Parameter]):
        def hook(module, inputs, output):
            self.calls[mname] = self.calls.get(mname, 0) + 1
            if self.calls[mname] > 1:
                raise RuntimeError(f"impl='ghost': module {mname!r} is called more than once per forward "
                                   f"(weight sharing); use impl='vmap' for this model.")
            a = inputs[0]
            version = a._version
            if not output.requires_grad:
                raise RuntimeError(f"impl='ghost': the output of {mname!r} does not require grad; the model "
                                   f"detaches or runs under no_grad. Use impl='vmap' or impl='loop'.")

            def grad_hook(g):
                if a._version != version:
                    raise RuntimeError(f"impl='ghost': the input of {mname!r} was modified in place after the "
                                       f"layer ran; use impl='vmap' for this model.")
                self._accumulate(module, own, a.detach(), g.detach())

            output.register_hook(grad_hook)

        return hook

    def _put(self, own: dict[str, nn.Parameter], key: str, value: torch.Tensor) -> None:
        p = own.get(key)
        if p is not None:
            name = self.pid_to_name[id(p)]
            self.sq[name] = self.sq.get(name, 0) + value.double()

    def _accumulate(self, m: nn.Module, own: dict[str, nn.Parameter], a: torch.Tensor, g: torch.Tensor) -> None:
        B = g.shape[0]
        if isinstance(m, nn.Linear):
            if a.dim() == 2:
                gg = g.pow(2).sum(1)
                self._put(own, "weight", a.pow(2).sum(1) * gg)
                self._put(own, "bias", gg)
            else:  # (B, ..., in): a sequence of positions per sample
                A, G = a.reshape(B, -1, a.shape[-1]), g.reshape(B, -1, g.shape[-1])
                self._put(own, "weight", _matrix_sq_norm(G, A))
                self._put(own, "bias", G.sum(1).pow(2).sum(1))
        elif isinstance(m, nn.Conv2d):
            U = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)  # (B, Cin*k*k, P)
            G = g.flatten(2)  # (B, Cout, P)
            groups, P = m.groups, G.shape[2]
            if groups == 1:
                self._put(own, "weight", _matrix_sq_norm(G.transpose(1, 2), U.transpose(1, 2)))
            else:
                Ug = U.view(B, groups, -1, P).transpose(2, 3).reshape(B * groups, P, -1)
                Gg = G.view(B, groups, -1, P).transpose(2, 3).reshape(B * groups, P, -1)
                self._put(own, "weight", _matrix_sq_norm(Gg, Ug).view(B, groups).sum(1))
            self._put(own, "bias", G.sum(2).pow(2).sum(1))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            shape = (1, -1) + (1,) * (a.dim() - 2)
            xhat = (a - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + m.eps)
            dims = tuple(range(2, a.dim()))
            self._put(own, "weight", (g * xhat).sum(dims).pow(2).sum(1) if dims else (g * xhat).pow(2).sum(1))
            self._put(own, "bias", g.sum(dims).pow(2).sum(1) if dims else g.pow(2).sum(1))
        elif isinstance(m, nn.LayerNorm):
            xhat = F.layer_norm(a, m.normalized_shape, eps=m.eps)
            k = len(m.normalized_shape)
            lead = tuple(range(1, a.dim() - k))
            gw = (g * xhat).sum(lead) if lead else g * xhat
            gb = g.sum(lead) if lead else g
            self._put(own, "weight", gw.reshape(B, -1).pow(2).sum(1))
            self._put(own, "bias", gb.reshape(B, -1).pow(2).sum(1))
        elif isinstance(m, nn.GroupNorm):
            xhat = F.group_norm(a, m.num_groups, eps=m.eps)
            dims = tuple(range(2, a.dim()))
            self._put(own, "weight", (g * xhat).sum(dims).pow(2).sum(1))
            self._put(own, "bias", g.sum(dims).pow(2).sum(1))
        else:  # pragma: no cover - ghost_unsupported() rules this out
            raise RuntimeError(f"no ghost rule for {type(m).__name__}")


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Temporarily stop autograd from computing parameter gradients (ghost computes norms instead)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def ghost_sq_norms(model: nn.Module, x: torch.Tensor, loss: LossFn, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """One batched forward + backward with per-layer hooks -> per-sample squared norms per tensor."""
    why = ghost_unsupported(model, params)
    if why:
        raise ValueError(f"impl='ghost' cannot score {type(model).__name__}: {why}. Use impl='vmap' (or 'auto').")
    hooks = _GhostHooks(model, params)
    try:
        with _frozen_parameters(model), torch.enable_grad():
            xin = x.detach().requires_grad_(True)
            value = loss(logits_of(model(xin))).sum()
            torch.autograd.grad(value, xin)
    finally:
        hooks.remove()
    zeros = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    return {n: hooks.sq.get(n, zeros) for n in params}


# ------------------------------------------------------------------------------------ head


def head_module(model: nn.Module, params: dict[str, nn.Parameter]) -> nn.Linear | None:
    """The model's last ``nn.Linear`` when ``params`` are only its weight and/or bias, else None."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    head = linears[-1]
    own = {id(p) for p in head.parameters(recurse=False)}
    return head if params and all(id(p) in own for p in params.values()) else None


def head_sq_norms(model: nn.Module, x: torch.Tensor, loss: LossFn, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Closed form for a linear head z = W h + b: per sample ||dL/dW||^2 = ||g||^2 ||h||^2 and ||dL/db||^2 =
    ||g||^2 with g = dL/dz. The backbone runs without autograd; only the logits get a gradient."""
    head = head_module(model, params)
    if head is None:
        raise ValueError("impl='head' needs params selecting only the last nn.Linear layer (e.g. params='^fc\\.'); "
                         "use impl='auto'")
    seen: dict[str, torch.Tensor] = {}
    handle = head.register_forward_hook(lambda m, inp, out: seen.update(h=inp[0], z=out))
    try:
        with torch.no_grad():
            z = logits_of(model(x))
    finally:
        handle.remove()
    if seen.get("z") is not z:
        raise ValueError(f"impl='head': the output of the last linear layer of {type(model).__name__} is not the "
                         "model's logits (something runs after it); use impl='ghost' or 'vmap'")
    h = seen["h"].reshape(len(x), -1, seen["h"].shape[-1])  # (B, positions, in)
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        g = torch.autograd.grad(loss(zz).sum(), zz)[0].reshape(len(x), -1, z.shape[-1])  # (B, positions, out)
    names = {id(p): n for n, p in params.items()}
    out: dict[str, torch.Tensor] = {}
    if id(head.weight) in names:
        out[names[id(head.weight)]] = _matrix_sq_norm(g.double(), h.double())
    if head.bias is not None and id(head.bias) in names:
        out[names[id(head.bias)]] = g.double().sum(1).pow(2).sum(1)
    return out


# ---------------------------------------------------------------------------------- driver


def resolve_impl(model: nn.Module, params: dict[str, nn.Parameter], impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"Unknown impl {impl!r}; expected one of {IMPLS}.")
    if impl == "auto":
        if head_module(model, params) is not None:
            return "head"
        return "ghost" if ghost_unsupported(model, params) is None else "vmap"
    return impl


_ENGINES = {"loop": loop_sq_norms, "vmap": vmap_sq_norms, "ghost": ghost_sq_norms, "head": head_sq_norms}


def iter_batches(data, batch_size: int, device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """Input tensors, ``batch_size`` rows at a time, from a Tensor or a map-style Dataset of
    ``(input, ...)`` items (or of bare inputs)."""
    if isinstance(data, torch.Tensor):
        for s in range(0, len(data), batch_size):
            yield data[s:s + batch_size].to(device) if device is not None else data[s:s + batch_size]
        return
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    for item in loader:
        xb = item[0] if isinstance(item, (tuple, list)) else item
        yield xb.to(device) if device is not None else xb


@contextlib.contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Put the model in eval mode for the block, then restore each module's own mode."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        if enabled:
            model.eval()
        yield model
    finally:
        for m, mode in modes:
            m.train(mode)


def per_sample_grad_norms(model: nn.Module, data, loss: str = "entropy", *, impl: str = "auto",
                          aggregate: str = "sum_of_norms", params: str | None = "all", chunk_size: int = 64,
                          eval_mode_: bool = True, device: torch.device | str | None = None,
                          return_per_tensor: bool = False):
    """GradNorm scores ``||grad_theta L(x)||`` for every sample of ``data`` (a Tensor or Dataset).

    Args:
        loss: ``entropy`` | ``expected`` (identical gradients, see module doc) | ``expected_detached``
            (identically zero; for tests) | ``egl`` (sum_y p_y ||grad CE(x, y)||, C passes).
        impl: ``auto`` | ``head`` | ``ghost`` | ``vmap`` | ``loop``.
        aggregate: ``sum_of_norms`` (official) | ``global_l2``.
        params: ``all`` trainable parameters, or a regex on parameter names (e.g. ``^fc\\.``).
        chunk_size: samples per vectorised pass (bounds memory; ignored by ``loop``).
        eval_mode_: score in eval mode (official). With False, BatchNorm in train mode is refused
            by ``ghost``/``vmap``.
        return_per_tensor: also return ``{param name: (N,) squared norms}`` (not for ``egl``).

    Returns:
        float64 tensor (N,) of scores on ``device`` (or the data's device).
    """
    if loss not in SCORES:
        raise ValueError(f"Unknown gradnorm loss {loss!r}; expected one of {SCORES}.")
    if aggregate not in AGGREGATES:
        raise ValueError(f"Unknown aggregate {aggregate!r}; expected one of {AGGREGATES}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    chosen = selected_parameters(model, params)
    with eval_mode(model, eval_mode_):
        engine_name = resolve_impl(model, chosen, impl)
        if engine_name != "loop":
            check_samples_independent(model, engine_name)
        engine = _ENGINES[engine_name]
        scores, per_tensor = [], []
        for xb in iter_batches(data, chunk_size if engine_name != "loop" else 256, device):
            if loss == "egl":
                with torch.no_grad():
                    p = F.softmax(logits_of(model(xb)), dim=-1).double()
                total = torch.zeros(len(xb), dtype=torch.float64, device=xb.device)
                for y in range(p.shape[1]):  # C label hypotheses; every pass is vectorised over samples
                    total += p[:, y] * aggregate_norms(engine(model, xb, class_ce_loss(y), chosen), aggregate)
                scores.append(total)
            else:
                sq = engine(model, xb, loss_fn(loss), chosen)
                scores.append(aggregate_norms(sq, aggregate))
                if return_per_tensor:
                    per_tensor.append(sq)
    out = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)
    if return_per_tensor:
        if loss == "egl":
            raise ValueError("return_per_tensor is not defined for loss='egl' (a mixture over labels).")
        return out, {n: torch.cat([d[n] for d in per_tensor]) for n in chosen}
    return out


def entropy_logit_gradient(logits: torch.Tensor) -> torch.Tensor:
    """Closed form ``dH/dz = -p * (log p + H)`` (for tests and the last-layer shortcut)."""
    logp = F.log_softmax(logits, dim=-1)
    p = logp.exp()
    H = -(p * logp).sum(-1, keepdim=True)
    return -p * (logp + H)
