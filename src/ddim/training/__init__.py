"""Training: checkpoints in, checkpoints out.

    recipe   one `TrainState`, one `train_step`, the learning-rate and EMA schedules
    loop     `train`: batches, logging, checkpoints, exact resume, signals, torchrun
    log      progress bar, metrics.jsonl, TensorBoard
    run_dir  run folders and the checkpoint a resume starts from
"""

from ddim.training.loop import load_training_images, train
from ddim.training.recipe import (
    TrainState,
    ema_decay,
    ema_update,
    init_training,
    learning_rate,
    train_step,
)
from ddim.training.run_dir import latest_checkpoint, new_run_dir

__all__ = [
    "TrainState",
    "ema_decay",
    "ema_update",
    "init_training",
    "latest_checkpoint",
    "learning_rate",
    "load_training_images",
    "new_run_dir",
    "train",
    "train_step",
]
