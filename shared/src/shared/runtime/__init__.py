"""Runtime helpers: device/AMP, seeding, torchrun/DDP, checkpoints, logging, run set-up."""

from shared.runtime.checkpoint import CheckpointError, find_resume, load_checkpoint, save_checkpoint, versions
from shared.runtime.device import Amp, amp_dtype, autocast, grad_scaler, resolve_device
from shared.runtime.dist import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    get_dist_info,
    init_distributed,
    is_main_process,
    reduce_metrics,
    unwrap,
)
from shared.runtime.logging import (
    CSVLogger,
    Progress,
    environment_report,
    git_sha,
    setup_file_logging,
    write_environment_report,
)
from shared.runtime.run import (
    RunContext,
    check_runtime,
    epoch_loader,
    hydra_run_dir,
    maybe_resume,
    restore_rng,
    runs_root,
    save_training_state,
    start_run,
    to_plain,
    training_state,
)
from shared.runtime.seed import make_generator, rng_state, seed_everything, seed_worker, set_rng_state

__all__ = [name for name in dir() if not name.startswith("_")]
