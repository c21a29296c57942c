"""The AL loop: bookkeeping, reproducibility per seed, exact mid-loop resume; data readers on fixtures."""

import json
import pickle

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from gradnorm_al.data import augment, load_dataset
from gradnorm_al.train import fit

TINY = ["data.n_train=120", "data.n_test=40", "data.image_size=16", "model.width=4", "al.init_size=20",
        "al.budget=10", "al.cycles=3", "al.subset=50", "epochs=2", "batch_size=8", "device=cpu",
        "threads=1", "gradnorm.chunk_size=16"]


def _cfg(*overrides):
    with initialize_config_module(config_module="gradnorm_al.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, *overrides])


def _history(run_dir):
    return [json.loads(line) for line in (run_dir / "selections.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    result = fit(_cfg("strategy=entropy_gradnorm"), run_dir)
    return run_dir, result


def test_loop_bookkeeping(full_run):
    run_dir, result = full_run
    hist = _history(run_dir)
    assert [h["cycle"] for h in hist] == [0, 1, 2]
    assert [h["n_labelled"] for h in hist] == [20, 30, 40]  # init + k * budget
    assert [len(h["selected"]) for h in hist] == [10, 10, 0]  # nothing selected after the last cycle
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    picked = hist[0]["selected"] + hist[1]["selected"]
    assert len(set(picked)) == 20 and all(0 <= i < 120 for i in picked)
    from gradnorm_al.train import initial_pool

    init = initial_pool(120, 20, 0, 0)
    assert not set(init) & set(picked)  # never re-selects a labelled index
    assert result["cycles_done"] == 3 and not result["stopped_early"]
    assert ckpt["al_state"]["trial"] == 1 and ckpt["al_state"]["labelled"] is None
    assert (run_dir / "al_curve.png").is_file() and (run_dir / "al_curve.csv").is_file()


def test_interrupted_run_resumes_mid_loop_identically(full_run, tmp_path):
    run_dir, _ = full_run
    # cycle 0 has 3 batches/epoch x 2 epochs = 6 steps; stop mid-epoch in cycle 1 (after the first selection)
    part = fit(_cfg("strategy=entropy_gradnorm", "max_steps=8"), tmp_path)
    assert part["stopped_early"] and part["step"] == 8
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (ck["al_state"]["cycle"], ck["al_state"]["epoch"], ck["al_state"]["epoch_step"]) == (1, 0, 2)
    rest = fit(_cfg("strategy=entropy_gradnorm"), tmp_path)  # resume=auto picks up last.pt
    assert not rest["stopped_early"]
    assert _history(tmp_path) == [{**h, "select_seconds": pytest.approx(h["select_seconds"], abs=1e9)}
                                  for h in _history(run_dir)]
    a = torch.load(run_dir / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "last.pt", weights_only=True)
    assert a["step"] == b["step"]
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=0)


def test_resume_from_a_cycle_boundary_is_identical(full_run, tmp_path):
    run_dir, _ = full_run
    fit(_cfg("strategy=entropy_gradnorm", "max_steps=6"), tmp_path)  # ends exactly at cycle 0's last step
    fit(_cfg("strategy=entropy_gradnorm"), tmp_path)
    assert [h["selected"] for h in _history(tmp_path)] == [h["selected"] for h in _history(run_dir)]
    assert [h["test_acc"] for h in _history(tmp_path)] == [h["test_acc"] for h in _history(run_dir)]


def test_same_seed_same_selection_other_seed_differs(tmp_path):
    a = fit(_cfg("strategy=random", "al.cycles=2"), tmp_path / "a")
    b = fit(_cfg("strategy=random", "al.cycles=2"), tmp_path / "b")
    c = fit(_cfg("strategy=random", "al.cycles=2", "seed=1"), tmp_path / "c")
    ha, hb, hc = _history(tmp_path / "a"), _history(tmp_path / "b"), _history(tmp_path / "c")
    assert ha[0]["selected"] == hb[0]["selected"] and a["curve"] == b["curve"]
    assert ha[0]["selected"] != hc[0]["selected"]


def _cycle_start_weights(monkeypatch, cfg, run_dir):
    """The model's weights when each cycle's optimiser is created (= the start of each cycle)."""
    import gradnorm_al.train as tr

    starts, real = [], tr.build_optim

    def spy(c, model):
        starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(c, model)

    monkeypatch.setattr(tr, "build_optim", spy)
    fit(cfg, run_dir)
    monkeypatch.setattr(tr, "build_optim", real)
    return starts[1:]  # [0] is the resume probe


def test_reinit_option_restarts_from_the_trial_init(tmp_path, monkeypatch):
    """al.reinit=true: every cycle starts from the trial's initial weights; false (official): each cycle
    continues from the previous cycle's trained weights."""
    r = _cycle_start_weights(monkeypatch, _cfg("strategy=random", "al.cycles=3", "al.reinit=true", "epochs=1"),
                             tmp_path / "r")
    k = _cycle_start_weights(monkeypatch, _cfg("strategy=random", "al.cycles=3", "al.reinit=false", "epochs=1"),
                             tmp_path / "k")
    same = lambda a, b: all(torch.equal(a[n], b[n]) for n in a)  # noqa: E731
    assert len(r) == len(k) == 3 and same(r[0], k[0])
    assert same(r[1], r[0]) and same(r[2], r[0])          # back to the initial weights each cycle
    assert not same(k[1], k[0]) and not same(k[2], k[1])  # continued training


def test_candidate_subset_is_redrawn_every_cycle(tmp_path, monkeypatch):
    """The official SUBSET trick draws a fresh random subset of the unlabelled pool each cycle."""
    import gradnorm_al.train as tr
    from gradnorm_al.train import candidate_subset

    pool = np.arange(1000)
    a, b = candidate_subset(pool, 100, 0, 0, 0), candidate_subset(pool, 100, 0, 0, 1)
    assert len(set(a)) == 100 and set(a) <= set(pool) and len(set(a) & set(b)) < 40  # ~10 expected by chance
    assert np.array_equal(candidate_subset(pool, 100, 0, 0, 0), a)  # seeded
    assert set(candidate_subset(pool, None, 0, 0, 3)) == set(pool)
    seen, real = [], tr.candidate_subset

    def spy(unlabelled, subset, seed, trial, cycle):
        out = real(unlabelled, subset, seed, trial, cycle)
        seen.append((set(unlabelled.tolist()), out.tolist()))
        return out

    monkeypatch.setattr(tr, "candidate_subset", spy)
    fit(_cfg("strategy=random", "al.cycles=3", "epochs=1", "data.n_train=400", "al.subset=40"), tmp_path)
    (u0, c0), (u1, c1) = seen
    assert set(c0) <= u0 and set(c1) <= u1 and len(c0) == len(c1) == 40
    assert len(set(c0) & set(c1)) < 20  # not the previous subset again (30 left of it would survive)


def test_augment_crop_and_flip_are_exact():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, g, padding=0, hflip=False), x)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = augment(x, g1, padding=1, hflip=True)
    oy, ox = torch.randint(0, 3, (2,), generator=g2), torch.randint(0, 3, (2,), generator=g2)
    flip = torch.rand(2, generator=g2) < 0.5
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        ref = padded[i, :, oy[i]:oy[i] + 4, ox[i]:ox[i] + 4]
        assert torch.equal(out[i], ref.flip(2) if flip[i] else ref)


