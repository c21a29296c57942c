"""Evolutionary search mechanics on a synthetic fitness with a planted optimum."""

import numpy as np

from opanas import NUM_EDGES, OPS, EvolutionConfig, evolution_search, is_degenerate, random_arch

TARGET = random_arch(np.random.default_rng(123))


def matches(a):
    return sum(x == y for x, y in zip(a, TARGET))


def test_finds_planted_optimum_deterministically():
    cfg = EvolutionConfig(population=30, topk=8, generations=25, num_mutation=15, num_crossover=15, mutate_prob=0.1)
    r1 = evolution_search(matches, cfg, seed=0)
    r2 = evolution_search(matches, cfg, seed=0)
    assert r1.best == TARGET and r1.best_fitness == NUM_EDGES
    assert r1.history == r2.history  # deterministic under a seed
    assert all(b2 >= b1 for b1, b2 in zip(r1.best_per_generation, r1.best_per_generation[1:]))  # never decreases
    archs = [row["arch"] for row in r1.history]
    assert len(archs) == len(set(archs))  # no candidate evaluated twice
    assert all(len(a) == NUM_EDGES and all(0 <= x < len(OPS) for x in a) and not is_degenerate(a) for a in archs)
    assert r1.num_evaluated <= cfg.population * cfg.generations


def test_constraint_filters_candidates():
    no_se = lambda a: OPS.index("SE") not in a
    r = evolution_search(matches, EvolutionConfig(population=10, topk=3, generations=3, num_mutation=4,
                                                  num_crossover=4), seed=1, constraint=no_se)
    assert all(no_se(row["arch"]) for row in r.history)


def test_random_search_is_worse_than_evolution_on_the_same_budget():
    cfg = EvolutionConfig(population=20, topk=5, generations=10, num_mutation=10, num_crossover=10)
    evo = evolution_search(matches, cfg, seed=3)
    rng = np.random.default_rng(3)
    rand_best = max(matches(random_arch(rng)) for _ in range(evo.num_evaluated))
    assert evo.best_fitness > rand_best
