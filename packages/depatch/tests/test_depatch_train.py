"""fit(): 2 steps + resume equals an uninterrupted run; one-line errors for every bad value before any
data is built; the paper recipes' official flags; the lr schedules (official per-epoch stepping with its
one-epoch lag, per-iteration, cool-down); the repeated-augmentation sampler; drop-path warm-up; amp;
a 2-process torchrun fit that is interrupted and resumed."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_module

torch.set_num_threads(1)

from depatch.data import RepeatedAugSampler
from depatch.train import fit, lr_factor, validate
from shared.errors import CheckpointError, ConfigError

TINY = ["data.n_train=48", "data.n_test=16", "data.image_size=32", "batch_size=8", "eval_batch_size=16",
        "epochs=2", "device=cpu", "figure.num_images=0", "log_interval_s=1000", "threads=1"]


def _cfg(*overrides, tiny=True):
    with initialize_config_module(config_module="depatch.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*(TINY if tiny else []), *overrides])


def _weights(path):
    return torch.load(path / "last.pt", weights_only=True)["model"]


def test_fit_two_steps_then_resume_equals_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    full = fit(_cfg("max_steps=8"), a)  # 6 batches per epoch: crosses an epoch end
    first = fit(_cfg("max_steps=2", "figure.num_images=2"), b)
    assert first["step"] == 2
    ck = torch.load(b / "last.pt", weights_only=True)
    assert ck["step"] == 2 and ck["epoch"] == 0  # stopped inside the first epoch
    for f in ("config.yaml", "metrics.csv", "env.json", "final_metrics.json", "patch_rectangles.png"):
        assert (b / f).is_file(), f
    resumed = fit(_cfg("max_steps=8", "resume=auto"), b)
    assert resumed["step"] == 8 and full["step"] == 8
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    assert resumed["acc1"] == full["acc1"]
    steps = [line.split(",")[1] for line in (b / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "6", "8"]  # the stop at 2, the epoch end at 6, the stop at 8: no duplicates
    # the DePatch predictor has moved away from its zero init, and box stats are reported
    assert wa["patch_embed2.offset_predictor.weight"].abs().sum() > 0
    assert 0 < first["s2_shift"] <= 2 ** 0.5 and 0 <= first["s2_size"] <= 2


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    out = fit(_cfg("model=pvt_mini", "epochs=1"), tmp_path)
    assert out["step"] == 6 and 0 <= out["acc1"] <= 100
    assert not (tmp_path / "patch_rectangles.png").exists()  # PVT has no DePatch to draw
    with pytest.raises(CheckpointError, match="arch='pvt_mini' there"):
        fit(_cfg("model=dpt_mini", "epochs=1"), tmp_path)
    with pytest.raises(CheckpointError, match="depatch_stages"):
        fit(_cfg("model=pvt_mini", "model.depatch_stages=[4]", "epochs=1"), tmp_path)


# every bad value is refused by validate() (before any data or model), naming the key
BAD = [
    (["task=segmentation"], "task='segmentation' is not a known name"),
    (["model.arch=dpt_tinny"], "model.arch='dpt_tinny' is not a known name (did you mean 'dpt_tiny'?)"),
    (["data.kind=cifar"], "data.kind='cifar' is not a known name"),
    (["task=detection"], "data.kind='synthetic' is not a known name"),
    (["optim.schedule=linear"], "optim.schedule='linear'"),
    (["optim.step_per=batch"], "optim.step_per='batch'"),
    (["epochs=-1"], "epochs=-1 is out of range"),
    (["batch_size=0"], "batch_size=0 is out of range"),
    (["optim.lr=0"], "optim.lr=0 is out of range"),
    (["optim.cooldown_epochs=-2"], "optim.cooldown_epochs=-2"),
    (["optim.label_smoothing=1.0"], "optim.label_smoothing=1.0"),
    (["model.num_points=1"], "model.num_points=1 is out of range"),
    (["model.drop_path_rate=1.5"], "model.drop_path_rate=1.5"),
    (["model.depatch_stages=[1,2]"], "model.depatch_stages=[1, 2] names stage 1"),
    (["data.image_size=16"], "data.image_size=16 is out of range"),
    (["data.num_classes=1"], "data.num_classes=1 is out of range"),
    (["data.repeated_aug=-1"], "data.repeated_aug=-1"),
    (["data.scale_range=[0.5,0.2]"], "data.scale_range=[0.5, 0.2]"),
    (["figure.num_images=2", "figure.stage=1"], "figure.stage=1 has no DePatch"),
    (["weights=/no/such/file.pth"], "weights='/no/such/file.pth' is not a file"),
    (["data=parts", "data.n_train=0"], "data.n_train=0 is out of range"),
    (["data=parts", "data.colours=grey"], "data.colours='grey'"),
    (["model=pvt_mini", "model.freeze_boxes=true"], "model.freeze_boxes=true needs a classifier with DePatch"),
    (["data=parts", "data.glyph_set=letters"], "data.glyph_set='letters'"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(_cfg(*overrides))
    assert message in str(err.value) and ";" in str(err.value) and "\n" not in str(err.value)


def test_detection_recipes_refuse_to_train_from_scratch_silently(tmp_path):
    for exp in ("coco_retinanet_dpt_tiny_1x", "coco_retinanet_dpt_medium_ms3x"):
        cfg = _cfg(f"experiment={exp}", tiny=False)
        with pytest.raises(ConfigError, match="task=detection with weights=null would train the dpt_.* backbone from "
                                              "scratch.*pass weights=/path/to/dpt_.*.pth .* or weights=none"):
            validate(cfg)
        validate(_cfg(f"experiment={exp}", "weights=none", tiny=False))  # explicit: accepted
    ck = tmp_path / "dpt_tiny.pth"
    ck.write_bytes(b"")
    validate(_cfg("experiment=coco_retinanet_dpt_tiny_1x", f"weights={ck}", tiny=False))


def test_every_experiment_composes_with_the_official_settings():
    cfg = _cfg("experiment=imagenet_dpt_tiny", tiny=False)
    validate(cfg)
    assert cfg.model.arch == "dpt_tiny" and cfg.optim.lr == 5e-4 and cfg.optim.lr_ref_batch == 512
    assert cfg.epochs == 300 and cfg.data.kind == "imagenet" and cfg.optim.label_smoothing == 0.1 and cfg.amp is True
    # the official trainer: repeated augmentation x3, lr stepped per epoch, no cool-down epochs in effect,
    # DPT without drop path for its first 100 epochs
    assert cfg.data.repeated_aug == 3 and cfg.optim.step_per == "epoch" and cfg.optim.cooldown_epochs == 0
    assert cfg.model.drop_path_warmup_epochs == 100 and cfg.model.drop_path_rate == 0.1
    assert _cfg("experiment=imagenet_pvt_tiny", tiny=False).model.drop_path_warmup_epochs == 0  # pvt_tiny: none
    cfg = _cfg("experiment=coco_retinanet_dpt_medium_ms3x", tiny=False)
    assert cfg.task == "detection" and list(cfg.optim.milestones) == [28, 34] and list(cfg.data.min_size) == [
        640, 672, 704, 736, 768, 800]
    cfg = _cfg("data=parts", tiny=False)
    assert cfg.data.kind == "parts" and cfg.data.num_classes == 4 and cfg.data.colours == "fixed"


def test_lr_schedule_known_values():
    o = _cfg("optim=detection_1x").optim
    # warm-up 500 iterations from 0.001 x lr, then x0.1 at epochs 8 and 11 (100 steps per epoch)
    assert lr_factor(0, o, 100, 12, 1e-4) == pytest.approx(1e-3, abs=1e-12)
    assert lr_factor(250, o, 100, 12, 1e-4) == pytest.approx(1e-3 + 0.999 * 0.5, abs=1e-12)
    assert lr_factor(500, o, 100, 12, 1e-4) == pytest.approx(1.0, abs=1e-12)
    assert lr_factor(799, o, 100, 12, 1e-4) == pytest.approx(1.0, abs=1e-12)
    assert lr_factor(800, o, 100, 12, 1e-4) == pytest.approx(0.1, abs=1e-12)
    assert lr_factor(1100, o, 100, 12, 1e-4) == pytest.approx(0.01, abs=1e-12)


def test_official_per_epoch_schedule_lags_one_epoch_and_cools_down():
    """timm's CosineLRScheduler(t_initial=epochs, warmup_t=5, warmup_lr_init=1e-6, lr_min=1e-5) stepped as
    the official trainer does: constant within an epoch, scheduler.step(epoch) after each epoch."""
    o = _cfg("optim=deit").optim
    base, spe, epochs = 1e-3, 10, 300

    def timm(t):
        if t < 5:
            return 1e-6 + t * (base - 1e-6) / 5
        if t >= epochs:
            return 1e-5
        return 1e-5 + 0.5 * (base - 1e-5) * (1 + math.cos(math.pi * t / epochs))

    for epoch in (0, 1, 2, 5, 6, 150, 299, 300, 305):
        want = timm(max(epoch - 1, 0))  # the lr epoch e trains at
        for step in (epoch * spe, epoch * spe + spe - 1):
            assert lr_factor(step, o, spe, epochs, base) * base == pytest.approx(want, rel=1e-12), (epoch, step)
    assert lr_factor(0, o, spe, epochs, base) == lr_factor(spe, o, spe, epochs, base)  # epochs 0 and 1: warmup_lr
    it = _cfg("optim=deit", "optim.step_per=iter").optim
    # per iteration: warm-up 5 epochs = 50 steps, then the cosine at fractional epochs, then min_lr
    assert lr_factor(25, it, spe, epochs, base) * base == pytest.approx(1e-6 + 0.5 * (base - 1e-6))
    t = 1234 / spe
    assert lr_factor(1234, it, spe, epochs, base) * base == pytest.approx(
        1e-5 + 0.5 * (base - 1e-5) * (1 + math.cos(math.pi * t / epochs)))
    assert lr_factor(3005, it, spe, epochs, base) * base == pytest.approx(1e-5)  # cool-down epochs


def test_cooldown_epochs_are_trained_after_the_schedule(tmp_path):
    out = fit(_cfg("optim.cooldown_epochs=1", "epochs=1"), tmp_path)
    assert out["step"] == 12  # 1 schedule epoch + 1 cool-down epoch of 6 steps
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    lr = [float(r.split(",")[rows[0].split(",").index("lr")]) for r in rows[1:]]
    assert lr[-1] == pytest.approx(1e-5)  # the cool-down runs at min_lr


def _official_ra(n, world, rank, epoch, seed=0, repeats=3):
    """The official RASampler's index list, written out with plain Python lists."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g).tolist()
    rep = [i for i in order for _ in range(repeats)]
    per_rank = -(-n * repeats // world)
    rep += rep[: per_rank * world - len(rep)]
    mine = rep[rank:per_rank * world:world]
    return mine[: (n // 256 * 256) // world]


def test_repeated_augmentation_sampler_matches_the_official_one():
    for n, world in ((600, 1), (600, 2), (1000, 3)):
        for rank in range(world):
            s = RepeatedAugSampler(n, world, rank, repeats=3, seed=0, epoch=4)
            assert list(s) == _official_ra(n, world, rank, 4) and len(s) == (n // 256 * 256) // world
    # the three copies of an image go to three different ranks, and the epoch reshuffles
    ranks = [RepeatedAugSampler(512, 3, r, epoch=1).indices() for r in range(3)]
    first = ranks[0][0]
    assert first == ranks[1][0] == ranks[2][0]
    assert RepeatedAugSampler(512, epoch=1).indices() != RepeatedAugSampler(512, epoch=2).indices()
    one = RepeatedAugSampler(512, epoch=0).indices()
    assert one[:3] == [one[0]] * 3 and len(set(one)) == 512 // 3 + 1  # one rank: 3 copies in a row
    assert list(RepeatedAugSampler(512, epoch=0, skip=10)) == one[10:]  # mid-epoch resume


def test_repeated_augmentation_in_fit_and_too_little_data_is_a_clear_error(tmp_path):
    out = fit(_cfg("data.repeated_aug=3", "data.n_train=256", "batch_size=64", "epochs=1"), tmp_path / "ra")
    assert out["step"] == 4  # 256 images per epoch (of 86 distinct ones), batches of 64
    with pytest.raises(ConfigError, match="repeated augmentation"):
        fit(_cfg("data.repeated_aug=3"), tmp_path / "small")  # 48 images: no multiple of 256


def test_drop_path_warmup_keeps_stochastic_depth_off(tmp_path):
    plain = fit(_cfg("max_steps=3"), tmp_path / "plain")
    warm = fit(_cfg("max_steps=3", "model.drop_path_rate=0.5", "model.drop_path_warmup_epochs=1"), tmp_path / "warm")
    on = fit(_cfg("max_steps=3", "model.drop_path_rate=0.5"), tmp_path / "on")
    assert warm["acc1"] == plain["acc1"] and warm["train_loss"] == plain["train_loss"]
    assert all(torch.equal(a, b) for a, b in zip(_weights(tmp_path / "plain").values(), _weights(tmp_path / "warm").values()))
    assert on["train_loss"] != plain["train_loss"]


def test_amp_bf16_on_cpu_trains_and_the_depatch_sampling_stays_float32(tmp_path):
    out = fit(_cfg("amp=bf16", "max_steps=2"), tmp_path)
    assert out["step"] == 2 and math.isfinite(out["train_loss"])
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["model"]["patch_embed2.output_proj.weight"].dtype == torch.float32 and "amp" in ck


@pytest.mark.slow
def test_torchrun_two_processes_resume_equals_uninterrupted(tmp_path):
    """2 CPU processes (gloo): stop at step 2, resume to step 5, compare with a straight run to step 5."""
    env = dict(os.environ, REPRO_RUNS=str(tmp_path), OMP_NUM_THREADS="1")

    def torchrun(name, steps):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "depatch.train", f"name={name}", *TINY, f"max_steps={steps}", "model.drop_path_rate=0.2"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return tmp_path / "depatch" / name

    run = torchrun("ddp", 2)
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["step"] == 2 and ck["world_size"] == 2  # 48 samples / 2 ranks / batch 8 = 3 steps per epoch
    assert not torch.equal(ck["rng_per_rank"][0]["torch"], ck["rng_per_rank"][1]["torch"])  # each rank its own stream
    torchrun("ddp", 5)
    assert "resumed from" in (run / "train.log").read_text()
    ref = torchrun("ref", 5)
    a, b = _weights(run), _weights(ref)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed 2-process run differs from the uninterrupted one"
    assert json.loads((run / "final_metrics.json").read_text())["acc1"] == json.loads(
        (ref / "final_metrics.json").read_text())["acc1"]


def test_freeze_boxes_ablation_keeps_every_box_at_the_fixed_patch(tmp_path):
    """model.freeze_boxes: the box predictor and size bias keep their initial values while the rest trains;
    without the flag the same run moves them."""
    from depatch.depatch import DEFAULT_SIZE_BIAS

    fit(_cfg("max_steps=3", "model.freeze_boxes=true"), tmp_path / "frozen")
    fit(_cfg("max_steps=3"), tmp_path / "learned")
    frozen, learned = _weights(tmp_path / "frozen"), _weights(tmp_path / "learned")
    for s in (2, 3, 4):
        w, b = f"patch_embed{s}.offset_predictor.weight", f"patch_embed{s}.box_coder.wh_bias"
        assert (frozen[w] == 0).all() and (learned[w] != 0).any()
        assert torch.equal(frozen[b], torch.full((2,), DEFAULT_SIZE_BIAS)) and not torch.equal(learned[b], frozen[b])
    # the optimiser holds everything else (3 predictor weights and 3 size biases fewer), and that trained
    opt = [torch.load(tmp_path / r / "last.pt", weights_only=True)["optimizer"] for r in ("frozen", "learned")]
    counts = [sum(len(g["params"]) for g in o["param_groups"]) for o in opt]
    assert counts[0] == counts[1] - 6 and len(opt[0]["state"]) == counts[0]
