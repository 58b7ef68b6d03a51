"""§3.1's task for the training engine: multinomial logistic regression over the classes.

`ClassificationTask` is what `vgg train` (and `vggnet.train`) hands the engine
(`vggnet.engine`): cross-entropy on the class scores, validation top-1 / top-5
error from a dense pass at one scale (`vggnet.classification.evaluate.validate`),
top-1 error driving the plateau schedule.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vggnet.engine.task import Task, checkpoint_task

__all__ = ["ClassificationTask"]


class ClassificationTask(Task):
    """§3.1: multinomial logistic regression over the classes; validation top-1 error
    (dense, one scale) drives the plateau schedule.

    Extensions beyond the paper, off by default and taken from the run's settings
    (`configure`): label smoothing of the cross-entropy, and mixup / cutmix of each
    training batch (`torchvision.transforms.v2.MixUp` / `CutMix`; with both, one of
    the two per batch, as torchvision's references do), which turn the targets
    into class probabilities. Validation always reports the plain cross-entropy."""

    name = "classification"
    monitor = "top1_error"
    monitor_label = "top-1 error"
    metrics = ("top1_error", "top5_error")
    units = {"top1_error": "%", "top5_error": "%"}

    def __init__(self, *, label_smoothing: float = 0.0, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        self.label_smoothing = float(label_smoothing)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.num_classes: int | None = None
        self._mix: Callable[..., Any] | None = None

    def configure(self, config: Any) -> None:
        self.label_smoothing = float(config.label_smoothing)
        self.mixup_alpha = float(config.mixup_alpha)
        self.cutmix_alpha = float(config.cutmix_alpha)
        self._mix = None

    def output_size(self, num_classes: int) -> int:
        self.num_classes = num_classes  # mixup/cutmix make targets of this many classes
        return num_classes

    def _mixer(self) -> Callable[..., Any] | None:
        if self._mix is None and (self.mixup_alpha or self.cutmix_alpha):
            from torchvision.transforms import v2

            if self.num_classes is None:
                raise RuntimeError("ClassificationTask: output_size() must be called before batches are mixed")
            mixers = ([v2.MixUp(alpha=self.mixup_alpha, num_classes=self.num_classes)] if self.mixup_alpha else []) \
                + ([v2.CutMix(alpha=self.cutmix_alpha, num_classes=self.num_classes)] if self.cutmix_alpha else [])
            self._mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
        return self._mix

    def inputs_targets(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        mix = self._mixer()
        if mix is not None:
            # (N, 3, h, w), (N,) -> mixed images, (N, classes) target probabilities; the mixing
            # weights draw from the process's RNG, which checkpoints hold (exact resume)
            x, y = mix(x, y)
        return x, y

    def empty_targets(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.long, device=device)

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # class indices, or class probabilities after mixup/cutmix: cross_entropy takes both
        return F.cross_entropy(output.float(), targets, reduction="sum", label_smoothing=self.label_smoothing)

    def settings(self) -> dict[str, Any]:
        # only what differs from the paper's loss, so that plain runs keep their plain settings
        values = {"label_smoothing": self.label_smoothing, "mixup_alpha": self.mixup_alpha,
                  "cutmix_alpha": self.cutmix_alpha}
        return {k: v for k, v in values.items() if v}

    def describe(self) -> str:
        return ""  # the default head: the run's header line names no task

    def summary(self, metrics: Mapping[str, float]) -> str:
        top5 = metrics.get("top5_error")
        return (f"top-1 err {metrics['top1_error']:5.2f}%  "
                f"top-5 err {'  n/a' if top5 is None else f'{top5:5.2f}%'}")  # n/a: 5 classes or fewer

    def validate(self, model: nn.Module, dataset: Any, *, preprocessing: Any, scale: int, device: torch.device,
                 batch_size: int, workers: int, amp: str) -> dict[str, float]:
        from vggnet.classification.evaluate import validate

        return validate(model, dataset, preprocessing=preprocessing, scale=scale, device=device,
                        batch_size=batch_size, workers=workers, amp=amp)

    def check_checkpoint(self, ckpt: Mapping[str, Any], path: str, *, purpose: str) -> None:
        from vggnet.errors import CheckpointError

        theirs = checkpoint_task(ckpt)
        if theirs != self.name:
            what = "resume it with its own command" if purpose == "resume" else "start from a classification net"
            raise CheckpointError(f"{path} is a {theirs} checkpoint, not a classification net; {what}")
