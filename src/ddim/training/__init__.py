"""Training: checkpoints in, checkpoints out.

    recipe      one `TrainState`, one `train_step`, its `Schedule` (learning rate, EMA) and
                `Objective`, resolved once from the config
    loop        `train`: batches, logging, checkpoints, signals, torchrun, time budgets
    state       where a run starts (fresh, resumed, warm-started) and its checkpoints
    warm_start  a new run from another checkpoint's weights (`--init`)
    resume      what a run does, settled before any work (`plan_run`): a resume restores the
                run's settings, names and records a change, refuses one the run cannot make
    log         progress bar, metrics.jsonl, TensorBoard; the metrics' definitions (`METRICS`)
    run_dir     run folders, their records, and the checkpoint a resume starts from
"""

from ddim.training.loop import load_training_images, train
from ddim.training.recipe import (
    Objective,
    Schedule,
    TrainState,
    ema_update,
    init_training,
    train_step,
)
from ddim.training.run_dir import latest_checkpoint, new_run_dir
from ddim.training.state import start_state

__all__ = [
    "Objective",
    "Schedule",
    "TrainState",
    "ema_update",
    "init_training",
    "latest_checkpoint",
    "load_training_images",
    "new_run_dir",
    "start_state",
    "train",
    "train_step",
]
