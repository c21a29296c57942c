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
    from landmark_ambiguity.reproduce import END_ROWS

    for row in ("annotations", "network (decoded)", "search lam=1, ideal heatmaps", *END_ROWS.values()):
        assert f"| {row} |" in md, row  # the label table: phase-1 diagnostics and both networks at the end
    raw = json.loads((out / "raw.json").read_text())
    mech = next(d for d in raw if d["kind"] == "mech")
    assert mech["diag"][END_ROWS["oracle"]] != mech["diag"][END_ROWS["base"]]  # two different networks
    prov = json.loads((out / "provenance.json").read_text())
    assert len(prov["runs"]) == 3 + 2 and prov["worker_processes"] == 1
    assert compare_with_defaults(prov) == []  # every run's config is what its overrides compose to
    diffs = compare_with_defaults(prov, build_parser())
    assert diffs and all(d.startswith("args.") for d in diffs)  # --quick etc. differ from the defaults, nothing else


def test_label_stats_split_the_weak_points_bias_along_and_across_the_contour():
    """Known values: every weak label shifted by a along its contour tangent and b across it (x inter-ocular
    distance), the well-defined ones by c in x, plus an image-specific slide whose mean over images is zero."""
    import numpy as np
    import torch

    from landmark_ambiguity.ambiguity import tangents, weak_mask
    from landmark_ambiguity.reproduce import _label_stats

    rng = np.random.default_rng(0)
    shape = np.cumsum(rng.normal(0, 2.0, (68, 2)), axis=0)
    shape[45] = shape[36] + [20.0, 1.0]
    exact = shape + rng.normal(0, 5.0, (6, 1, 2))  # one shape, translated: the same tangents in every image
    iod = np.linalg.norm(exact[:, 36] - exact[:, 45], axis=-1)[:, None, None]
    t = tangents(exact)
    n = np.stack([-t[..., 1], t[..., 0]], -1)
    weak = weak_mask()
    a, b, c = 0.07, -0.03, 0.02
    slide = np.array([1, -1, 2, -2, 0.5, -0.5])[:, None, None] * 0.1  # zero mean over the images
    off_weak = t * (a + slide) + n * b
    off_strong = np.broadcast_to(np.array([c, 0.0]), exact.shape)
    labels = exact + np.where(weak[None, :, None], off_weak, off_strong) * iod
    st = _label_stats(torch.from_numpy(labels), torch.from_numpy(exact), torch.from_numpy(weak))
    assert np.isclose(st["weak_bias_along"], a, atol=1e-9) and np.isclose(st["weak_bias_across"], abs(b), atol=1e-9)
    assert np.isclose(st["weak_bias"], np.hypot(a, b), atol=1e-9)
    assert np.isclose(st["strong"], c, atol=1e-9)
    want_weak = np.hypot(a + slide[:, 0, 0], b).mean()
    assert np.isclose(st["weak"], want_weak, atol=1e-9)


def test_diag_text_quotes_its_own_numbers_and_names_where_the_network_errs():
    from landmark_ambiguity.reproduce import END_ROWS, _diag_text

    def row(w, s, along, across):
        return {"weak": w, "strong": s, "weak_bias": (along ** 2 + across ** 2) ** 0.5, "weak_bias_along": along,
                "weak_bias_across": across}

    def done(along, across):
        diag = {"annotations": row(0.25, 0.025, 0.04, 0.001), "network (decoded)": row(0.16, 0.07, along, across),
                "search lam=1": row(0.158, 0.049, 0.05, 0.04), END_ROWS["base"]: row(0.14, 0.06, 0.07, 0.045),
                END_ROWS["oracle"]: row(0.11, 0.058, 0.039, 0.054)}
        return [{"kind": "mech", "seed": 0, "diag": diag}]

    t = _diag_text(done(0.02, 0.09))
    assert "network (0.160) against the annotations (0.250)" in t and "network (0.070)" in t
    assert "lies mostly across it (0.020 along, 0.090 across)" in t
    assert "mostly along it" in _diag_text(done(0.09, 0.02))
    assert "about as much across it as along it" in _diag_text(done(0.076, 0.071))
