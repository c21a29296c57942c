"""Architecture codes of the OPANAS search space.

The super-net has node 0 (the lateral pyramid) and ``NUM_NODES = 5`` intermediate nodes. Node k
(1..5) sums one information path applied to every earlier node j < k (densely connected), which
gives 1+2+3+4+5 = 15 edges; edge ``s(s+1)/2 + j`` connects node j to node s+1. Each edge picks one
of the six paths in :data:`OPS` (the official super-net's order), so the space holds 6**15
(about 4.7e11) architectures. An architecture is a tuple of 15 op indices; its string form is the
op names joined by commas, e.g. :data:`OFFICIAL_ARCH_STR`.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np

__all__ = ["NUM_EDGES", "NUM_NODES", "OFFICIAL_ARCH", "OFFICIAL_ARCH_STR", "OPS", "SEARCH_SPACE_SIZE", "arch_to_str",
           "edge_index", "edges_into", "is_degenerate", "op_counts", "parse_arch", "random_arch", "sample_arch"]

OPS = ("none", "skip_connect", "TD", "BU", "FS", "SE")
_ALIASES = {"skip": "skip_connect", "zero": "none", "td": "TD", "bu": "BU", "fs": "FS", "se": "SE",
            "top_down": "TD", "bottom_up": "BU", "fusing_splitting": "FS", "scale_equalizing": "SE"}
NUM_NODES = 5
NUM_EDGES = NUM_NODES * (NUM_NODES + 1) // 2
SEARCH_SPACE_SIZE = len(OPS) ** NUM_EDGES

#: The architecture found by the paper (official configs, used for both released detectors).
OFFICIAL_ARCH_STR = "TD,TD,TD,FS,none,skip_connect,BU,skip_connect,none,TD,BU,none,FS,SE,BU"


def edge_index(step: int, src: int) -> int:
    """Edge from node ``src`` into node ``step + 1`` (0 <= src <= step < NUM_NODES)."""
    if not 0 <= src <= step < NUM_NODES:
        raise ValueError(f"no edge from node {src} into node {step + 1}")
    return step * (step + 1) // 2 + src


def edges_into(node: int) -> list[int]:
    """Edge indices feeding node ``node`` (1..NUM_NODES), ordered by source node."""
    return [edge_index(node - 1, j) for j in range(node)]


def parse_arch(arch: str | Sequence[int] | Sequence[str]) -> tuple[int, ...]:
    """Any architecture form -> tuple of 15 op indices.

    Accepts a comma/space/dash-separated string of op names (``"TD,TD,..."``), a JSON list, a list of
    names or a list of indices. Raises ``ValueError`` naming the bad entry.
    """
    if isinstance(arch, str):
        text = arch.strip()
        if text.startswith("["):
            arch = json.loads(text)
        else:
            arch = [t for t in text.replace(";", ",").replace(" ", ",").split(",") if t]
    out = []
    for i, a in enumerate(arch):
        if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            if not 0 <= int(a) < len(OPS):
                raise ValueError(f"edge {i}: op index {a} out of range [0, {len(OPS)}) (ops: {OPS}).")
            out.append(int(a))
        elif isinstance(a, str):
            name = a if a in OPS else _ALIASES.get(a.lower(), _ALIASES.get(a, a))
            if name not in OPS:
                raise ValueError(f"edge {i}: unknown op {a!r}; expected one of {OPS} (or aliases {sorted(_ALIASES)}).")
            out.append(OPS.index(name))
        else:
            raise ValueError(f"edge {i}: expected an op name or index, got {a!r}.")
    if len(out) != NUM_EDGES:
        raise ValueError(f"an architecture has {NUM_EDGES} edges ({NUM_NODES} densely connected nodes), got {len(out)}.")
    return tuple(out)


def arch_to_str(arch: Iterable[int]) -> str:
    """Tuple of op indices -> ``"TD,TD,FS,..."`` (round-trips through :func:`parse_arch`)."""
    return ",".join(OPS[i] for i in parse_arch(list(arch)))


OFFICIAL_ARCH = parse_arch(OFFICIAL_ARCH_STR)


def is_degenerate(arch: Sequence[int]) -> bool:
    """True when the neck output cannot depend on its input: no chain of non-``none`` edges leads
    from node 0 to any intermediate node (the output sums nodes 1..5). Such candidates are rejected
    by the sampler and the search."""
    arch = parse_arch(list(arch))
    reach = [True] + [False] * NUM_NODES
    for k in range(1, NUM_NODES + 1):
        reach[k] = any(reach[j] and arch[edge_index(k - 1, j)] != 0 for j in range(k))
    return not any(reach[1:])


def random_arch(rng: np.random.Generator, allow_degenerate: bool = False) -> tuple[int, ...]:
    """One op per edge, uniformly (SPOS-style); degenerate draws are redrawn unless allowed."""
    while True:
        arch = tuple(int(a) for a in rng.integers(len(OPS), size=NUM_EDGES))
        if allow_degenerate or not is_degenerate(arch):
            return arch


def sample_arch(seed: int, step: int) -> tuple[int, ...]:
    """The super-net's path choice at training step ``step`` (SPOS: one path per edge, uniformly, a fresh draw
    every step). It depends only on (seed, step): every DDP rank trains the same sub-net at a step, and a resumed
    run draws exactly what an uninterrupted run would."""
    return random_arch(np.random.default_rng([int(seed), int(step), 0x5B05]))


def op_counts(arch: Sequence[int]) -> dict[str, int]:
    arch = parse_arch(list(arch))
    return {name: sum(a == i for a in arch) for i, name in enumerate(OPS)}
