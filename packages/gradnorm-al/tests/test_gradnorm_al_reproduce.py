"""The reproduce command end to end in its --quick setting."""

import csv

import pytest

from gradnorm_al.reproduce import STRATEGIES, auc, main


def test_auc_is_the_normalised_trapezoid():
    assert auc([0, 10, 20], [10.0, 20.0, 40.0]) == (15.0 * 10 + 30.0 * 10) / 20


@pytest.mark.slow  # ~20 s idle; several minutes under contention
def test_quick_reproduce_writes_table_plot_and_the_scheme_identity(tmp_path):
    out = tmp_path / "res"
    assert main(["--quick", "--seeds", "1", "--workers", "1", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    for name in ("results.csv", "results.md", "al_curves.png", "curves.csv"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "results.csv")))
    by = {(r["setting"], r["metric"]): r for r in rows}
    ident = by[("expected_gradnorm vs entropy_gradnorm", "Jaccard of selections, all cycles")]
    assert ident["ours_mean"] == "1" and ident["holds"] == "yes"  # identical gradients -> identical picks
    assert {r["setting"] for r in rows} >= set(STRATEGIES)
    md = (out / "results.md").read_text()
    assert "synthetic" in md and "Paper's claim" in md and "This run:" in md
