"""2-step fit() + resume continues exactly (weights equal an uninterrupted run); configs compose."""

from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from landmark_ambiguity.train import fit

TINY = ["data.train_size=8", "data.test_size=4", "data.image_size=32", "model.width=8", "model.depth=2",
        "epochs=2", "batch_size=4", "search.start_epoch=1", "search.every=1", "ghcu.epochs=1",
        "ghcu.channels=[8]", "ghcu.hidden=16", "eval.overlays=2", "threads=1", "device=cpu"]


def _cfg(overrides):
    with initialize_config_module("landmark_ambiguity.conf", version_base="1.3"):
        return compose("train", overrides=TINY + overrides)


def test_two_step_fit_then_resume_matches_an_uninterrupted_run(tmp_path):
    a = tmp_path / "a"
    r1 = fit(_cfg(["max_steps=2"]), a)
    assert r1["step"] == 2 and (a / "last.pt").is_file()
    ck = torch.load(a / "last.pt", weights_only=True)
    assert ck["step"] == 2 and ck["epoch"] == 0
    r2 = fit(_cfg([]), a)  # resume=auto
    assert r2["step"] == 4 and r2["search_passes"] == 1
    for name in ("overlays.png", "overlays_occluded.png", "ced.png", "final_metrics.json", "ghcu.pt", "metrics.csv"):
        assert (a / name).is_file(), name
    b = tmp_path / "b"
    fit(_cfg(["resume=null"]), b)
    wa, wb = torch.load(a / "last.pt", weights_only=True), torch.load(b / "last.pt", weights_only=True)
    for key in wa["model"]:
        torch.testing.assert_close(wa["model"][key], wb["model"][key])
    torch.testing.assert_close(wa["labels"], wb["labels"])


def test_every_experiment_composes():
    conf = Path(__file__).resolve().parents[1] / "src" / "landmark_ambiguity" / "conf" / "experiment"
    names = sorted(p.stem for p in conf.glob("*.yaml"))
    assert len(names) >= 4
    for name in names:
        with initialize_config_module("landmark_ambiguity.conf", version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={name}"])
        assert cfg.package == "landmark-ambiguity" and cfg.name == name and cfg.data.name != "synthetic"
