"""The training loop: one engine for every head (§3.1 training, §3.3 data parallelism).

`train(config, task)` runs epochs of mini-batch SGD with momentum and weight
decay on the task's loss, validates after every epoch with the task's metric,
divides the learning rate when that metric stops improving (`lr_drops` times,
then stops), and writes a checkpoint after every epoch (and every
`checkpoint_every` steps or `checkpoint_minutes`). What the head predicts is the
task's business (`vggnet.engine.task`); everything that makes a run trustworthy
is here, once:

- the global batch of the paper over processes and accumulation steps, so that
  1 process x 8 micro-batches and 8 processes x 1 take the same step;
- DDP under torchrun, AMP (bf16, or fp16 with a gradient scaler), channels_last;
- exact resume: model, optimizer, scheduler, scaler, RNGs, sampler position and
  the epoch's running sums are in every checkpoint;
- SIGTERM/SIGINT finish the step and checkpoint; a non-finite loss or weight
  stops every process before anything bad is written;
- checkpoints written atomically, `keep` numbered ones, `last.pt` and `best.pt`.

Each optimizer step is one all-reduce of the loss and of the stop/checkpoint
requests, so every rank takes every decision at the same step.

What the run needs before its first step (the execution and decoding choices,
the data, the statistics, the model and optimizer, the state of a resumed run)
is set up by `TrainerSetup` (`vggnet.engine.setup`), `Trainer`'s base class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from vggnet import distributed
from vggnet.engine.config import TrainConfig, parse_init
from vggnet.engine.data import close_loader
from vggnet.engine.outputs import RunOutputs, duration, metric
from vggnet.engine.setup import TrainerSetup
from vggnet.engine.state import (StopRequest, agree_on_resume, capture_rng, claim_run_folder, link_or_copy, plain,
                                 settings_from_init)
from vggnet.engine.task import Task
from vggnet.errors import CheckpointError, UserError

# the parts of a training checkpoint only a resumed run needs (best.pt goes without them)
RESUME_ONLY = ("optimizer", "scheduler", "warmup", "scaler", "rng", "sampler")

__all__ = ["Trainer", "TrainingError", "train"]


ESTIMATE_AFTER_STEPS = 1  # one step of the paper's batch (256 images of D) takes minutes on a CPU


class TrainingError(UserError):
    """Training cannot go on (a non-finite loss, too many bad images); the message says where it stopped."""


class Trainer(TrainerSetup):
    """One run: `Trainer(cfg, info, task).run()`. Rank 0 writes every file; every rank computes.

    The set-up before the first step (execution, decoding, data, model, resume) is `TrainerSetup`'s
    (`vggnet.engine.setup`).
    """

    def __init__(self, cfg: TrainConfig, info: distributed.DistInfo, task: Task) -> None:
        self.cfg = cfg
        self.info = info
        self.task = task
        self.device = info.device
        self.out = Path(cfg.output_dir)
        self.outputs = RunOutputs(self.out, is_main=info.is_main)
        self.log = self.outputs.log
        self.history: list[dict[str, Any]] = []
        self.epoch = 0               # the epoch in progress (0-based)
        self.step_in_epoch = 0       # optimizer steps done in it
        self.global_step = 0
        self.lr_reductions = 0
        self.best: float | None = None      # the best validation value of task.monitor so far
        self.best_epoch: int | None = None
        self.last_checkpoint: Path | None = None
        self.resume_path: Path | None = None
        self.stopped: str | None = None
        self.last_save_time = time.monotonic()
        self.finished_before = False
        self.signal: int | None = None
        self.settings_taken: str | None = None  # what `--init from:CKPT` gave the settings, in words (logged)
        self.reported_bad: set[str] = set()  # unreadable training files already named in the log
        self.deferred: Any = None  # the TrainPreset applied on the device (--decode-device cuda), or None
        self.decode_where = "cpu"
        self.decode_text = ""
        self.folder_lock: Any = None  # rank 0's lock on the run folder (`claim_run_folder`)
        self._reset_epoch_totals()

    def _reset_epoch_totals(self) -> None:
        # running sums of the epoch in progress; checkpointed, so a resumed epoch reports the same numbers
        self.totals = {"loss_sum": 0.0, "steps": 0, "seen": 0, "bad": 0, "seconds": 0.0}

    @property
    def best_key(self) -> str:
        return f"best_{self.task.monitor}"

    def _remedy(self) -> str:
        tips = ["a lower --lr", "--clip-grad 10"]
        if self.amp != "off":
            tips.append("--amp off")
        if self.cfg.init == "gaussian":
            tips.append("--init glorot")
        return f"Try {', '.join(tips[:-1])} or {tips[-1]}."

    # ----------------------------------------------------------------- checkpoints

    def save(self, *, best: bool = False, finished: bool = False) -> Path | None:
        """Write a checkpoint of the state after the last step (collective: every rank calls it)."""
        from vggnet.checkpoint import make_checkpoint, save_checkpoint

        # A finite loss does not guarantee finite weights after the step (a huge
        # gradient times the lr): never write such a checkpoint over good ones. The
        # weights are the same on every rank, so every rank stops here together.
        bad = [name for name, t in self.model.state_dict().items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise TrainingError(
                f"the weights became non-finite ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}) at step "
                f"{self.global_step} (epoch {self.epoch + 1}) with lr {self.optimizer.param_groups[0]['lr']:g}; "
                f"not saved. Last good checkpoint: {self.last_checkpoint or 'none written yet'}. {self._remedy()}")
        self.sync_batch_norm()
        rng = distributed.all_gather_object(capture_rng())
        if not self.info.is_main:
            return None
        cfg = self.cfg
        train_state = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "global_step": self.global_step,
            # the sampler's own position is only set when an epoch starts: record where this epoch stands now
            "sampler": {**self.sampler.state_dict(), "epoch": self.epoch,
                        "position": self.step_in_epoch * cfg.batch_size},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": plain(self.scheduler.state_dict()),
            **({"warmup": plain(self.warmup.state_dict())} if self.warmup is not None else {}),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rng,
            "world_size": self.info.world_size,
            "config": plain(cfg.to_dict()),
            "task": plain(self.task.settings()),
            "stats": self.stats,
            "history": self.history,
            "lr_reductions": self.lr_reductions,
            self.best_key: self.best,
            "best_epoch": self.best_epoch,
            "epoch_totals": dict(self.totals),
            "finished": finished,
            "stopped": self.stopped,
            **({"batch_reduced_from": self.batch_given} if self.batch_given != cfg.batch_size else {}),
        }
        last = self.history[-1] if self.history else {}
        meta = {"task": self.task.name, "task_settings": plain(self.task.settings()), "scale": cfg.scale,
                "val_scale": cfg.val_scale, "source": "vgg train", "epoch": self.epoch,
                "global_step": self.global_step, "init": cfg.init, "stats": self.stats,
                **{f"val_{m}": last.get(f"val_{m}") for m in self.task.metrics}}
        ckpt = make_checkpoint(self.model, preprocessing=self.preprocessing.to_dict(), classes=self.classes,
                               meta=meta, train=train_state)
        path = self.out / f"checkpoint_{self.global_step:08d}.pt"
        with self.writing(path):
            save_checkpoint(path, ckpt)
        with self.writing(self.out / "last.pt"):
            link_or_copy(path, self.out / "last.pt")
        if best:
            # what inference and --init from: need (weights, EMA, settings, history), not the optimizer's
            # state: a file of the model's size, where the resumable checkpoint is twice that with SGD momentum
            light = {**ckpt, "train": {k: v for k, v in train_state.items() if k not in RESUME_ONLY}}
            with self.writing(self.out / "best.pt"):
                save_checkpoint(self.out / "best.pt", light)
        if self.ema is not None:
            # the averaged weights as a net of their own, for vgg eval / predict
            with self.writing(self.out / "ema.pt"):
                save_checkpoint(self.out / "ema.pt", make_checkpoint(
                    self.ema.module, preprocessing=self.preprocessing.to_dict(), classes=self.classes,
                    meta={**meta, "ema_decay": cfg.ema_decay, "source": "vgg train (EMA of the weights)"}))
        self.last_checkpoint = path
        self.last_save_time = time.monotonic()
        numbered = sorted(self.out.glob("checkpoint_*.pt"), key=lambda p: p.name, reverse=True)
        for old in numbered[cfg.keep:]:
            old.unlink(missing_ok=True)
        return path

    @contextlib.contextmanager
    def writing(self, path: Path):
        """A failed write (disk full, read-only folder, a quota) as a `TrainingError` that names the file and
        the last good checkpoint, which the atomic writes leave intact, instead of torch's or the OS's traceback."""
        try:
            yield
        except (OSError, RuntimeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
            if isinstance(exc, OSError) and exc.errno == 28 or "file write failed" in reason:
                reason = f"no space left on the device ({reason})"
            raise TrainingError(
                f"cannot write {path}: {reason}; training stopped at step {self.global_step} (epoch "
                f"{self.epoch + 1}). Last good checkpoint: {self.last_checkpoint or 'none written yet'} (intact: "
                f"checkpoints are written to a temporary file and renamed). Free space or fix the folder, then "
                f"continue with --resume auto") from None

    # ----------------------------------------------------------------- the loop

    def train_epoch(self, stop: StopRequest) -> bool:
        """Run the remaining steps of the current epoch; True if training must stop now."""
        cfg, dev, task = self.cfg, self.device, self.task
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_position(self.step_in_epoch * cfg.batch_size)
        self.net.train()
        if cfg.freeze == "features":
            self.model.features.eval()  # frozen layers: batch-norm statistics stay as initialised too
        cl = torch.channels_last if self.channels_last else torch.contiguous_format
        ddp = self.info.distributed
        start_step = self.step_in_epoch
        if start_step == 0:
            self._reset_epoch_totals()
        totals = self.totals
        t0 = time.perf_counter() - totals["seconds"]
        if self.info.is_main and cfg.progress:
            self.outputs.open_bar(total=self.steps_per_epoch, initial=start_step,
                                  desc=f"epoch {self.epoch + 1}/{cfg.epochs}")
        bar = self.outputs.bar
        batches = iter(self.loader)
        try:
            for step in range(start_step, self.steps_per_epoch):
                step_loss = torch.zeros((), dtype=torch.float64, device=dev)
                good = 0  # images of this step that were read (bad files are skipped)
                for k in range(self.accum):
                    batch, skipped_files = next(batches)
                    if self.deferred is not None:
                        from vggnet.data.device_decode import finish_batch

                        batch, refused = finish_batch(batch, self.deferred, dev)
                        skipped_files = skipped_files + refused
                    for message in skipped_files:  # every unreadable file named once per run, in train.log too
                        if message not in self.reported_bad:
                            self.reported_bad.add(message)
                            self.log(f"warning: {message}")
                    skipped = getattr(batch, "skipped", 0)
                    if len(batch) == 0:
                        # every image of this micro-batch was a bad file: a zero-weight step on a blank
                        # image keeps this rank's forward/backward (and DDP's all-reduce) in step
                        weight = 0.0
                        x = torch.zeros(1, 3, cfg.crop_size, cfg.crop_size, device=dev)
                        targets = task.empty_targets(1, dev)
                    else:
                        weight = 1.0
                        x, targets = task.inputs_targets(batch, dev)
                    totals["bad"] += skipped
                    good += int(x.shape[0]) if weight else 0
                    totals["seen"] += (int(x.shape[0]) if weight else 0) + skipped
                    x = x.contiguous(memory_format=cl)
                    # DDP all-reduces gradients only on the last micro-batch of the step
                    sync = k == self.accum - 1
                    with (self.net.no_sync() if ddp and not sync else contextlib.nullcontext()):
                        with torch.autocast(dev.type, dtype=self.amp_dtype or torch.float32,
                                            enabled=self.amp_dtype is not None):
                            output = self.net(x)
                        # sum over the micro-batch / images per process per step = this process's
                        # mean; DDP then averages the processes: the mean over the global batch
                        loss = task.loss(output, targets) * (weight / (self.micro * self.accum))
                        self.scaler.scale(loss).backward()
                    step_loss += loss.detach().double()
                # One all-reduce per step carries the loss and the stop/checkpoint
                # requests, so that every rank takes the same decision at the same step.
                minutes_due = (cfg.checkpoint_minutes > 0
                               and time.monotonic() - self.last_save_time >= 60 * cfg.checkpoint_minutes)
                loss_sum, stop_flag, save_flag, good_sum = distributed.all_reduce_sum(
                    [float(step_loss), float(stop.signal is not None), float(minutes_due), float(good)])
                loss_sum *= self._mean_over_read_images(good_sum)
                loss_value = loss_sum / self.info.world_size
                lr = self.optimizer.param_groups[0]["lr"]
                if not math.isfinite(loss_value):
                    where = self.last_checkpoint or "none written yet"
                    raise TrainingError(
                        f"the loss became {loss_value} at step {self.global_step + 1} (epoch {self.epoch + 1}, "
                        f"step {step + 1}/{self.steps_per_epoch} of the epoch) with lr {lr:g}; training stopped on "
                        f"every process and no checkpoint was written for this step. Last good checkpoint: {where}. "
                        f"{self._remedy()}")
                if cfg.clip_grad is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.global_step += 1
                self.step_in_epoch = step + 1
                totals["loss_sum"] += loss_value
                totals["steps"] += 1
                totals["seconds"] = elapsed = time.perf_counter() - t0
                ips = totals["steps"] * cfg.batch_size / max(elapsed, 1e-9)
                if bar is not None:
                    bar.set_postfix_str(f"loss {totals['loss_sum'] / totals['steps']:.4f} lr {lr:.2g} "
                                        f"{ips:.1f} img/s", refresh=False)
                    bar.update(1)
                if totals["steps"] == ESTIMATE_AFTER_STEPS and self.epoch == 0 and start_step == 0:
                    self.estimate_epoch(elapsed)
                if self.global_step % cfg.log_every == 0:
                    self.outputs.scalars("train", {"loss": loss_value, "lr": lr, "images_per_s": ips},
                                         self.global_step)
                max_reached = cfg.max_steps is not None and self.global_step >= cfg.max_steps
                every_due = cfg.checkpoint_every > 0 and self.global_step % cfg.checkpoint_every == 0
                if stop_flag or max_reached:
                    self.stopped = "signal" if stop_flag else "max_steps"
                    self.save()
                    return True
                if save_flag or every_due:
                    self.save()
        finally:
            # shut the loader workers down now, also when an exception passes (its traceback would keep
            # the iterator, and so the workers, alive until exit, where they ignore multiprocessing's SIGTERM)
            close_loader(batches)
            del batches
            self.outputs.close_bar()
        return False

    def _mean_over_read_images(self, read: float) -> float:
        """Make the step's gradient the mean over the images that were read; returns the factor applied.

        Each image's loss was divided by the full global batch; when bad files
        were skipped, the gradients (already summed over processes) are scaled
        by batch / read, so a skipped image does not shrink the step: the step
        is the paper's mean over its mini-batch, of the images it has. A step
        whose images were all bad keeps its zero gradient (momentum and weight
        decay still act, as for any step).
        """
        expected = self.micro * self.accum * self.info.world_size
        if not 0 < read < expected:
            return 1.0
        factor = expected / read
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)
        return factor

    def end_epoch(self, stop: StopRequest) -> bool:
        """Validate, adjust the learning rate, log, checkpoint; True if training ends here."""
        from vggnet.data.datasets import check_bad_fraction

        cfg, task = self.cfg, self.task
        t = self.totals
        loss_total, done, elapsed = t["loss_sum"], t["steps"], t["seconds"]
        seen, bad = (int(v) for v in distributed.all_reduce_sum([t["seen"], t["bad"]]))
        try:  # raised only once this epoch's checkpoint is written: the epoch's work is kept
            check_bad_fraction(bad, seen, cfg.max_bad_fraction, where=f"epoch {self.epoch + 1} of the training set")
            too_many_bad = None
        except UserError as exc:
            too_many_bad = exc
        t0 = time.perf_counter()
        self.sync_batch_norm()  # validate the net that is saved, the same on every rank
        ema_metrics = None
        # fork_rng: validation's data loader must not move the training RNG streams
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                metrics = task.validate(self.model, self.val_set, preprocessing=self.preprocessing,
                                        scale=cfg.val_scale, device=self.device, batch_size=cfg.val_batch_size,
                                        workers=cfg.workers, amp="bf16" if self.amp == "bf16" else "off")
                if self.ema is not None:
                    ema_metrics = task.validate(self.ema.module, self.val_set, preprocessing=self.preprocessing,
                                                scale=cfg.val_scale, device=self.device,
                                                batch_size=cfg.val_batch_size, workers=cfg.workers,
                                                amp="bf16" if self.amp == "bf16" else "off")
        except (RuntimeError, KeyboardInterrupt):
            if stop.signal is None:
                raise
            # a signal to every process (Ctrl-C, SLURM) also reached validation's loader
            # workers: keep the trained epoch; the resumed run validates it
            self.stopped = "signal"
            self.save()
            return True
        val_time = time.perf_counter() - t0
        lr = self.optimizer.param_groups[0]["lr"]
        row = {
            "epoch": self.epoch + 1,
            "global_step": self.global_step,
            "lr": lr,
            "train_loss": loss_total / done if done else float("nan"),
            "val_loss": float(metrics["loss"]),
            **{f"val_{m}": metric(metrics[m]) for m in task.metrics},
            "train_images_per_s": done * cfg.batch_size / elapsed if elapsed > 0 else float("nan"),
            "epoch_time_s": elapsed + val_time,
            "bad_images": bad,
            "val_bad_images": int(metrics.get("bad_images", 0)),  # unreadable validation files, left out
        }
        if ema_metrics is not None:
            row.update({"val_ema_loss": float(ema_metrics["loss"]),
                        **{f"val_ema_{m}": metric(ema_metrics[m]) for m in task.metrics}})
        self.history.append(row)
        value = float(metrics[task.monitor])
        improved = self.best is None or (value < self.best if task.lower_is_better else value > self.best)
        if improved:
            self.best, self.best_epoch = value, self.epoch + 1
        # §3.1: divide the lr by 10 when the validation metric stops improving
        plateau = cfg.lr_scheduler == "plateau"
        if self.warmup is not None and self.epoch + 1 <= cfg.warmup_epochs:
            self.warmup.step()  # the warm-up's epochs; the main schedule counts from its end
        elif plateau:
            self.scheduler.step(value)
        else:
            self.scheduler.step()
        new_lr = self.optimizer.param_groups[0]["lr"]
        finished = False
        note = ""
        if new_lr != lr and not plateau:
            note = f"  (lr -> {new_lr:g})"
        elif new_lr < lr:
            self.lr_reductions += 1
            if self.lr_reductions > cfg.lr_drops:
                # a plateau after the last allowed reduction: training is over (keep the old lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.lr_reductions -= 1
                finished, self.stopped = True, "plateau"
                note = f"  (plateau after {cfg.lr_drops} lr reductions: done)"
            else:
                note = f"  (lr -> {new_lr:g})"
        self.epoch += 1
        self.step_in_epoch = 0
        self._reset_epoch_totals()
        if self.epoch >= cfg.epochs:
            finished, self.stopped = True, self.stopped or "epochs"
        self.log(f"epoch {row['epoch']:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f}  val loss "
                 f"{row['val_loss']:.4f}  {task.summary(metrics)}  "
                 f"{'EMA ' + task.summary(ema_metrics) + '  ' if ema_metrics is not None else ''}lr {lr:.3g}  "
                 f"{row['train_images_per_s']:.1f} img/s  "
                 f"{duration(row['epoch_time_s'])}{'  *best*' if improved else ''}{note}")
        # at the global step, as train/*: one x-axis, so that purge_step on a resume covers these too
        keys = ("train_loss", "val_loss", *(f"val_{m}" for m in task.metrics), "lr")
        self.outputs.scalars("epoch", {k: row[k] for k in keys}, row["global_step"], flush=True)
        self.save(best=improved, finished=finished)
        with self.writing(self.out / "metrics.csv"):
            self.outputs.write_metrics(self.history)
        if too_many_bad is not None:
            raise TrainingError(f"{too_many_bad}. The epoch's checkpoint is written ({self.last_checkpoint}); "
                                f"fix or remove the files, or raise --max-bad-fraction, and continue with "
                                f"--resume auto")
        return finished

    def sync_batch_norm(self) -> None:
        """Under DDP with BatchNorm: every rank's running statistics (and the EMA's) replaced by their
        average over the ranks, as timm's `distribute_bn` does, so that the validated and the saved
        net are the same net on every rank (collective: every rank calls it)."""
        if not self.info.distributed or not self.cfg.batch_norm:
            return
        distributed.average_buffers(self.model)
        if self.ema is not None:
            distributed.average_buffers(self.ema.module)

    def estimate_epoch(self, elapsed: float) -> None:
        """After the first steps of a big net on a CPU: what one epoch will take, and where the small runs are."""
        if not self.big_on_a_cpu():
            return
        per_step = elapsed / ESTIMATE_AFTER_STEPS
        self.log(f"estimate: {per_step:.1f} s per step on this CPU, about {duration(per_step * self.steps_per_epoch)} "
                 f"per epoch ({self.steps_per_epoch} steps) and up to {self.cfg.epochs} epochs. A run that finishes "
                 f"in minutes: `vgg demo`, or `vgg train --config-file configs/quickstart.yaml`")

    def write_config(self) -> None:
        head = (f"# the resolved settings of this run ({self.task.command()} --config-file {self.out}/config.yaml)\n"
                f"# task: {self.task.name} {plain(self.task.settings()) or ''}\n"
                f"# processes: {self.info.world_size}, device: {self.device}, micro-batch: {self.micro}, "
                f"accumulation steps: {self.accum}, amp: {self.amp}, channels_last: {self.channels_last}\n")
        self.outputs.write_config(plain(self.cfg.to_dict()), header=head)

    # ----------------------------------------------------------------- run

    def claim_folder(self) -> None:
        """Rank 0 locks the run folder (and checks it) before anything looks for checkpoints in it."""
        error = None
        if self.info.is_main:
            try:
                self.folder_lock = claim_run_folder(self.out)
            except UserError as exc:
                error = str(exc)
        if distributed.is_distributed():
            error = distributed.broadcast_object(error)
        if error is not None:
            raise UserError(error)

    def run(self) -> dict[str, Any]:
        self.task.configure(self.cfg)
        self.resolve_execution()  # its errors (a batch that does not split) come before the folder is made
        self.resolve_decoding()
        created = not self.out.exists()
        self.claim_folder()
        try:
            return self._run()
        except BaseException:
            if self.folder_lock is not None and created:
                self.folder_lock.remove_if_unused()  # a start that failed leaves no empty folder behind
            raise
        finally:
            if self.folder_lock is not None:
                self.folder_lock.release()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        resume, self.resume_path = agree_on_resume(cfg, self.info, self.out, self.log, self.check_resumable)
        init_ckpt = None
        scheme, init_path = parse_init(cfg.init)
        if resume is None and init_path is not None:
            from vggnet.checkpoint import check_finite, load_checkpoint

            try:
                init_ckpt = load_checkpoint(init_path)
            except CheckpointError as exc:
                raise CheckpointError(f"--init from:{init_path}: {exc}") from None
            # NaN weights would make the first loss NaN, which would be blamed on the learning rate
            check_finite(init_ckpt["state_dict"], f"--init from:{init_path}",
                         advice="the run that wrote it had diverged: start from an earlier checkpoint")
            self.task.check_checkpoint(init_ckpt, init_path, purpose="init")
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            # a run killed while saving leaves its temporary file (a GB for VGG-16): remove them
            for stale in self.out.glob(".*.pt.*.tmp"):
                self.log(f"removing {stale.name}, the partial file of a checkpoint interrupted while being written")
                stale.unlink(missing_ok=True)
        distributed.barrier()
        self.build_data(resume, init_ckpt)
        self.build_model(init_ckpt)
        if resume is not None:
            self.restore(resume)
        if self.info.is_main:
            self.write_config()
            self.outputs.open_tensorboard(self.global_step)
        self.print_header(resume)
        if self.finished_before and (self.stopped == "plateau" or self.epoch >= cfg.epochs):
            self.log(f"the run in {self.out} is already finished ({self.stopped}, {self.epoch} epochs); "
                     f"nothing to do ({self._train_on_hint()})")
            return self.result()
        stop = StopRequest(self.log)
        stop.install()
        self.stopped = None
        try:
            while True:
                if self.train_epoch(stop):
                    break
                if self.end_epoch(stop):
                    break
                if distributed.all_reduce_sum([float(stop.signal is not None)])[0]:
                    self.stopped = "signal"  # arrived during validation: the epoch checkpoint is written
                    break
        finally:
            stop.uninstall()
            self.outputs.close_tensorboard()
        self.outputs.write_metrics(self.history)
        self.outputs.write_curves(self.history, self.task.metrics)
        if self.stopped == "signal":
            name = signal.Signals(stop.signal).name if stop.signal else "a signal"
            self.log(f"stopped by {name} at epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch} "
                     f"(global step {self.global_step}); checkpoint {self.last_checkpoint}\n"
                     f"resume with:  {self.task.command()} --config-file {self.out / 'config.yaml'} --resume auto"
                     f"{'   (with the same torchrun command)' if self.info.distributed else ''}")
        elif self.stopped == "max_steps":
            self.log(f"stopped after --max-steps {cfg.max_steps}; checkpoint {self.last_checkpoint} "
                     f"(continue with --resume auto)")
        else:
            how = (f"validation plateau after {cfg.lr_drops} lr reductions" if self.stopped == "plateau"
                   else f"{self.epoch} epoch{'' if self.epoch == 1 else 's'}")
            self.log(f"done ({how}): best {self.task.monitor_label} {self.best:.2f}"
                     f"{self.task.units.get(self.task.monitor, '')} at epoch {self.best_epoch}; {self.out / 'best.pt'}")
        self.signal = stop.signal
        return self.result()

    def _train_on_hint(self) -> str:
        """What would let a finished run train on: more epochs, or (after its last plateau) more lr drops."""
        if self.stopped == "plateau":
            return (f"it ended at a plateau after its {self.cfg.lr_drops} lr reductions: raise --lr-drops to train "
                    f"on at a lower lr")
        return "raise --epochs to train on"

    def result(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.out),
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "best": str(self.out / "best.pt") if (self.out / "best.pt").exists() else None,
            "epochs": self.epoch,
            "global_step": self.global_step,
            "task": self.task.name,
            "monitor": self.task.monitor,
            "best_metric": self.best,
            self.best_key: self.best,
            "best_epoch": self.best_epoch,
            "history": list(self.history),
            "stopped": self.stopped,
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
        }


def train(config: TrainConfig | Mapping[str, Any], task: Task) -> dict[str, Any]:
    """Train with the settings of `config` (a `TrainConfig` or a mapping of its fields) on `task`
    (`vggnet.classification.ClassificationTask` for §3.1; `vggnet.train` passes it).

    Returns the final state: `output_dir`, `checkpoint` (the last one written),
    `best`, `epochs`, `global_step`, `task`, `monitor` (the validation metric
    that chose `best`), `best_metric` (also as `best_<monitor>`, e.g.
    `best_top1_error`), `best_epoch`, `history` (one dict per epoch, as in
    metrics.csv), `stopped` ("epochs", "plateau", "max_steps" or "signal"),
    `classes`, `preprocessing`, `signal`. Settings are checked before any work.
    Under torchrun it joins (and finally leaves) the process group.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg = dataclasses.replace(cfg)  # a copy: the caller's config is not normalised in place
    taken = settings_from_init(cfg)  # --init from:CKPT knows its net: the settings left unset come from it
    cfg.validate()
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = distributed.setup(cfg.device)
    try:
        trainer = Trainer(cfg, info, task)
        trainer.settings_taken = taken
        out = trainer.run()
        out["signal"] = trainer.signal
        distributed.barrier()
        return out
    finally:
        if owns_group:
            distributed.cleanup()
