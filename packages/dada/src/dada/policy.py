"""Sub-policies, policies, and their batched application; the DADA policy as a torchvision v2
transform with the four published policies as presets.

A *sub-policy* is an ordered pair of distinct operations (DADA: all ``C(15, 2) = 105`` unordered
pairs, each in the order of :data:`dada.ops.OPS`). A *policy* is a list of sub-policies with one
``(operation, probability, level)`` triple per slot; applying it to an image picks one
sub-policy uniformly at random and applies each of its operations with its probability at its
level (Fast AutoAugment's ``Augmentation``, which DADA's final training uses).

:func:`apply_slots` is the batched kernel: every image has its own operations, on/off pattern
and levels; it loops over the (at most 15) operations of each slot, never over images.
"""

from __future__ import annotations

import enum
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import PIL.Image
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .ops import GEOMETRIC_IDS, OP_INDEX, OPS, apply_op, geometric, sample_geometric_values


def enumerate_subpolicies(ops: Sequence[str] = OPS, k: int = 2) -> list[tuple[str, ...]]:
    """All unordered k-subsets of ``ops`` (in ``ops`` order), as the official depth-first enumeration."""
    return [tuple(c) for c in itertools.combinations(ops, k)]


SUBPOLICIES: tuple[tuple[str, str], ...] = tuple(enumerate_subpolicies())  # 105


