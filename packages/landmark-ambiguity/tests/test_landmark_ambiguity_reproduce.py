"""reproduce --quick end to end: every run is recorded with a config its overrides recompose, the report is
rendered from data, the mechanism check comes first and states its reason before the numbers."""

import json

from shared.provenance import compare_with_defaults
from shared.report import render_report

from landmark_ambiguity.reproduce import branches, build_parser, main


def test_branches_share_data_and_seed_and_differ_only_in_the_search():
    runs = branches("mech", 3, quick=False)
    assert set(runs) == {"mech_s3_base", "mech_s3_sa_lam1", "mech_s3_oracle"}
    strip = [o for o in runs["mech_s3_base"] if not o.startswith(("name=", "search."))]
    for name, ov in runs.items():
        assert [o for o in ov if not o.startswith(("name=", "search."))] == strip, name
        assert "seed=3" in ov and "data.seed=30" in ov
    assert "search.lam=1" in runs["mech_s3_sa_lam1"] and "search.enabled=false" in runs["mech_s3_base"]


def test_reproduce_quick_report_and_provenance(tmp_path):
    out = tmp_path / "out"
    main(["--quick", "--seeds", "1", "--paper-seeds", "1", "--workers", "1", "--out", str(out),
          "--work", str(tmp_path / "work")])
    for f in ("results.md", "results.json", "results.csv", "provenance.json", "ced_mechanism.png", "label_error.png",
              "ced_paper.png", "overlays.png"):
        assert (out / f).is_file(), f
    md = (out / "results.md").read_text()
    assert render_report(out) == md
    doc = json.loads((out / "results.json").read_text())
    first = doc["sections"][0]
    assert first["heading"].startswith("Mechanism check") and "Why the effect must show" in first["text"]
    assert md.index("Why the effect must show") < md.index("| setting |")
    prov = json.loads((out / "provenance.json").read_text())
    assert len(prov["runs"]) == 3 + 2 and prov["worker_processes"] == 1
    assert compare_with_defaults(prov) == []  # every run's config is what its overrides compose to
    diffs = compare_with_defaults(prov, build_parser())
    assert diffs and all(d.startswith("args.") for d in diffs)  # --quick etc. differ from the defaults, nothing else
