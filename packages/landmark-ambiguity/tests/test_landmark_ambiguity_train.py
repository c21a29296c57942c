"""fit(): validation before any data, mid-epoch resume equals an uninterrupted run, the searched labels
are what the next epochs train on, every test split is reported, amp honoured; configs compose."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from shared.errors import ConfigError

from landmark_ambiguity.heatmaps import to_heatmap, to_image
from landmark_ambiguity.model import build_model
from landmark_ambiguity.search import SearchConfig, latent_search
from landmark_ambiguity.train import fit, predict_heatmaps, validate

TINY = ["data.train_size=8", "data.test_size=4", "data.image_size=32", "model.width=8", "model.depth=2",
        "epochs=2", "batch_size=4", "search.start_epoch=1", "search.every=1", "ghcu.epochs=1",
        "ghcu.channels=[8]", "ghcu.hidden=16", "eval.overlays=2", "threads=1", "device=cpu"]


def _cfg(overrides, tiny=True):
    with initialize_config_module("landmark_ambiguity.conf", version_base="1.3"):
        return compose("train", overrides=(TINY if tiny else []) + overrides)


def _weights(path):
    return torch.load(path, weights_only=True)


def test_mid_epoch_stop_then_resume_matches_an_uninterrupted_run(tmp_path):
    a = tmp_path / "a"
    r1 = fit(_cfg(["max_steps=3"]), a)  # 2 steps per epoch: stops in the middle of epoch 2
    assert r1["step"] == 3 and (a / "last.pt").is_file() and not (a / "final_metrics.json").exists()
    ck = _weights(a / "last.pt")
    assert ck["step"] == 3 and ck["epoch"] == 1 and ck["searched"] == [1]
    r2 = fit(_cfg([]), a)  # resume=auto
    assert r2["step"] == 4 and r2["search_passes"] == 1
    for name in ("overlays.png", "overlays_occluded.png", "ced.png", "final_metrics.json", "ghcu.pt", "metrics.csv"):
        assert (a / name).is_file(), name
    b = tmp_path / "b"
    r3 = fit(_cfg(["resume=null"]), b)
    wa, wb = _weights(a / "last.pt"), _weights(b / "last.pt")
    for key in wa["model"]:
        torch.testing.assert_close(wa["model"][key], wb["model"][key], rtol=0, atol=0)
    torch.testing.assert_close(wa["labels"], wb["labels"], rtol=0, atol=0)
    assert {k: v for k, v in r2.items()} == {k: v for k, v in r3.items()}


def test_the_searched_labels_are_kept_and_trained_on(tmp_path):
    """The labels after the pass at epoch 1 are exactly the search of the epoch-1 network around the
    simulated annotations, they are saved, and training on them changes the weights (vs search off)."""
    a = tmp_path / "a"
    fit(_cfg(["max_steps=2", "search.lam=50"]), a)  # the network after epoch 1, before the pass
    ck = _weights(a / "last.pt")
    cfg = _cfg(["search.lam=50"])
    from landmark_ambiguity.data import build_data

    train, _ = build_data(cfg.data)
    model = build_model("hg2_w32", num_landmarks=68, width=8, depth=2)
    model.load_state_dict(ck["model"])
    hm = predict_heatmaps(model, train["images"], "cpu")
    scfg = SearchConfig(**{k: v for k, v in cfg.search.items() if k not in ("enabled", "start_epoch", "every")})
    expected = to_image(latent_search(hm, to_heatmap(train["labels"], 4), scfg), 4)
    assert not torch.equal(expected, train["labels"])
    fit(cfg, a)
    torch.testing.assert_close(_weights(a / "last.pt")["labels"], expected, rtol=0, atol=0)
    b = tmp_path / "b"
    fit(_cfg(["search.enabled=false"]), b)
    wa, wb = _weights(a / "last.pt")["model"], _weights(b / "last.pt")["model"]
    assert any(not torch.equal(wa[k], wb[k]) for k in wa if wa[k].is_floating_point())


def test_each_pass_starts_from_the_previous_labels(tmp_path):
    """Two passes with lam=0 keep the annotations (the prior alone); with the window at 0 nothing moves;
    a second pass observes the first pass's labels (checked through the recorded shift)."""
    a = tmp_path / "a"
    fit(_cfg(["epochs=3", "search.every=1", "search.lam=50", "search.window_radius=0.25"]), a)
    import csv

    rows = [r for r in csv.DictReader(open(a / "metrics.csv")) if r.get("search_pass")]
    assert [int(r["search_pass"]) for r in rows] == [1, 2]
    # every pass moves a label by at most the window (1/4 heatmap px = 1 image px here) from the previous one
    ck = _weights(a / "last.pt")
    from landmark_ambiguity.data import build_data

    o = build_data(_cfg([]).data)[0]["labels"]
    shift = (ck["labels"] - o).abs().amax()
    assert 1.0 < shift <= 2.0 + 1e-5  # two passes of <= 1 px each, and the second one moved further


