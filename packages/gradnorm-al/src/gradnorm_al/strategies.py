"""Selection strategies behind one interface, and ``select(model, unlabelled, budget, strategy)``.

A strategy turns (model, candidate pool, budget) into the positions of the candidates to label.
Score-based strategies compute one score per candidate (higher = more wanted) and take the top
``budget`` (the official GradNorm code sorts ascending and takes the tail, which is the same set);
core-set is a greedy set-selection procedure.

=====================  =======================================================================
``random``             uniform without replacement (seeded)
``entropy``            H(p)
``least_confidence``   1 - max_y p_y
``margin``             -(p_top1 - p_top2)   (smallest margin first)
``coreset``            k-center greedy on penultimate features (Sener & Savarese, 2018)
``bald``               MC-dropout mutual information H(E p) - E H(p) (Gal et al., 2017)
``expected_gradnorm``  ||grad sum_i p_i CE(z, i)||, posterior not detached (official SCHEME=0)
``entropy_gradnorm``   ||grad H(p)||                                     (official SCHEME=1)
``egl``                sum_y p_y ||grad CE(z, y)||  (expected gradient length; a variant, not the paper's)
=====================  =======================================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import ConfigError, check_choice

from .gradnorm import eval_mode, iter_batches, logits_of, per_sample_grad_norms

_STRATEGIES: dict[str, "Strategy"] = {}


@dataclass
class SelectionContext:
    """Everything a strategy may need besides the model and the pool."""

    labelled: object | None = None  # Tensor / Dataset of labelled inputs (core-set)
    batch_size: int = 256
    device: torch.device | str | None = None
    seed: int = 0
    gradnorm: dict = field(default_factory=dict)  # impl, aggregate, params, chunk_size
    mc_samples: int = 20
    offset: int = 0  # position of this pool's first sample in the whole candidate pool (sharded scoring)


class Strategy:
    name = ""

    def select(self, model: nn.Module, pool, budget: int, ctx: SelectionContext) -> torch.Tensor:
        raise NotImplementedError


class ScoreStrategy(Strategy):
    """Top-``budget`` of a per-sample score (ties broken by the lower position).

    Under torchrun the pool is scored in shards: it is cut into the same chunks a single process scores one
    at a time (``shard_size``), chunk k goes to rank k % world size, and the scores are gathered, so every
    rank holds the scores a single process computes (bit for bit on the same hardware) and selects the same
    samples."""

    def scores(self, model: nn.Module, pool, ctx: SelectionContext) -> torch.Tensor:
        raise NotImplementedError

    def shard_size(self, ctx: SelectionContext) -> int:
        return ctx.batch_size

    def all_scores(self, model: nn.Module, pool, ctx: SelectionContext) -> torch.Tensor:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.scores(model, pool, ctx).double().cpu()
        rank, world, size, n = dist.get_rank(), dist.get_world_size(), self.shard_size(ctx), len(pool)
        starts = list(range(0, n, size))
        mine = {s: self.scores(model, _slice(pool, s, min(s + size, n)),
                               dataclasses.replace(ctx, offset=ctx.offset + s)).double().cpu()
                for s in starts[rank::world]}
        gathered: list[dict | None] = [None] * world
        dist.all_gather_object(gathered, mine)
        merged = {k: v for part in gathered for k, v in part.items()}
        return torch.cat([merged[s] for s in starts]) if starts else torch.zeros(0, dtype=torch.float64)

    def select(self, model, pool, budget, ctx):
        s = self.all_scores(model, pool, ctx)
        order = torch.sort(-s, stable=True).indices
        return order[:budget]


def _slice(pool, start: int, stop: int):
    if isinstance(pool, torch.Tensor):
        return pool[start:stop]
    return torch.utils.data.Subset(pool, range(start, stop))


def register_strategy(cls):
    inst = cls()
    if inst.name in _STRATEGIES:
        raise ValueError(f"strategy {inst.name!r} is already registered")
    _STRATEGIES[inst.name] = inst
    return cls


def list_strategies() -> list[str]:
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> Strategy:
    check_choice("strategy", name, list_strategies())
    return _STRATEGIES[name]


# ------------------------------------------------------------------------------- helpers


@torch.no_grad()
def predict_probs(model: nn.Module, data, batch_size: int = 256, device=None) -> torch.Tensor:
    """Softmax outputs (N, C) in eval mode."""
    with eval_mode(model):
        return torch.cat([F.softmax(logits_of(model(xb)).double(), -1).cpu()
                          for xb in iter_batches(data, batch_size, device)])


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head: core-set needs penultimate features "
                         f"(the input of the last Linear layer).")
    return linears[-1]


@torch.no_grad()
def embed(model: nn.Module, data, batch_size: int = 256, device=None) -> torch.Tensor:
    """Penultimate features: the input of the model's last ``nn.Linear`` (eval mode)."""
    head = last_linear(model)
    feats: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].flatten(1).double().cpu()))
    try:
        with eval_mode(model):
            for xb in iter_batches(data, batch_size, device):
                model(xb)
    finally:
        handle.remove()
    return torch.cat(feats) if feats else torch.zeros(0, 0, dtype=torch.float64)


