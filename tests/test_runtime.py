"""Runtime helpers: checkpoints, seeding, device, loaders, logging."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from shared.errors import ConfigError
from shared.runtime import (
    CheckpointError,
    CSVLogger,
    Progress,
    epoch_loader,
    find_resume,
    load_checkpoint,
    resolve_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


def test_checkpoint_round_trip_and_atomic(tmp_path):
    p = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.arange(3.0)}, "step": 7, "config": {"lr": 0.1}}, p)
    ck = load_checkpoint(p)
    assert ck["step"] == 7 and torch.equal(ck["model"]["w"], torch.arange(3.0))
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_checkpoint_killed_mid_write_keeps_previous(tmp_path):
    """A process SIGKILLed while writing the new checkpoint leaves the old one loadable."""
    p = tmp_path / "last.pt"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from shared.runtime import save_checkpoint
        save_checkpoint({{"step": 1, "w": torch.ones(4)}}, {str(p)!r})
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            f.write(b"PK\\x03\\x04 partial bytes of a big checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        save_checkpoint({{"step": 2, "w": torch.zeros(4)}}, {str(p)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    ck = load_checkpoint(p)
    assert ck["step"] == 1 and torch.equal(ck["w"], torch.ones(4))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_refuses_pickled_code(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Evil()}, p)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(p)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)
    p = tmp_path / "a.pt"
    save_checkpoint({"model_args": {"arch": "resnet18", "num_classes": 10}}, p)
    with pytest.raises(CheckpointError, match="from another model: arch='resnet18'"):
        load_checkpoint(p, expect={"arch": "resnet50"})
    assert load_checkpoint(p, expect={"arch": "resnet18"})["model_args"]["num_classes"] == 10


def test_find_resume(tmp_path):
    assert find_resume("auto", tmp_path) is None
    assert find_resume(None, tmp_path) is None
    (tmp_path / "last.pt").write_bytes(b"x")
    assert find_resume("auto", tmp_path) == tmp_path / "last.pt"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        find_resume(str(tmp_path / "nope.pt"), tmp_path)


def _tiny_run(seed):
    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_seeded_runs_are_identical():
    assert torch.equal(_tiny_run(3), _tiny_run(3))
    assert not torch.equal(_tiny_run(3), _tiny_run(4))
    assert seed_everything(10, rank=3) == 13


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    seed_everything(0)
    state = rng_state()
    save_checkpoint({"rng": state}, tmp_path / "r.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="is not a device; use one of auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_epoch_loader_order_and_skip():
    ds = torch.utils.data.TensorDataset(torch.arange(20))
    order = lambda **kw: torch.cat([b[0] for b in epoch_loader(ds, 4, shuffle=True, seed=1, **kw)]).tolist()
    assert order(epoch=0) == order(epoch=0)
    assert order(epoch=0) != order(epoch=1)
    assert sorted(order(epoch=2)) == list(range(20))
    assert order(epoch=2, skip_batches=2) == order(epoch=2)[8:]


def test_csv_logger_extends_header(tmp_path):
    log = CSVLogger(tmp_path / "metrics.csv")
    log.log(step=1, loss=0.5)
    log.log(step=2, loss=0.25, acc=50.0)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines == ["step,loss,acc", "1,0.5,", "2,0.25,50"]
    log2 = CSVLogger(tmp_path / "metrics.csv")  # resume keeps the header
    log2.log(step=3, loss=0.1, acc=60.0)
    log2.truncate_after("step", 2)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[-1] == "2,0.25,50"


def test_progress_lines_have_no_carriage_returns(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="repro")
    p = Progress(total=3, desc="epoch 1/1", interval=0.0)
    for _ in p(range(3)):
        p.postfix["loss"] = 1.5
    text = caplog.text
    assert "\r" not in text and "[3/3] 100%" in text and "eta" in text and "loss=1.5" in text


def test_training_state_round_trips_with_weights_only(tmp_path):
    """Everything `save_training_state` writes must load with weights_only=True (plain types only)."""
    from shared.runtime import maybe_resume, save_training_state

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    save_training_state(tmp_path / "last.pt", model=model, optimizer=opt, scheduler=sched, step=5, epoch=1,
                        cfg={"lr": 0.1}, model_args={"arch": "linear"})
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, 10)
    ck = maybe_resume("auto", tmp_path, model2, opt2, sched2, expect={"arch": "linear"})
    assert ck["step"] == 5 and ck["epoch"] == 1 and ck["versions"]["torch"] == str(torch.__version__)
    assert torch.equal(model.weight, model2.weight) and sched2.last_epoch == 1
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