def test_amp_bf16_trains_on_cpu(tmp_path):
    r = fit(_cfg(["amp=bf16", "epochs=1", "search.enabled=false", "ghcu.enabled=false"]), tmp_path / "amp")
    assert r["step"] == 2 and torch.isfinite(torch.tensor(r["test_nme"]))


@pytest.mark.parametrize("override, match", [
    ("model.name=hg2_w23", "model.name"),
    ("optim.name=sgdd", "optim.name"),
    ("optim.schedule=cosin", "optim.schedule"),
    ("eval.norm=iod", "eval.norm"),
    ("epochs=0", "epochs"),
    ("search.lam=-1", "search.lam"),
    ("search.chunk=0", "search.chunk"),
    ("search.start_epoch=5", "search.start_epoch"),
    ("data.image_size=30", "image_size"),
    ("data.ambiguity.weak_groups=[jaww]", "weak_groups"),
    ("ghcu.channel_dropout=1.5", "ghcu.channel_dropout"),
    ("weights=/no/such/file.pt", "weights"),
])
def test_bad_config_is_one_clear_error_before_any_data(override, match):
    with pytest.raises(ConfigError, match=match):
        validate(_cfg([override]))


def test_every_experiment_composes_and_validates():
    conf = Path(__file__).resolve().parents[1] / "src" / "landmark_ambiguity" / "conf" / "experiment"
    names = sorted(p.stem for p in conf.glob("*.yaml"))
    assert len(names) >= 4
    for name in names:
        cfg = _cfg([f"experiment={name}"], tiny=False)
        validate(cfg)
        assert cfg.package == "landmark-ambiguity" and cfg.name == name and cfg.data.name != "synthetic"
    splits = {n: list(_cfg([f"experiment={n}"], tiny=False).data.test_splits) for n in names}
    assert splits["300w_hg4_sa_ghcu"] == ["common", "challenging", "full"]
    assert splits["aflw_hg4_sa_ghcu"] == ["full_test", "frontal_test"]
    assert splits["300vw_hg4_sa_ghcu"] == ["A", "B", "C"]


def test_the_ghcu_is_supervised_by_the_searched_labels(tmp_path, monkeypatch):
    """The GHCU's regression targets are the searched labels that training ended with (saved in last.pt),
    not the original annotations: both the argument fit() passes and the heatmaps train_ghcu builds from it."""
    import landmark_ambiguity.train as tr

    seen: dict = {}
    real_train_ghcu, real_to_heatmap = tr.train_ghcu, tr.to_heatmap

    def recording_train_ghcu(hg, train, labels, *args, **kwargs):
        seen["annotations"] = train["labels"].clone()

        def recording_to_heatmap(points, stride):
            seen.setdefault("targets", points.clone())
            return real_to_heatmap(points, stride)

        monkeypatch.setattr(tr, "to_heatmap", recording_to_heatmap)
        try:
            return real_train_ghcu(hg, train, labels, *args, **kwargs)
        finally:
            monkeypatch.setattr(tr, "to_heatmap", real_to_heatmap)

    monkeypatch.setattr(tr, "train_ghcu", recording_train_ghcu)
    a = tmp_path / "a"
    fit(_cfg(["search.lam=50"]), a)
    searched = _weights(a / "last.pt")["labels"]
    assert not torch.equal(searched, seen["annotations"])
    torch.testing.assert_close(seen["targets"], searched, rtol=0, atol=0)
