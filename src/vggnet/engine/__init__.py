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

from typing import TYPE_CHECKING

from vggnet.lazy import lazy_attributes

# The public names resolve lazily (PEP 562), as in `vggnet` itself: importing one module of this
# package (its flags, for `--help` and argument errors) does not import torch.
_LAZY = {
    'RESUME_MUST_MATCH': 'vggnet.engine.config',
    'TrainConfig': 'vggnet.engine.config',
    'add_train_arguments': 'vggnet.engine.config',
    'parse_init': 'vggnet.engine.config',
    'Trainer': 'vggnet.engine.loop',
    'TrainingError': 'vggnet.engine.loop',
    'train': 'vggnet.engine.loop',
    'plot_curves': 'vggnet.engine.outputs',
    'find_checkpoints': 'vggnet.engine.state',
    'init_from': 'vggnet.engine.state',
    'make_optimizer': 'vggnet.engine.state',
    'resolve_execution': 'vggnet.engine.state',
    'Task': 'vggnet.engine.task',
    'checkpoint_task': 'vggnet.engine.task',
}

__all__ = ["TrainConfig", "Task", "checkpoint_task", "Trainer", "TrainingError", "train", "add_train_arguments",
           "parse_init", "RESUME_MUST_MATCH", "find_checkpoints", "init_from", "make_optimizer", "resolve_execution",
           "plot_curves"]

if TYPE_CHECKING:
    from vggnet.engine.config import RESUME_MUST_MATCH, TrainConfig, add_train_arguments, parse_init
    from vggnet.engine.loop import Trainer, TrainingError, train
    from vggnet.engine.outputs import plot_curves
    from vggnet.engine.state import find_checkpoints, init_from, make_optimizer, resolve_execution
    from vggnet.engine.task import Task, checkpoint_task


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
