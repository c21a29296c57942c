"""torchrun: each cycle trains under DDP and the pool's scoring is sharded over the ranks and gathered, so
every rank selects exactly what one process selects from the same model; a killed DDP run resumes exactly."""

import json
import os
import subprocess
import sys
import textwrap

import torch

from gradnorm_al import build_model, select

STRATEGIES = ["entropy_gradnorm", "egl", "entropy", "margin", "bald", "coreset", "random"]


def _torchrun(args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _pool():
    torch.manual_seed(0)
    model = build_model("small_cnn", 5, width=4, dropout=0.3)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 8, 8))  # non-trivial BatchNorm statistics
    model.eval()
    return model, torch.randn(37, 3, 8, 8), torch.randn(6, 3, 8, 8)  # 37: shards of unequal size


def test_sharded_selection_equals_one_process(tmp_path):
    model, pool, labelled = _pool()
    torch.save({"model": model.state_dict(), "pool": pool, "labelled": labelled}, tmp_path / "in.pt")
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import json, torch
        import torch.distributed as dist
        from gradnorm_al import build_model, select
        dist.init_process_group("gloo")
        torch.set_num_threads(1)
        d = torch.load({str(tmp_path / 'in.pt')!r}, weights_only=True)
        model = build_model("small_cnn", 5, width=4, dropout=0.3)
        model.load_state_dict(d["model"])
        model.eval()
        out = {{s: select(model, d["pool"], 9, s, labelled=d["labelled"], seed=3, batch_size=8, chunk_size=5,
                          mc_samples=4).tolist() for s in {STRATEGIES!r}}}
        with open({str(tmp_path)!r} + f"/rank{{dist.get_rank()}}.json", "w") as f:
            json.dump(out, f)
        dist.destroy_process_group()
    """))
    r = _torchrun([str(script)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    torch.set_num_threads(1)
    single = {s: select(model, pool, 9, s, labelled=labelled, seed=3, batch_size=8, chunk_size=5,
                        mc_samples=4).tolist() for s in STRATEGIES}
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == single


def _fit(tmp_path, name, *extra, env=None):
    overrides = ["data.n_train=96", "data.n_test=32", "data.image_size=16", "model.width=4", "al.init_size=24",
                 "al.budget=8", "al.cycles=2", "al.subset=40", "epochs=2", "batch_size=6", "gradnorm.chunk_size=8",
                 "device=cpu", "threads=1", f"name={name}", *extra]
    return _torchrun(["-m", "gradnorm_al.train", *overrides], env={"REPRO_RUNS": str(tmp_path), **(env or {})})


def test_torchrun_al_loop_trains_under_ddp_and_resumes_exactly(tmp_path):
    full = _fit(tmp_path, "full")
    assert full.returncode == 0, full.stdout[-2000:] + full.stderr[-3000:]
    run = tmp_path / "gradnorm-al"
    assert "world size 2" in (run / "full" / "train.log").read_text()
    part = _fit(tmp_path, "resumed", "max_steps=5")  # 24 labelled / 2 ranks / 6 = 2 steps per epoch: mid cycle 1
    assert part.returncode == 0, part.stderr[-3000:]
    ck = torch.load(run / "resumed" / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rng_per_rank"]) == 2 and ck["al_state"]["cycle"] == 1
    rest = _fit(tmp_path, "resumed")
    assert rest.returncode == 0, rest.stderr[-3000:]
    hist = lambda n: [json.loads(x) for x in (run / n / "selections.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = hist("full"), hist("resumed")
    assert [h["selected"] for h in a] == [h["selected"] for h in b] and len(a[0]["selected"]) == 8
    assert [h["test_acc"] for h in a] == [h["test_acc"] for h in b]
    wa = torch.load(run / "full" / "last.pt", weights_only=True)["model"]
    wb = torch.load(run / "resumed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