def entropy_of(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


def k_center_greedy(features: torch.Tensor, centres: torch.Tensor, budget: int) -> torch.Tensor:
    """Greedy k-center (Sener & Savarese): repeatedly pick the candidate farthest (Euclidean) from
    every centre chosen so far; ``centres`` are the labelled points. Returns candidate positions.
    With no labelled centre the first pick is the candidate farthest from the candidates' mean."""
    features = features.double()
    if budget > len(features):
        raise ValueError(f"budget {budget} exceeds the {len(features)} candidates.")
    if len(centres):
        min_d = torch.cdist(features, centres.double()).min(1).values
    else:
        min_d = (features - features.mean(0, keepdim=True)).norm(dim=1)
    chosen = []
    for _ in range(budget):  # loop over picks (budget), each vectorised over candidates
        i = int(torch.argmax(min_d))
        chosen.append(i)
        min_d = torch.minimum(min_d, (features - features[i]).norm(dim=1))
        min_d[i] = -1.0
    return torch.tensor(chosen, dtype=torch.long)


# ------------------------------------------------------------------------------ strategies


@register_strategy
class RandomStrategy(Strategy):
    name = "random"

    def select(self, model, pool, budget, ctx):
        n = len(pool)
        return torch.from_numpy(np.random.default_rng(ctx.seed).permutation(n)[:budget]).long()


@register_strategy
class EntropyStrategy(ScoreStrategy):
    name = "entropy"

    def scores(self, model, pool, ctx):
        return entropy_of(predict_probs(model, pool, ctx.batch_size, ctx.device))


@register_strategy
class LeastConfidenceStrategy(ScoreStrategy):
    name = "least_confidence"

    def scores(self, model, pool, ctx):
        return 1.0 - predict_probs(model, pool, ctx.batch_size, ctx.device).max(1).values


@register_strategy
class MarginStrategy(ScoreStrategy):
    name = "margin"

    def scores(self, model, pool, ctx):
        top2 = predict_probs(model, pool, ctx.batch_size, ctx.device).topk(2, dim=1).values
        return -(top2[:, 0] - top2[:, 1])


@register_strategy
class CoresetStrategy(Strategy):
    name = "coreset"

    def select(self, model, pool, budget, ctx):
        feats = embed(model, pool, ctx.batch_size, ctx.device)
        centres = (embed(model, ctx.labelled, ctx.batch_size, ctx.device) if ctx.labelled is not None
                   else torch.zeros(0, feats.shape[1], dtype=torch.float64))
        return k_center_greedy(feats, centres, budget)


@register_strategy
class BALDStrategy(ScoreStrategy):
    name = "bald"

    @torch.no_grad()
    def scores(self, model, pool, ctx):
        dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        if not dropouts or all(m.p == 0 for m in dropouts):
                raise ConfigError(f"strategy=bald needs MC dropout, but {type(model).__name__} has no dropout layer "
                              f"with p > 0; build the model with dropout (e.g. model.dropout=0.3)")
        if ctx.mc_samples < 2:
            raise ConfigError(f"bald.mc_samples={ctx.mc_samples}: BALD needs at least 2 MC samples; set bald.mc_samples=20")
        out = []
        with eval_mode(model):
            for m in dropouts:  # dropout on, BatchNorm stays on running statistics
                m.train()
            for b, xb in enumerate(iter_batches(pool, ctx.batch_size, ctx.device)):
                # dropout masks drawn from (seed, position of the batch in the whole pool): the same scores
                # whether the pool is scored in one process or sharded over ranks
                with torch.random.fork_rng(devices=[xb.device] if xb.device.type == "cuda" else []):
                    torch.manual_seed(int(np.random.SeedSequence([ctx.seed, ctx.offset + b * ctx.batch_size])
                                          .generate_state(1)[0]))
                    p = torch.stack([F.softmax(logits_of(model(xb)).double(), -1) for _ in range(ctx.mc_samples)])
                mean = p.mean(0)
                out.append((entropy_of(mean) - entropy_of(p).mean(0)).cpu())
        return torch.cat(out)


class _GradNormStrategy(ScoreStrategy):
    loss = ""

    def shard_size(self, ctx):
        return int((ctx.gradnorm or {}).get("chunk_size", 64))

    def scores(self, model, pool, ctx):
        opts = {"impl": "auto", "aggregate": "sum_of_norms", "params": "all", "chunk_size": 64}
        opts.update(ctx.gradnorm or {})
        return per_sample_grad_norms(model, pool, self.loss, device=ctx.device, **opts)


@register_strategy
class ExpectedGradNorm(_GradNormStrategy):
    name = "expected_gradnorm"
    loss = "expected"


@register_strategy
class EntropyGradNorm(_GradNormStrategy):
    name = "entropy_gradnorm"
    loss = "entropy"


@register_strategy
class ExpectedGradientLength(_GradNormStrategy):
    name = "egl"
    loss = "egl"


# ----------------------------------------------------------------------------- public API


def select(model: nn.Module, unlabelled, budget: int, strategy: str | Strategy = "entropy_gradnorm", *,
           labelled=None, seed: int = 0, batch_size: int = 256, device=None, mc_samples: int = 20,
           **gradnorm_opts) -> torch.Tensor:
    """Positions (into ``unlabelled``) of the ``budget`` samples ``strategy`` wants labelled next.

    ``unlabelled`` / ``labelled`` are input Tensors (N, ...) or map-style Datasets yielding
    ``(input, ...)``; ``labelled`` is used by ``coreset`` only. ``gradnorm_opts`` go to
    :func:`~gradnorm_al.gradnorm.per_sample_grad_norms` (``impl``, ``aggregate``, ``params``,
    ``chunk_size``). The model's train/eval mode is left as it was.

    >>> idx = select(model, pool_images, 100, "entropy_gradnorm")          # doctest: +SKIP
    """
    n = len(unlabelled)
    if not isinstance(budget, (int, np.integer)) or budget < 0:
        raise ValueError(f"budget must be a non-negative int, got {budget!r}.")
    if budget > n:
        raise ValueError(f"budget {budget} exceeds the {n} unlabelled candidates; lower the budget or score "
                         f"a larger subset.")
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    if budget == 0:
        return torch.zeros(0, dtype=torch.long)
    ctx = SelectionContext(labelled=labelled, batch_size=batch_size, device=device, seed=seed,
                           gradnorm=gradnorm_opts, mc_samples=mc_samples)
    idx = strat.select(model, unlabelled, int(budget), ctx).long().cpu()
    if len(idx) != budget or len(torch.unique(idx)) != budget or (len(idx) and (idx.min() < 0 or idx.max() >= n)):
        raise RuntimeError(f"strategy {strat.name!r} returned an invalid selection (need {budget} distinct "
                           f"positions in [0, {n})).")
    return idx

