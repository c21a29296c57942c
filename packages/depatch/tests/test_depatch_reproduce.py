"""The reproduce script end to end in quick mode (slow: skipped by default; run with -m slow)."""

import csv

import pytest


@pytest.mark.slow
def test_reproduce_quick_writes_table_and_figure(tmp_path, monkeypatch):
    from depatch.reproduce import main

    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    main(["--quick", "--seeds", "1", "--paper-seeds", "1", "--out", str(tmp_path / "out"), "--workers", "1"])
    out = tmp_path / "out"
    for f in ("results.csv", "results.md", "results.json", "provenance.json", "runs.json", "patch_rectangles.png",
              "box_statistics.png"):
        assert (out / f).is_file(), f
    rows = list(csv.DictReader(open(out / "results.csv")))
    by_metric = {(r["setting"], r["metric"]): r for r in rows}
    full = by_metric[("DPT-T vs PVT-T at 224 px", "parameters (M)")]
    assert full["ours"].startswith("15.15") and full["baseline"] == "13.23" and full["holds"] == "yes"
    for dpt, pvt, size in (("26.41", "24.49", "S"), ("46.13", "44.21", "M")):  # one row per model, never averaged
        row = by_metric[(f"DPT-{size} vs PVT-{size} at 224 px", "parameters (M)")]
        assert row["ours"].startswith(dpt) and row["baseline"] == pvt and row["n_seeds"] == "1" and row["holds"] == "yes"
    settings = {r["setting"] for r in rows}
    assert "parts task, 32 px, 4 classes: control: DPT vs DPT with frozen boxes" in settings
    assert "synthetic" in (out / "results.md").read_text()
