"""reproduce.py: the parser the provenance contract recomposes, and a tiny end-to-end run (slow)."""

import json

import pytest

from crssc.reproduce import METHODS, build_parser


def test_parser_defaults_are_the_committed_protocol():
    args = build_parser().parse_args([])
    assert args.seeds >= 5 and args.noise == [0.2, 0.4] and args.out == "results/crssc"
    assert [m for _, m in METHODS] == ["ce", "ls_ce", "coteaching", "cl_prune", "crssc"]


@pytest.mark.slow
def test_reproduce_quick_writes_the_report_from_data(tmp_path, monkeypatch):
    from crssc.reproduce import main
    from shared.report import render_report

    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    out = tmp_path / "out"
    main(["--quick", "--seeds", "3", "--workers", "1", "--noise", "0.4", "--out", str(out)])
    md = (out / "results.md").read_text()
    assert md.startswith("# CRSSC") and "## Mechanism check" in md.split("## Paper-setting")[0]
    assert "synthetic" in md and render_report(out) == md
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["sections"][0]["rows"]) == 6 and all(len(r["values"]) == 3 for r in doc["sections"][0]["rows"])
    prov = json.loads((out / "provenance.json").read_text())
    assert len(prov["runs"]) == 15
    assert (out / "mechanism.png").is_file() and (out / "curves.png").is_file()
