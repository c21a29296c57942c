"""Evolutionary search over architecture codes (reconstructed: the official search code was never
released; the settings follow SPOS / mmrazor's ``EvolutionSearcher`` conventions and are ours).

Each generation keeps the ``topk`` best candidates evaluated so far as parents, and proposes
``num_mutation`` mutants (each edge re-drawn with probability ``mutate_prob``) and
``num_crossover`` children (each edge copied from one of two parents, uniformly), topped up with
random candidates up to ``population``. Candidates are valid 15-edge codes, never degenerate,
never evaluated twice, and must pass ``constraint`` (e.g. a parameter budget) when one is given.
The first generation is ``population`` random candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from opanas.arch import NUM_EDGES, OPS, arch_to_str, is_degenerate, random_arch

__all__ = ["EvolutionConfig", "SearchResult", "evolution_search"]

log = logging.getLogger("repro")


@dataclass
class EvolutionConfig:
    """Defaults from mmrazor's EvolutionSearcher (not from the paper, which does not give them)."""

    population: int = 50
    topk: int = 10
    generations: int = 20
    num_mutation: int = 25
    num_crossover: int = 25
    mutate_prob: float = 0.1
    max_tries: int = 1000  # proposal attempts per generation before giving up on filling it


@dataclass
class SearchResult:
    best: tuple[int, ...]
    best_fitness: float
    history: list[dict] = field(default_factory=list)  # one row per evaluated candidate
    best_per_generation: list[float] = field(default_factory=list)

    @property
    def num_evaluated(self) -> int:
        return len(self.history)

    def top(self, k: int = 10) -> list[dict]:
        return sorted(self.history, key=lambda r: -r["fitness"])[:k]


def evolution_search(fitness: Callable[[tuple[int, ...]], float], cfg: EvolutionConfig | None = None, seed: int = 0,
                     constraint: Callable[[tuple[int, ...]], bool] | None = None,
                     on_evaluated: Callable[[dict], None] | None = None,
                     initial: Sequence[tuple[int, ...]] = ()) -> SearchResult:
    """Maximise ``fitness(arch)``. Deterministic for a given ``seed`` (and deterministic fitness).

    ``initial``: candidates to put into the first generation before the random ones.
    ``on_evaluated(row)`` is called after every evaluation (logging, progress).
    """
    cfg = cfg or EvolutionConfig()
    if cfg.topk < 1 or cfg.population < 1 or cfg.generations < 1:
        raise ValueError(f"population, topk and generations must be >= 1, got {cfg}.")
    rng = np.random.default_rng(seed)
    scores: dict[tuple[int, ...], float] = {}
    history: list[dict] = []
    best_curve: list[float] = []

    def ok(a: tuple[int, ...]) -> bool:
        return a not in scores and not is_degenerate(a) and (constraint is None or constraint(a))

    def evaluate(batch: list[tuple[int, ...]], gen: int) -> None:
        for a in batch:
            f = float(fitness(a))
            scores[a] = f
            row = {"generation": gen, "arch": a, "arch_str": arch_to_str(a), "fitness": f}
            history.append(row)
            if on_evaluated is not None:
                on_evaluated(row)

    def propose(make: Callable[[], tuple[int, ...]], n: int, taken: set) -> list[tuple[int, ...]]:
        out: list[tuple[int, ...]] = []
        for _ in range(cfg.max_tries):
            if len(out) >= n:
                break
            a = make()
            if a not in taken and ok(a):
                out.append(a)
                taken.add(a)
        return out

    # generation 0: seeds + random candidates
    taken: set = set()
    first = [tuple(int(x) for x in a) for a in initial if ok(tuple(int(x) for x in a))][: cfg.population]
    taken.update(first)
    first += propose(lambda: random_arch(rng), cfg.population - len(first), taken)
    evaluate(first, 0)
    best_curve.append(max(scores.values()))
    for gen in range(1, cfg.generations):
        parents = sorted(scores, key=lambda a: -scores[a])[: cfg.topk]

        def mutate() -> tuple[int, ...]:
            p = np.array(parents[rng.integers(len(parents))])
            flip = rng.random(NUM_EDGES) < cfg.mutate_prob
            p[flip] = rng.integers(len(OPS), size=int(flip.sum()))
            return tuple(int(x) for x in p)

        def crossover() -> tuple[int, ...]:
            i, j = rng.integers(len(parents), size=2)
            pick = rng.random(NUM_EDGES) < 0.5
            return tuple(int(x) for x in np.where(pick, parents[i], parents[j]))

        taken = set()
        batch = propose(mutate, cfg.num_mutation, taken)
        batch += propose(crossover, cfg.num_crossover, taken)
        batch += propose(lambda: random_arch(rng), cfg.population - len(batch), taken)
        evaluate(batch, gen)
        best_curve.append(max(scores.values()))
        log.info("search generation %d/%d: %d evaluated, best fitness %.4f", gen + 1, cfg.generations, len(scores),
                 best_curve[-1])
    best = max(scores, key=scores.__getitem__)  # first evaluated among equals
    return SearchResult(best=best, best_fitness=scores[best], history=history, best_per_generation=best_curve)
