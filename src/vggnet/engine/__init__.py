"""The training engine: one loop for every head (§3.1 training, §3.3 data parallelism, Appendix A's
box regression).

    config.py   settings: `TrainConfig`, validation before any work, the flags
    task.py     what differs between heads: the `Task` interface (the tasks live with their parts:
                `vggnet.classification`, `vggnet.localisation`)
    data.py     datasets, seeded augmentation, the training loader
    state.py    RNGs, checkpoints to resume, --init from:CKPT, signals, optimizer
    outputs.py  console and train.log, tqdm, metrics.csv, config.yaml, TensorBoard, curves.png
    setup.py    `TrainerSetup`: what a run needs before its first step (execution, decoding, data,
                statistics, model and optimizer, resume state)
    loop.py     `Trainer` (the loop, checkpoints, the run) and `train(config, task)`

One process:

    vgg train --config-file configs/quickstart.yaml

Several processes, one machine or many (see `vggnet.distributed`):

    torchrun --standalone --nproc-per-node=8 -m vggnet.cli train --config-file configs/s256.yaml
"""

from vggnet.engine.config import RESUME_MUST_MATCH, TrainConfig, add_train_arguments, parse_init
from vggnet.engine.loop import Trainer, TrainingError, train
from vggnet.engine.outputs import plot_curves
from vggnet.engine.state import find_checkpoints, init_from, make_optimizer, resolve_execution
from vggnet.engine.task import Task, checkpoint_task

__all__ = ["TrainConfig", "Task", "checkpoint_task", "Trainer", "TrainingError", "train", "add_train_arguments",
           "parse_init", "RESUME_MUST_MATCH", "find_checkpoints", "init_from", "make_optimizer", "resolve_execution",
           "plot_curves"]
