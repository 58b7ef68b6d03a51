"""The engine's task interface: what differs between heads.

The training engine (`vggnet.engine`) owns everything that makes a run
trustworthy — global batch and accumulation, DDP, AMP, exact resume, signals,
NaN stop, atomic checkpoints, logs and plots, the plateau schedule and the
choice of `best.pt` — and asks a `Task` only what differs between, say,
classification (§3.1) and box regression (Appendix A):

- what the net's last layer outputs (`output_size`),
- how a training sample becomes tensors (`train_transform`, `collate`) and a
  batch becomes inputs and targets (`inputs_targets`),
- the loss (`loss`, summed over the micro-batch: the engine divides),
- the validation metrics and which one drives the schedule (`validate`,
  `monitor`, `lower_is_better`, `metrics`),
- the task's own settings, stored in checkpoints and compared on resume
  (`settings`), and what it refuses to start from (`check_checkpoint`).

A task is a small object; the engine knows none: `vggnet.classification.ClassificationTask`
is the paper's §3.1 (what `vgg train` and `vggnet.train` run) and
`vggnet.localisation.LocalisationTask` Appendix A's box regression. Another head
gets everything else for free:

    result = vggnet.engine.train(config, task=MyTask())
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

__all__ = ["Task", "checkpoint_task"]


class Task:
    """Base class of a training task. Subclasses override what differs."""

    #: short name, stored in checkpoints as `meta["task"]` and in `config.yaml`
    name: str = "task"
    #: the validation metric (a key of `validate`'s result) that drives the lr
    #: plateau schedule and the choice of best.pt
    monitor: str = "loss"
    lower_is_better: bool = True
    #: validation metrics besides "loss", written as `val_<name>` columns of
    #: metrics.csv, TensorBoard scalars and the epoch log line, in this order
    metrics: tuple[str, ...] = ()
    #: units of each metric in the epoch log line ("%" for errors in percent)
    units: Mapping[str, str] = {}
    #: the monitor's name in the log
    monitor_label: str = "loss"
    #: the datasets must carry boxes (`vggnet.data` items `(image, label, boxes)`)
    needs_boxes: bool = False

    # ----------------------------------------------------------------- model

    def output_size(self, num_classes: int) -> int:
        """Outputs of the last FC layer for a dataset of `num_classes` classes."""
        return num_classes

    # ----------------------------------------------------------------- data

    def train_transform(self, *, crop_size: int, scale: Any, preprocessing: Any, pca: Any, pca_std: float,
                        hflip: bool = True, auto_augment: str = "none") -> Callable[..., Any]:
        """The training transform of a dataset item (`transform(image)` or `transform(image, boxes)`)."""
        from vggnet.data.transforms import TrainPreset

        extra = {} if auto_augment == "none" else {"auto_augment": auto_augment}
        return TrainPreset(crop_size=crop_size, scale=scale, preprocessing=preprocessing, pca=pca, pca_std=pca_std,
                           hflip=hflip, **extra)

    def collate(self, items: Sequence[Any]) -> Any:
        """Collate dataset items (None for a bad file) into a `vggnet.data.Batch`."""
        from vggnet.data.datasets import collate_skip_bad

        return collate_skip_bad(items)

    def inputs_targets(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, Any]:
        """(images on `device`, targets on `device`) of a non-empty collated batch."""
        raise NotImplementedError

    def empty_targets(self, n: int, device: torch.device) -> Any:
        """Targets for `n` placeholder images (a micro-batch whose files were all bad:
        the engine still runs a zero-weight step so that DDP ranks stay in step)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- loss and metrics

    def loss(self, output: torch.Tensor, targets: Any) -> torch.Tensor:
        """The SUM of the per-image losses of the micro-batch (float32 scalar).

        The engine divides by the images per process per step, so that the
        gradient is that of the mean over the global batch."""
        raise NotImplementedError

    def validate(self, model: nn.Module, dataset: Any, *, preprocessing: Any, scale: int, device: torch.device,
                 batch_size: int, workers: int, amp: str) -> dict[str, float]:
        """Validation after an epoch: a dict with "loss", `monitor` and every name in
        `metrics`; the same numbers on every rank under torch.distributed."""
        raise NotImplementedError

    # ----------------------------------------------------------------- settings and checkpoints

    def configure(self, config: Any) -> None:
        """Take the task's settings from the run's `TrainConfig` (called once, before the net is built).

        The base task has none of its own: the loss settings that only a classifier
        understands (label smoothing, mixup, cutmix) are refused rather than ignored."""
        from vggnet.errors import UserError

        used = [flag for flag, value in (("--label-smoothing", getattr(config, "label_smoothing", 0.0)),
                                         ("--mixup-alpha", getattr(config, "mixup_alpha", 0.0)),
                                         ("--cutmix-alpha", getattr(config, "cutmix_alpha", 0.0))) if value]
        if used:
            raise UserError(f"{', '.join(used)}: a classification setting; the {self.name} task does not use it")

    def settings(self) -> dict[str, Any]:
        """The task's own settings (plain values): saved with the run's settings and
        in its checkpoints; a resume with other values is refused."""
        return {}

    def check_checkpoint(self, ckpt: Mapping[str, Any], path: str, *, purpose: str) -> None:
        """Raise `CheckpointError` when `ckpt` cannot serve this task for `purpose`
        ("resume" or "init"). The default accepts checkpoints of the same task name
        (a checkpoint without `meta["task"]` is a classification net)."""
        from vggnet.errors import CheckpointError

        theirs = checkpoint_task(ckpt)
        if purpose == "resume" and theirs != self.name:
            raise CheckpointError(f"{path} is a {theirs} checkpoint, and this run trains a {self.name} net")

    def describe(self) -> str:
        """One phrase for the run's header line ("" for a task that needs no mention)."""
        return self.name

    def command(self) -> str:
        """The command line that trains this task, with the task's own flags (for "resume with: ...")."""
        return "vgg train"

    def summary(self, metrics: Mapping[str, float]) -> str:
        """The validation metrics in the epoch's log line."""
        return "  ".join(f"{name} {metrics[name]:.4g}{self.units.get(name, '')}" for name in self.metrics)


def checkpoint_task(ckpt: Mapping[str, Any]) -> str:
    """The task a checkpoint was trained for: its `meta["task"]`, or, for a file that does not say,
    what its kind (`vggnet.checkpoint.checkpoint_kind`: outputs against class names) tells."""
    from vggnet.checkpoint import checkpoint_kind

    meta = ckpt.get("meta") or {}
    task = meta.get("task") if isinstance(meta, Mapping) else None
    if task:
        return str(task)
    return "localisation" if checkpoint_kind(ckpt).startswith("localiser") else "classification"