@dataclass(frozen=True)
class Policy:
    """An augmentation policy: ``subpolicies[i] = ((op, probability, level), (op, probability, level))``."""

    subpolicies: tuple[tuple[tuple[str, float, float], ...], ...]

    def __post_init__(self) -> None:
        subs = tuple(tuple((str(op), float(p), float(m)) for op, p, m in sub) for sub in self.subpolicies)
        object.__setattr__(self, "subpolicies", subs)
        if not subs:
            raise ValueError("a policy needs at least one sub-policy")
        k = len(subs[0])
        for sub in subs:
            if len(sub) != k:
                raise ValueError(f"every sub-policy needs {k} operations, got {sub}")
            for op, p, m in sub:
                if op not in OP_INDEX:
                    raise ValueError(f"unknown operation {op!r} in policy; expected one of {OPS}")
                if not (0.0 <= p <= 1.0 and 0.0 <= m <= 1.0):
                    raise ValueError(f"probability and level must lie in [0, 1], got ({op}, {p}, {m})")

    def __len__(self) -> int:
        return len(self.subpolicies)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(ops (S, K) int64, probabilities (S, K) float64, levels (S, K) float64)``."""
        ops = torch.tensor([[OP_INDEX[op] for op, _, _ in sub] for sub in self.subpolicies], dtype=torch.long)
        probs = torch.tensor([[p for _, p, _ in sub] for sub in self.subpolicies], dtype=torch.float64)
        levels = torch.tensor([[m for _, _, m in sub] for sub in self.subpolicies], dtype=torch.float64)
        return ops, probs, levels

    def to_list(self) -> list[list[list[Any]]]:
        return [[[op, p, m] for op, p, m in sub] for sub in self.subpolicies]

    @classmethod
    def from_list(cls, data: Sequence) -> Policy:
        return cls(tuple(tuple((op, p, m) for op, p, m in sub) for sub in data))

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_list(), f, indent=1)

    @classmethod
    def load(cls, path) -> Policy:
        with open(path) as f:
            return cls.from_list(json.load(f))

    def describe(self) -> str:
        return "\n".join(f"{i:2d}: " + "  ".join(f"({op}, p={p:.2f}, m={m:.2f})" for op, p, m in sub)
                         for i, sub in enumerate(self.subpolicies))


def random_policy(num_subpolicies: int = 25, generator: torch.Generator | None = None,
                  probability: float = 0.5) -> Policy:
    """A random policy in DADA's space: ``num_subpolicies`` distinct sub-policies drawn uniformly
    from the 105, probability ``probability`` and a uniform random level for every operation."""
    idx = torch.randperm(len(SUBPOLICIES), generator=generator)[:num_subpolicies].tolist()
    levels = torch.rand(num_subpolicies, 2, generator=generator, dtype=torch.float64).tolist()
    return Policy(tuple(tuple((op, probability, levels[i][j]) for j, op in enumerate(SUBPOLICIES[s]))
                        for i, s in enumerate(idx)))


class DADAPolicy(enum.Enum):
    """The four policies published with DADA (top-25 sub-policies of each search)."""

    CIFAR10 = "cifar10"
    CIFAR100 = "cifar100"
    SVHN = "svhn"
    IMAGENET = "imagenet"


def preset(name: DADAPolicy | str) -> Policy:
    key = name.value if isinstance(name, DADAPolicy) else str(name).lower()
    data = json.loads(resources.files("dada").joinpath("presets.json").read_text())
    if key not in data or key.startswith("_"):
        raise KeyError(f"unknown DADA preset {name!r}; expected one of {[p.value for p in DADAPolicy]}")
    return Policy.from_list(data[key])


# ------------------------------------------------------------------------- batched kernels


def apply_slots(images: Tensor, op_ids: Tensor, apply: Tensor, levels: Tensor,
                generator: torch.Generator | None = None,
                interpolation: InterpolationMode = InterpolationMode.NEAREST,
                fill: Sequence[float] | None = None) -> Tensor:
    """Apply per-image sub-policies to uint8 ``(N, C, H, W)`` images.

    ``op_ids (N, K)`` operation indices, ``apply (N, K)`` on/off, ``levels (N, K)`` in [0, 1].
    Slot j runs after slot j-1 (a sub-policy is ordered). Per slot, every operation present is
    applied once to the images that carry it, with their own levels.
    """
    out = images
    num_ops, n_geo = len(OPS), len(GEOMETRIC_IDS)
    assert GEOMETRIC_IDS == tuple(range(n_geo))  # the geometric ops come first in OPS: one contiguous group
    for j in range(op_ids.shape[1]):
        on = apply[:, j].cpu()
        if not bool(on.any()):
            continue
        key = torch.where(on, op_ids[:, j].cpu(), num_ops)  # num_ops = not applied
        order = torch.argsort(key, stable=True)  # images grouped by operation: slices instead of gathers
        counts = torch.bincount(key, minlength=num_ops + 1).tolist()
        keys_sorted, levels_sorted = key[order], levels[order, j].cpu()
        xs = out[order.to(images.device)]
        pieces, start = [], 0
        geo_count = sum(counts[:n_geo])
        if geo_count:  # every geometric op of this slot in one grid_sample
            sl = slice(0, geo_count)
            values = sample_geometric_values(keys_sorted[sl], levels_sorted[sl], generator)
            pieces.append(geometric(xs[sl], keys_sorted[sl], values, interpolation, fill))
            start = geo_count
        for o in range(n_geo, num_ops + 1):
            c = counts[o]
            if c == 0:
                continue
            sl = slice(start, start + c)
            pieces.append(xs[sl] if o == num_ops else apply_op(xs[sl], OPS[o], levels_sorted[sl], generator, interpolation, fill))
            start += c
        out = torch.empty_like(xs)
        out[order.to(images.device)] = torch.cat(pieces)
    return out


def apply_policy(images: Tensor, policy: Policy, generator: torch.Generator | None = None,
                 interpolation: InterpolationMode = InterpolationMode.NEAREST,
                 fill: Sequence[float] | None = None) -> Tensor:
    """Apply ``policy`` to every image of a uint8 batch independently (its own sub-policy,
    on/off draws, signs and Cutout positions)."""
    n = images.shape[0]
    ops, probs, levels = policy.tensors()
    k = torch.randint(len(policy), (n,), generator=generator)
    apply = torch.rand(n, ops.shape[1], generator=generator, dtype=torch.float64) < probs[k]
    return apply_slots(images, ops[k], apply, levels[k], generator, interpolation, fill)


class DADAAugment(v2.Transform):
    """DADA's augmentation policy as a torchvision v2 transform (like ``v2.AutoAugment``).

    Args:
        policy: a :class:`DADAPolicy` preset (default CIFAR-10), a preset name, a :class:`Policy`,
            or a list of sub-policies ``[[(op, p, m), (op, p, m)], ...]`` (e.g. a searched genotype).
        interpolation: for the geometric operations (DADA: NEAREST, PIL's default).
        fill: fill value of the geometric operations (DADA: black). Cutout always fills (125, 123, 114).

    Accepts PIL images and uint8 tensors ``(..., C, H, W)``. Unlike torchvision's AutoAugment,
    which draws one sub-policy per call, a batched tensor ``(N, C, H, W)`` gets an independent draw
    per image (this is the fast path: use it on whole batches).
    """

    def __init__(self, policy: DADAPolicy | str | Policy | Sequence = DADAPolicy.CIFAR10,
                 interpolation: InterpolationMode = InterpolationMode.NEAREST,
                 fill: Sequence[float] | None = None) -> None:
        super().__init__()
        if isinstance(policy, Policy):
            self.policy = policy
        elif isinstance(policy, (DADAPolicy, str)):
            self.policy = preset(policy)
        else:
            self.policy = Policy.from_list(policy)
        self.interpolation = interpolation
        self.fill = fill

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            out = apply_policy(F.pil_to_tensor(inpt).unsqueeze(0), self.policy, None, self.interpolation, self.fill)
            return F.to_pil_image(out[0])
        if not isinstance(inpt, Tensor):
            return inpt
        x = inpt.as_subclass(Tensor)
        if x.dtype != torch.uint8:
            raise TypeError(f"DADAAugment takes uint8 tensors or PIL images, got {x.dtype}")
        shape = x.shape
        flat = x.reshape(-1, *shape[-3:])
        out = apply_policy(flat, self.policy, None, self.interpolation, self.fill).reshape(shape)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out
