"""The run's set-up: everything `Trainer` needs before its first step (§3.1, §3.3).

`TrainerSetup` is the part of `vggnet.engine.loop.Trainer` that runs once, before
the loop:

- the execution choice: micro-batch and accumulation steps that make the global
  batch exact over the processes, AMP and channels_last (`choose_execution`),
  threads, cuDNN benchmark, deterministic algorithms (`resolve_execution`);
- the decoding choice: JPEGs decoded by the loader workers or on the device
  (`--decode-device`), refused where it cannot work (`resolve_decoding`);
- the data: training and validation sets, files left out, the mean RGB and PCA
  (`_statistics`), the preprocessing (the run's own, the initial net's or the
  paper's), the task's training transform, the resumable sampler and the loader
  (`build_data`);
- the model and optimizer: the net, its initialisation (`--init`, `--freeze`),
  channels_last, SyncBatchNorm, DDP, `torch.compile`, the optimizer, the lr
  schedules, the EMA and the gradient scaler (`build_model`);
- the resume state: a checkpoint checked against this run's settings
  (`check_resumable`) and restored exactly (`restore`).

`Trainer.run` calls these in that order; the loop, the checkpoints it writes and
what the run prints are in `vggnet.engine.loop`, which this module never imports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from vggnet import distributed
from vggnet.engine.config import NET_DEFAULTS, RESUME_MUST_MATCH, TrainConfig, parse_init, show_setting
from vggnet.engine.data import build_datasets, make_train_loader
from vggnet.engine.state import init_from, make_optimizer, make_scheduler, plain, restore_rng, seed_everything
from vggnet.engine.task import Task
from vggnet.errors import CheckpointError, UserError
from vggnet.execution import choose_execution

__all__ = ["TrainerSetup"]


# A net this costly per image (multiply-accumulates) on a CPU gets a note and an epoch-time estimate
# (D at 224 px: 15.5 G; the quickstart's net: 0.02 G).
CPU_NOTE_MACS = 2e9

class TrainerSetup:
    """The set-up methods of `Trainer` (its base class; `Trainer.__init__` makes the attributes).

    They read `cfg`, `info`, `task`, `device`, `log`, `resume_path`, `decode_where`, `best_key`,
    `settings_taken` and `totals`, and set:

    - `resolve_execution`: `micro`, `accum`, `amp`, `amp_dtype`, `channels_last`, `execution_reason`;
    - `resolve_decoding`: `decode_where`, `decode_text`;
    - `build_data`: `data_text`, `classes`, `stats`, `stats_source`, `preprocessing`, `deferred`,
      `train_set`, `val_set`, `sampler`, `steps_per_epoch`, `loader`;
    - `build_model`: `init_text`, `n_params`, `model`, `net`, `optimizer`, `warmup`, `scheduler`,
      `ema`, `scaler`;
    - `restore`: `epoch`, `step_in_epoch`, `global_step`, `lr_reductions`, `best`, `best_epoch`,
      `history`, `totals`, `last_checkpoint`, `finished_before`, `stopped` (and the RNGs, the
      sampler's position, and the state of the model, optimizer, schedulers, EMA and scaler).
    """

    def resolve_execution(self) -> None:
        cfg, dev = self.cfg, self.device
        world = self.info.world_size
        self.micro = cfg.micro_batch_size or max(1, cfg.batch_size // world)
        self.accum = distributed.accumulation_steps(cfg.batch_size, self.micro, world)  # exact, or a UserError
        chosen = choose_execution(cfg.amp, cfg.channels_last, dev)
        self.amp, self.channels_last, self.execution_reason = chosen.amp, chosen.channels_last, chosen.reason
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)

    def check_resumable(self, ckpt: Mapping[str, Any], path: Path) -> None:
        """A `CheckpointError` unless `ckpt` is a training checkpoint of this task with this run's settings."""
        train = ckpt.get("train")
        if not isinstance(train, Mapping) or "optimizer" not in train:
            raise CheckpointError(f"{path} holds weights only, no training state; to start a new run from these "
                                  f"weights use --init from:{path}")
        self.task.check_checkpoint(ckpt, str(path), purpose="resume")
        saved = train.get("config", {})
        mismatched = []
        defaults = {**TrainConfig().to_dict(), **NET_DEFAULTS}
        # (a setting added after the checkpoint was written had its default then)
        must_match = RESUME_MUST_MATCH + (("epochs",) if self.cfg.lr_scheduler == "cosine" else ())
        if train.get("batch_reduced_from") == self.cfg.batch_size:  # reduced to the training set: as it was
            must_match = tuple(k for k in must_match if k not in ("batch_size", "micro_batch_size"))
        for key in must_match:
            mine, theirs = plain(getattr(self.cfg, key)), plain(saved.get(key, defaults.get(key)))
            if key == "model" and isinstance(theirs, str):
                from vggnet.models import resolve_name

                theirs = resolve_name(theirs)
            if mine != theirs and not (isinstance(mine, (int, float)) and isinstance(theirs, (int, float))
                                       and float(mine) == float(theirs)):
                mismatched.append(f"--{key.replace('_', '-')} {show_setting(theirs)} in the checkpoint, "
                                  f"{show_setting(mine)} now")
        theirs_task = dict(train.get("task") or {})
        for key, mine in plain(self.task.settings()).items():
            if key in theirs_task and theirs_task[key] != mine:
                mismatched.append(f"{self.task.name} setting {key} {theirs_task[key]} in the checkpoint, {mine} now")
        if mismatched:
            raise CheckpointError(f"{path} was written by a run with other settings ({'; '.join(mismatched)}); "
                                  f"resume it with its own settings (its config.yaml), or start a new run from "
                                  f"its weights with --init from:{path} and a new --output-dir")

    def fit_batch(self, images: int, resume: Mapping[str, Any] | None) -> None:
        """A global batch larger than the training set (the paper's 256 on a 72-image folder) becomes
        the training set, rounded down to a multiple of the processes, with a one-line note; a resumed
        run keeps the batch it was reduced to. Micro-batch and accumulation follow."""
        cfg, world = self.cfg, self.info.world_size
        self.batch_given = cfg.batch_size
        reduced = ((resume or {}).get("train") or {}).get("batch_reduced_from")
        if resume is not None and reduced == cfg.batch_size:
            cfg.batch_size = int(resume["train"]["config"]["batch_size"])
        elif images < cfg.batch_size:
            fitted = images - images % world
            if fitted < 1:
                raise UserError(f"the training set ({images} images) is smaller than the {world} processes")
            self.log(f"note: --batch-size {cfg.batch_size} is larger than the training set ({images} images): "
                     f"batch {fitted}, one optimizer step per epoch")
            cfg.batch_size = fitted
        else:
            return
        if cfg.micro_batch_size and cfg.batch_size // world % cfg.micro_batch_size:
            cfg.micro_batch_size = None  # the given micro-batch does not divide the reduced batch
        self.micro = cfg.micro_batch_size or max(1, cfg.batch_size // world)
        self.accum = distributed.accumulation_steps(cfg.batch_size, self.micro, world)

    def build_data(self, resume: Mapping[str, Any] | None, init_ckpt: Mapping[str, Any] | None) -> None:
        from vggnet.data.transforms import Preprocessing

        cfg = self.cfg
        train, val, self.data_text = build_datasets(cfg, boxes=self.task.needs_boxes)
        self.fit_batch(len(train), resume)
        self.classes = list(train.classes)
        self._log_left_out(train, val)
        if resume is not None and list(resume["classes"]) != self.classes:
            raise CheckpointError(f"{self.resume_path} was trained on {len(resume['classes'])} classes "
                                  f"({', '.join(resume['classes'][:4])}, ...) but the training set has "
                                  f"{len(self.classes)} ({', '.join(self.classes[:4])}, ...)")
        self.stats, self.stats_source = self._statistics(train, resume, init_ckpt)
        if resume is not None:
            self.preprocessing = Preprocessing.from_dict(resume["preprocessing"])
        elif isinstance((init_ckpt or {}).get("preprocessing"), Mapping):
            # fine-tuning: the initial net's features were learned on inputs normalised its way
            # (torchvision's weights: 0-1 pixels, ImageNet mean and std), so keep feeding them so
            self.preprocessing = Preprocessing.from_dict(init_ckpt["preprocessing"])
        else:
            self.preprocessing = Preprocessing.caffe(mean=self.stats["mean"])
        extensions = {**({} if cfg.hflip else {"hflip": False}),
                      **({} if cfg.auto_augment == "none" else {"auto_augment": cfg.auto_augment})}
        train.transform = self.task.train_transform(
            crop_size=cfg.crop_size, scale=cfg.scale, preprocessing=self.preprocessing,
            pca=self.stats if cfg.pca_std > 0 else None, pca_std=cfg.pca_std, **extensions)
        collate = self.task.collate
        if self.decode_where == "cuda":  # JPEGs leave the workers encoded (checked in `resolve_decoding`)
            from vggnet.data.device_decode import DeferredDecode, collate_deferred

            self.deferred = train.transform
            train.transform, collate = DeferredDecode(self.deferred), collate_deferred
        self.train_set, self.val_set = train, val
        self.sampler = distributed.ResumableDistributedSampler(
            train, global_batch=cfg.batch_size, num_replicas=self.info.world_size, rank=self.info.rank,
            seed=cfg.seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.loader = make_train_loader(train, self.sampler, seed=cfg.seed, micro_batch=self.micro,
                                        workers=cfg.workers, collate=collate,
                                        pin_memory=self.device.type == "cuda")

    def resolve_decoding(self) -> None:
        """Where training JPEGs are decoded (`--decode-device`), checked before any work."""
        from vggnet.data.decode import choose_decode_device

        self.decode_where = choose_decode_device(self.cfg.decode_device, self.device)
        self.decode_text = "JPEGs decoded by the loader workers"
        if self.decode_where != "cuda":
            return
        if self.task.needs_boxes or type(self.task).collate is not Task.collate:
            raise UserError(f"--decode-device cuda: the {self.task.describe()} task transforms its own items "
                            f"(boxes); use --decode-device cpu")
        if self.cfg.auto_augment != "none":
            raise UserError("--decode-device cuda applies the paper's crop, flip and colour shift on the GPU; "
                            "--auto-augment policies run in the loader workers: use --decode-device cpu with them")
        self.decode_text = (f"JPEGs decoded on {self.device} in batches of a micro-batch (TorchCodec), rescaled and "
                            f"cropped there; other files by the loader workers")

    def _log_left_out(self, *datasets: Any) -> None:
        """Name every file the datasets' folders held but do not use (FIFOs, link loops, unreadable formats),
        once per run, in the console and train.log: Python warnings may be silenced (-W ignore)."""
        for ds in datasets:
            left_out = getattr(ds, "left_out", [])
            if left_out:
                self.log(f"warning: {len(left_out)} file(s) of {getattr(ds, 'root', 'the dataset')} left out:")
                for path, reason in left_out:
                    self.log(f"  {path}: {reason}")

    def _statistics(self, train: Any, resume: Mapping[str, Any] | None,
                    init_ckpt: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
        """Mean RGB and PCA: the run's own (resume), a `vgg stats` file, the initial net's, or computed now."""
        cfg = self.cfg
        stats, source = None, ""
        if resume is not None:
            stats, source = resume["train"].get("stats"), f"the checkpoint {self.resume_path}"
        elif cfg.stats is not None:
            from vggnet.data.stats import load_stats

            stats, source = load_stats(cfg.stats), cfg.stats
        elif init_ckpt is not None and isinstance(init_ckpt.get("meta", {}).get("stats"), Mapping) \
                and list(init_ckpt.get("classes", [])) == self.classes:
            stats, source = init_ckpt["meta"]["stats"], f"the initial net {parse_init(cfg.init)[1]}"
        if stats is None:
            from vggnet.data.stats import compute_stats

            n = min(cfg.stats_sample, len(train))
            if self.info.is_main:
                self.log(f"computing the training set's mean RGB and PCA on {n} images (pass --stats FILE from "
                         f"`vgg stats` to skip this)")
                stats = compute_stats(train, sample=n, seed=cfg.seed, workers=min(cfg.workers, 4))
            stats = distributed.broadcast_object(stats)
            source = f"{n} training images"
        return ({"mean": [float(v) for v in stats["mean"]], "eigval": [float(v) for v in stats["eigval"]],
                 "eigvec": [[float(v) for v in row] for row in stats["eigvec"]]}, source)

    def build_model(self, init_ckpt: Mapping[str, Any] | None) -> None:
        from vggnet.init import init_weights
        from vggnet.models import count_parameters, vgg

        cfg = self.cfg
        # the same seed on every rank: identical initial weights (DDP also broadcasts rank 0's)
        seed_everything(cfg.seed)
        model = vgg(cfg.model, self.task.output_size(len(self.classes)), crop_size=cfg.crop_size,
                    width=float(cfg.width), fc_width=cfg.fc_width, dropout=float(cfg.dropout),
                    batch_norm=cfg.batch_norm)
        scheme, path = parse_init(cfg.init)
        if init_ckpt is None and path is not None:  # a resumed --init from:CKPT run: the checkpoint has the weights
            self.init_text = f"from:{path}"
        elif init_ckpt is None:
            init_weights(model, scheme)
            self.init_text = scheme
        else:
            self.init_text = init_from(model, init_ckpt, path, rest=cfg.init_rest)
        if cfg.freeze == "features":
            model.features.requires_grad_(False)
            self.init_text += "; conv layers frozen (--freeze features)"
        self.n_params = count_parameters(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if cfg.sync_bn and self.info.distributed:
            if self.device.type != "cuda":
                raise UserError(f"--sync-bn: torch's SyncBatchNorm runs on CUDA devices only, and this run is on "
                                f"{self.device.type}; leave it out (the processes' BN statistics are averaged "
                                f"before each validation and checkpoint anyway)")
            # an extension: batch statistics over every process's micro-batch (same state-dict keys)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model  # the bare VGG (checkpoints, validation)
        self.net = distributed.wrap_ddp(model, self.info)  # what the training step runs
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.optimizer = make_optimizer(model, cfg, grad_scaler=self.amp == "fp16")
        # "decreased by a factor of 10 when the validation set accuracy stopped improving" (§3.1):
        # ReduceLROnPlateau, unless --lr-scheduler/--warmup-epochs (extensions) say otherwise
        self.warmup, self.scheduler = make_scheduler(self.optimizer, cfg,
                                                     mode="min" if self.task.lower_is_better else "max")
        self.ema = None
        if cfg.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            # an extension: the weights' exponential moving average, BN statistics included
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        # each rank its own dropout stream from here on (rank 0's is the single-process one)
        seed_everything(cfg.seed + 1_000_003 * self.info.rank)

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        """Continue exactly where `ckpt` stopped."""
        train = ckpt["train"]
        try:
            self.model.load_state_dict(ckpt["state_dict"], strict=True)
            self.optimizer.load_state_dict(train["optimizer"])
            self.scheduler.load_state_dict(train["scheduler"])
            if self.warmup is not None:
                self.warmup.load_state_dict(train["warmup"])
            if self.ema is not None:
                self.ema.load_state_dict(train["ema"])
            if train.get("scaler"):
                self.scaler.load_state_dict(train["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{self.resume_path}: cannot restore the training state: "
                                  f"{str(exc).splitlines()[0]}") from None
        self.epoch = int(train["epoch"])
        self.step_in_epoch = int(train["step_in_epoch"])
        self.global_step = int(train["global_step"])
        self.lr_reductions = int(train.get("lr_reductions", 0))
        self.best = train.get(self.best_key)
        self.best_epoch = train.get("best_epoch")
        self.history = [dict(h) for h in train.get("history", [])]
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_position(self.step_in_epoch * self.cfg.batch_size)
        rng = list(train["rng"])
        if len(rng) != self.info.world_size:
            self.log(f"note: the checkpoint was written by {len(rng)} process(es), this run has "
                     f"{self.info.world_size}: data order and augmentation continue exactly, dropout does not")
        restore_rng(rng[self.info.rank] if self.info.rank < len(rng) else rng[0])
        if int(train.get("steps_per_epoch", self.steps_per_epoch)) != self.steps_per_epoch:
            raise CheckpointError(f"{self.resume_path}: its epochs had {train['steps_per_epoch']} steps, this "
                                  f"training set gives {self.steps_per_epoch}: the training set or --batch-size "
                                  f"changed, so the run cannot continue exactly")
        self.totals = {k: type(v)(train.get("epoch_totals", {}).get(k, v)) for k, v in self.totals.items()}
        self.last_checkpoint = self.resume_path
        self.finished_before = bool(train.get("finished"))
        self.stopped = train.get("stopped")

    def extensions_text(self) -> str:
        """The settings beyond the paper that this run uses, in words ("" for the paper's protocol)."""
        cfg = self.cfg
        on = [f"{cfg.lr_scheduler} lr schedule" if cfg.lr_scheduler != "plateau" else "",
              f"{cfg.warmup_epochs}-epoch warm-up" if cfg.warmup_epochs else "",
              "AdamW" if cfg.optimizer == "adamw" else "",
              "no weight decay on biases and norms" if not cfg.decay_norm_bias else "",
              f"label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else "",
              f"mixup alpha {cfg.mixup_alpha:g}" if cfg.mixup_alpha else "",
              f"cutmix alpha {cfg.cutmix_alpha:g}" if cfg.cutmix_alpha else "",
              cfg.auto_augment if cfg.auto_augment != "none" else "",
              "no horizontal flip" if not cfg.hflip else "",
              f"EMA of the weights (decay {cfg.ema_decay:g}, ema.pt)" if cfg.ema_decay else "",
              "SyncBatchNorm" if cfg.sync_bn and self.info.distributed else "",
              "batch normalisation" if cfg.batch_norm else ""]
        return ", ".join(t for t in on if t)

    def big_on_a_cpu(self) -> bool:
        """A net of the paper's size on a CPU: a run of days (a plain `vgg train` is the full D)."""
        from vggnet.models import count_macs

        return self.device.type == "cpu" and count_macs(self.model, self.cfg.crop_size) >= CPU_NOTE_MACS

    def print_header(self, resume: Mapping[str, Any] | None) -> None:
        cfg = self.cfg
        w = self.info.world_size
        s = cfg.scale if isinstance(cfg.scale, int) else f"[{cfg.scale[0]}, {cfg.scale[1]}] (jittered per image)"
        task = f"; task {self.task.describe()}" if self.task.describe() else ""
        self.log(f"vgg train: {cfg.model} (width {cfg.width:g}, fc {cfg.fc_width}, {self.n_params:,} parameters, "
                 f"{len(self.classes)} classes), init {self.init_text}{task}")
        if self.settings_taken:
            self.log(f"settings {self.settings_taken}")
        self.log(f"data: {self.data_text}: {len(self.train_set)} training / {len(self.val_set)} validation images; "
                 f"S={s}, crop {cfg.crop_size}, validation at Q={cfg.val_scale}; mean RGB "
                 f"{', '.join(f'{v:.1f}' for v in self.stats['mean'])} from {self.stats_source}")
        if resume is None and parse_init(cfg.init)[1] is not None:
            p = self.preprocessing
            self.log(f"inputs normalised as the initial net's: pixels x {p.pixel_scale:g}, mean "
                     f"{', '.join(f'{v:.4g}' for v in p.mean)}, std {', '.join(f'{v:.4g}' for v in p.std)}")
        self.log(f"batch {cfg.batch_size} = {w} process{'es' if w > 1 else ''} x {self.micro} images x {self.accum} "
                 f"accumulation step{'s' if self.accum > 1 else ''}; {self.steps_per_epoch} steps per epoch; "
                 f"{'AdamW' if cfg.optimizer == 'adamw' else 'SGD'} lr {cfg.lr:g}"
                 f"{'' if cfg.optimizer == 'adamw' else f' momentum {cfg.momentum:g}'} weight decay {cfg.weight_decay:g}")
        extensions = self.extensions_text()
        if extensions:
            self.log(f"extensions beyond the paper: {extensions}")
        self.log(f"device {self.device}{' (' + self.info.backend + ')' if self.info.backend else ''}, amp {self.amp}, "
                 f"channels_last {'on' if self.channels_last else 'off'}, compile {'on' if cfg.compile else 'off'}, "
                 f"workers {cfg.workers}; output {self.out}")
        if self.big_on_a_cpu():
            self.log(f"note: this trains {cfg.model} at width {cfg.width:g} ({self.n_params:,} parameters, "
                     f"{cfg.crop_size}-px crops, {self.steps_per_epoch} steps of {cfg.batch_size} images per epoch) "
                     f"on a CPU; the time per epoch follows after the first step (small runs: `vgg demo`, "
                     f"configs/quickstart.yaml)")
        self.log(f"execution: {self.execution_reason}; {self.decode_text}")
        if resume is not None:
            self.log(f"resuming {self.resume_path}: epoch {self.epoch + 1}, step {self.step_in_epoch}/"
                     f"{self.steps_per_epoch} (global step {self.global_step})")
