"""Run outputs: what a person reads during and after a run.

- the console and `train.log` (one logger, rank 0 only, printed above the
  progress bar when there is one);
- the tqdm progress bar on stderr (rank 0, `progress=True`, a terminal only: `vggnet.progress`);
- `metrics.csv`, one row per epoch, rewritten whole from the history so that
  after a resume it matches the checkpoint; a metric that does not apply
  (top-5 error with 5 classes or fewer) is an empty cell;
- `config.yaml`, the resolved settings (`vgg train --config-file` reads it back);
- TensorBoard scalars (optional: `tensorboard` may be missing);
- `curves.png`: loss, validation metrics and learning rate per epoch.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from vggnet.checkpoint import atomic_write
from vggnet.progress import progress_bar

__all__ = ["RunOutputs", "plot_curves", "duration", "metric"]


class RunOutputs:
    """The run folder's human-facing files; every method is a no-op except on the main process."""

    def __init__(self, out: Path, *, is_main: bool) -> None:
        self.out = out
        self.is_main = is_main
        self.bar: Any = None
        self.tb: Any = None

    def log(self, message: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stdout)
        else:
            print(message, flush=True)
        try:
            with open(self.out / "train.log", "a", encoding="utf-8") as f:
                f.write(message + "\n")
        except OSError:
            pass

    # ----------------------------------------------------------------- progress bar

    def open_bar(self, *, total: int, initial: int, desc: str) -> None:
        """A tqdm bar on a terminal only: a file or a CI log would collect its fragments
        (`epoch 3/30:   0%|`); there the epoch's one log line says what the bar would."""
        self.bar = progress_bar(None, total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                                mininterval=0.5)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # ----------------------------------------------------------------- TensorBoard

    def open_tensorboard(self, global_step: int) -> None:
        if not self.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional: metrics.csv and curves.png are always written
            self.tb = None
            return
        folder = self.out / "tensorboard"
        _after_earlier_event_files(folder)
        # hide what a previous run logged after the checkpoint resumed: steps > global_step
        self.tb = SummaryWriter(str(folder), purge_step=global_step + 1 if global_step else None)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int, *, flush: bool = False) -> None:
        if self.tb is None:
            return
        for key, value in values.items():
            if value is None:
                continue  # a metric that does not apply (top-5 with 5 classes or fewer) is not drawn
            self.tb.add_scalar(f"{prefix}/{key}", value, step)
        if flush:
            self.tb.flush()

    def close_tensorboard(self) -> None:
        if self.tb is not None:
            self.tb.close()

    # ----------------------------------------------------------------- files

    def write_metrics(self, history: Sequence[Mapping[str, Any]]) -> None:
        """metrics.csv from the history (rewritten whole: after a resume it matches the checkpoint)."""
        if not self.is_main or not history:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write(self.out / "metrics.csv", lambda f: f.write(buf.getvalue().encode()))

    def write_config(self, settings: Mapping[str, Any], *, header: str) -> None:
        import yaml

        if not self.is_main:
            return
        text = header + yaml.safe_dump(dict(settings), sort_keys=False)
        atomic_write(self.out / "config.yaml", lambda f: f.write(text.encode()))

    def write_curves(self, history: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> None:
        if self.is_main and history:
            plot_curves(history, self.out / "curves.png", metrics=metrics)


def metric(value: Any) -> float | None:
    """A validation metric as the history keeps it: a float, or None where it does not apply (top-5
    error with 5 classes or fewer), which metrics.csv writes as an empty cell and curves.png leaves out."""
    return None if value is None else float(value)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"



_LABELS = {"top1_error": "top-1", "top5_error": "top-5"}


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                metrics: Sequence[str] = ("top1_error", "top5_error")) -> Path:
    """curves.png: loss, the validation `metrics` (columns `val_<name>`) and lr per epoch (matplotlib, no
    display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_metric, ax_lr = fig.subplots(1, 3)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax_loss.set(title="loss", xlabel="epoch")
    ax_loss.legend()
    metrics = [m for m in metrics if any(h.get(f"val_{m}") is not None for h in history)]  # n/a: no curve
    for name, style in zip(metrics, ("o-", "s-", "^-", "v-")):
        ax_metric.plot(epochs, [h[f"val_{name}"] for h in history], style, label=_LABELS.get(name, name))
    errors = all(name.endswith("_error") for name in metrics)
    ax_metric.set(title="validation error (%)" if errors else "validation", xlabel="epoch")
    ax_metric.legend()
    ax_lr.plot(epochs, [h["lr"] for h in history], "o-")
    ax_lr.set(title="learning rate", xlabel="epoch", yscale="log")
    for ax in (ax_loss, ax_metric, ax_lr):
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def _after_earlier_event_files(folder: Path) -> None:
    """Wait, if need be, until a new event file in `folder` sorts after every one already there.

    TensorBoard reads a folder's event files in name order, and applies a resumed
    run's purge (`purge_step`) only to what it has read before. The names are
    `events.out.tfevents.<start second>.<host>.<pid>.<writer count>`: a resume
    started within the same second as the last file (in the same process, the
    count goes from 9 to 10, which sorts first) could be read before it and the
    purge lost. A start in a later second sorts last, so this waits at most one
    second, and only when a run is resumed within the second it last started.
    """
    import time

    newest = 0
    for path in folder.glob("events.out.tfevents.*"):
        field = path.name.split(".")[3]
        if field.isdigit():
            newest = max(newest, int(field))
    if newest > time.time() + 2:
        return  # a file from a clock ahead of ours: waiting would not help
    while int(time.time()) <= newest:
        time.sleep(newest + 1 - time.time())
