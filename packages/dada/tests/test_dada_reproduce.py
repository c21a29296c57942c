"""reproduce: the quick plumbing run writes the table (slow), and the mechanism ranks handle ties."""

import json

import pytest

from dada.policy import SUBPOLICIES
from dada.reproduce import _ranks, build_parser, verdict


def test_ranks_of_the_planted_ops_sub_policies():
    weights = [0.0] * 105
    members = [i for i, sp in enumerate(SUBPOLICIES) if "Invert" in sp]
    for j, i in enumerate(members):
        weights[i] = 1.0 + j  # the 14 Invert sub-policies on top
    r = _ranks(weights, "Invert")
    assert r["mean_rank"] == pytest.approx(7.5) and r["in_top25"] == 14 and r["mass"] > 0.99
    flat = _ranks([0.0] * 105, "Invert")  # all tied: every sub-policy has the mean rank 53
    assert flat["mean_rank"] == pytest.approx(53.0) and flat["in_top25"] == 0


def test_verdict_is_the_projects_paired_t_test():
    assert verdict([1.0, 1.2, 0.9]) == "holds" and verdict([-1.0, -1.2, -0.9]) == "does not hold"
    assert verdict([1.0, -1.0, 0.5]) == "inconclusive" and verdict([0.1, -0.1, 0.05], "comparable", 1.5) == "holds"


def test_parser_defaults():
    args = build_parser().parse_args([])
    assert args.seeds >= 3 and args.out == "results/dada" and args.search_epochs == 40


@pytest.mark.slow
def test_reproduce_quick_writes_the_table(tmp_path, monkeypatch):
    from dada.reproduce import main

    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    main(["--quick", "--seeds", "2", "--workers", "1", "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.index("Why the mechanism check") < md.index("| setting |") and "synthetic" in md
    assert (tmp_path / "out" / "results.csv").is_file() and (tmp_path / "out" / "raw.json").is_file()
    headline = json.loads((tmp_path / "out" / "results.json").read_text())["headline"]
    for name in ("Invert", "Solarize", "above chance", "no augmentation", "random policy"):
        assert name in headline
