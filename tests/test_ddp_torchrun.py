"""The DDP helpers in a real 2-process torchrun run on CPU (gloo). Not skipped: CI runs it."""

import json
import subprocess
import sys
import textwrap


def test_ddp_helpers_two_process_torchrun(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import json, torch
        from shared.runtime import (barrier, cleanup_distributed, get_dist_info, init_distributed,
                                    is_main_process, reduce_metrics, all_reduce_sum, resolve_device)
        info = init_distributed(resolve_device("cpu"))
        assert info.world_size == 2 and info.enabled
        # uneven sample counts per rank: rank 0 saw 3 samples with loss sum 3, rank 1 saw 1 with loss 5
        sums = {{"loss": 3.0 if info.rank == 0 else 5.0}}
        count = 3 if info.rank == 0 else 1
        m = reduce_metrics(sums, count)
        total = all_reduce_sum(torch.tensor([info.rank + 1.0])).item()
        barrier()
        if is_main_process():
            with open({str(tmp_path / 'out.json')!r}, "w") as f:
                json.dump({{"loss": m["loss"], "total": total, "world": info.world_size}}, f)
        else:
            open({str(tmp_path / 'rank1_ran')!r}, "w").close()
        cleanup_distributed()
        assert get_dist_info().world_size == 1
    """))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == {"loss": 2.0, "total": 3.0, "world": 2}  # (3 + 5) / (3 + 1) = 2
    assert (tmp_path / "rank1_ran").exists()


def test_ddp_resume_restores_each_ranks_own_rng(tmp_path):
    """After a resume every rank continues its own random stream: the numbers each rank draws equal those of
    an uninterrupted run, and the two ranks draw different numbers (rank 0's state is not broadcast)."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, torch
        from shared.runtime import (cleanup_distributed, init_distributed, maybe_resume, resolve_device,
                                    save_training_state, seed_everything)
        mode = sys.argv[1]
        info = init_distributed(resolve_device("cpu"))
        seed_everything(0, info.rank)
        model = torch.nn.Linear(2, 2)
        ckpt_dir = {str(tmp_path)!r}
        if mode == "uninterrupted":
            torch.rand(4)  # the steps before the checkpoint
            save_training_state(ckpt_dir + "/last.pt", model=model, step=3, epoch=0, cfg={{"seed": 0}})
        else:  # a fresh process: different state until the resume restores this rank's own
            torch.rand(1000)
            maybe_resume("auto", ckpt_dir, model)
        draws = torch.rand(3).tolist()
        with open(ckpt_dir + f"/{{mode}}_rank{{info.rank}}.json", "w") as f:
            json.dump(draws, f)
        cleanup_distributed()
    """))
    for mode in ("uninterrupted", "resumed"):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               str(script), mode], capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    read = lambda mode, r: json.loads((tmp_path / f"{mode}_rank{r}.json").read_text())  # noqa: E731
    for r in (0, 1):
        assert read("resumed", r) == read("uninterrupted", r)
    assert read("resumed", 0) != read("resumed", 1)


def test_hydra_main_destroys_the_process_group_when_the_task_ends(tmp_path):
    """Every package's train entry point (shared.cli.hydra_main) tears down the process group the task
    started (after a barrier), so no rank leaves gloo's threads to interpreter shutdown."""
    import importlib.util
    import os
    from pathlib import Path

    # the toy Hydra app of the foundation tests (pytest imports test files by path: load it the same way)
    spec = importlib.util.spec_from_file_location("_foundation", Path(__file__).with_name("test_foundation.py"))
    foundation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(foundation)
    _app = foundation._app

    app = _app(tmp_path, """
        import torch
        import torch.distributed as dist
        from shared.runtime import all_reduce_sum
        ctx = start_run(cfg, hydra_run_dir())
        assert dist.is_initialized() and ctx.dist.world_size == 2
        all_reduce_sum(torch.ones(1))
    """)
    app.write_text(app.read_text() + textwrap.dedent(f"""
        import os
        import torch.distributed as dist
        with open(os.path.join({str(tmp_path)!r}, "rank" + os.environ["RANK"]), "w") as f:
            f.write(str(dist.is_initialized()))
    """))
    env = {**os.environ, "REPRO_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(app), "device=cpu"], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["False", "False"]
