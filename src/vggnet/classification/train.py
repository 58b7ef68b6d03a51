"""Training with the paper's protocol (§3.1), data-parallel under torchrun (§3.3).

The defaults are the paper's: multinomial logistic regression (cross-entropy),
mini-batch SGD with batch 256, momentum 0.9, weight decay 5e-4, dropout 0.5 on
FC1/FC2; learning rate 1e-2, divided by 10 when the validation top-1 error stops
improving, three times, and then training stops (or at `--epochs`, 74). The
training input is a random `crop_size` crop of the image rescaled to S (fixed, or
sampled per image from [Smin, Smax]: scale jittering), flipped at random, with
AlexNet's PCA colour shift, minus the training set's mean RGB. Validation after
every epoch is dense (the net applied to the whole image at one scale Q, §3.2).

One process:

    vgg train                                   # synthetic shapes, configuration D
    vgg train --config-file configs/quickstart.yaml
    vgg train --data /data/imagenet --scale 256:512 --init from:runs/s384/best.pt

Several processes (see `vggnet.distributed` for multi-node):

    torchrun --standalone --nproc-per-node=8 -m vggnet.cli train --config-file configs/s256.yaml

Initialisation (`--init`): `glorot` is the default, because plain N(0, 0.01^2)
(`gaussian`, the paper's original) stalls nets deeper than A when they are
trained from scratch; the paper itself notes that Glorot initialisation removes
the need for its pre-training chain. `from:CKPT` starts from a trained net: a
checkpoint of the same configuration gives all its weights (the paper's S=384
from S=256, and multi-scale from S=384); a net A gives its first four conv layers
and its three FC layers to a deeper net, the rest initialised by `--init-rest`
(gaussian, as in the paper).

Checkpoints hold everything needed to continue exactly (model, optimizer,
scheduler, scaler, epoch, step in the epoch, sampler position, every RNG state,
the resolved config, classes and preprocessing) as plain containers, written
atomically; `--resume auto` continues the newest one. SIGTERM/SIGINT finish the
current step, write a checkpoint and exit.

The machinery is `vggnet.engine`; the task here is `ClassificationTask`
(`vggnet.classification.task`), and `vgg train` is `vggnet.classification.cli`.

Reproducibility: the data order comes from (seed, epoch) alone and each image's
augmentation from (seed, epoch, image index) alone, whatever the number of
loader workers or processes; dropout draws from the process's RNG, which is
checkpointed. So with `--workers 0` on a CPU two runs with the same seed give
bitwise identical weights, and so does a run interrupted and resumed.
"""

from __future__ import annotations

from typing import Any, Mapping

from vggnet.classification.task import ClassificationTask
from vggnet.engine import TrainConfig, Task
from vggnet.engine import train as train_task

__all__ = ["train"]


def train(config: TrainConfig | Mapping[str, Any], task: Task | None = None) -> dict[str, Any]:
    """Train a classifier with the settings of `config` (a `TrainConfig` or a mapping of its fields).

    `vggnet.engine.train(config, ClassificationTask())`: see there for what it
    returns. `task` may replace the classification task (a subclass with other
    settings, or another head).
    """
    return train_task(config, task if task is not None else ClassificationTask())