def _write_cifar10(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return entry


def test_cifar_reader_on_a_fixture_in_the_official_format(tmp_path):
    last = _write_cifar10(tmp_path)
    with initialize_config_module(config_module="gradnorm_al.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=cifar10_resnet18", f"data.root={tmp_path}"])
    train, test = load_dataset(cfg.data)
    assert len(train) == 30 and len(test) == 6 and train.num_classes == 10
    # channel-planar rows -> (N, 3, 32, 32): pixel (0, 0) of channel 1 is byte 1024 of the row
    assert test.images[2, 1, 0, 0].item() == last["data"][2, 1024]
    assert test.labels.tolist() == list(range(6))
    assert cfg.al.init_size == 5000 and cfg.al.budget == 2500 and cfg.epochs == 200 and cfg.al.subset == 25000


def test_svhn_reader_on_a_fixture_and_missing_data_error(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [3], [10]], dtype=np.uint8)
    for split in ("train", "test"):
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": X, "y": y})
    with initialize_config_module(config_module="gradnorm_al.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=svhn_resnet18", f"data.root={tmp_path}"])
    train, _ = load_dataset(cfg.data)
    assert train.labels.tolist() == [0, 1, 2, 3, 0]  # digit 0 is stored as 10
    assert train.images[1, 2, 3, 4].item() == X[3, 4, 2, 1]
    from shared.data import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="SVHN not found"):
        load_dataset(compose_missing(tmp_path / "nowhere"))


def compose_missing(root):
    with initialize_config_module(config_module="gradnorm_al.conf", version_base="1.3"):
        return compose(config_name="train", overrides=["data=svhn", f"data.root={root}"]).data
