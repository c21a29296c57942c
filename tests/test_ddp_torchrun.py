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
