"""Run state: what a checkpoint must capture to continue exactly, and how a run finds where to continue.

- every RNG of the process (Python, numpy, torch CPU and CUDA) as plain
  containers (`capture_rng`, `restore_rng`);
- the run folder's checkpoints, newest first (`find_checkpoints`), and
  `last.pt`/`best.pt` as hard links made atomically (`link_or_copy`);
- the choice of the checkpoint to resume, made once on rank 0 and shared with
  every rank (`agree_on_resume`);
- the start from another net's weights (`--init from:CKPT`, `init_from`):
  every layer that fits is kept, the rest is initialised afresh and named;
- SIGTERM/SIGINT turned into "finish the step, checkpoint, stop" (`StopRequest`);
- the optimizer and the execution settings (`make_optimizer`, `resolve_execution`).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from vggnet import distributed
from vggnet.checkpoint import atomic_write, load_checkpoint
from vggnet.engine.config import TrainConfig, parse_init
from vggnet.errors import CheckpointError, UserError
from vggnet.execution import choose_execution

__all__ = ["settings_from_init", "build_differences", "capture_rng", "restore_rng", "seed_everything", "find_checkpoints", "link_or_copy", "plain",
           "StopRequest", "RunFolderLock", "claim_run_folder", "locate_resume", "agree_on_resume", "init_from",
           "make_optimizer", "resolve_execution", "make_scheduler", "parameter_groups"]


def capture_rng() -> dict[str, Any]:
    """Every RNG state as plain containers (torch.load(weights_only=True) reads them)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [int(version), [int(v) for v in state], gauss],
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(state: Mapping[str, Any]) -> None:
    version, values, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in values), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def find_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Training checkpoints of a run directory, newest first: checkpoint_*.pt by step, then last.pt.

    last.pt is a link to the newest numbered checkpoint, made just after it is
    written; a run killed between the two has a numbered checkpoint newer than
    last.pt, so the numbered ones come first.
    """
    out = Path(output_dir)
    found = sorted(out.glob("checkpoint_*.pt"), key=lambda p: p.name, reverse=True)
    last = out / "last.pt"
    return found + ([last] if last.is_file() else [])


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src`, atomically: a hard link (no extra space), or a copy."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
    except OSError:
        import shutil

        with open(src, "rb") as f:
            atomic_write(dst, lambda out: shutil.copyfileobj(f, out))
        return
    os.replace(tmp, dst)


def plain(value: Any) -> Any:
    """Config values as YAML/checkpoint-safe plain containers."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


class StopRequest:
    """SIGTERM/SIGINT -> finish the step, checkpoint, exit. A second signal stops at once."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.signal: int | None = None
        self._log = log
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # second signal: give up on the clean stop
            self.uninstall()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.signal = signum
        self._log(f"received {signal.Signals(signum).name}: finishing the current step and writing a checkpoint "
                  f"(send it again to stop at once)")

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled in the main thread (e.g. not under some test runners)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()



# The files a run writes besides its checkpoints: in a folder that is not a run, they are the user's.
RUN_OUTPUTS = ("config.yaml", "metrics.csv", "curves.png", "train.log", "last.pt", "best.pt", "ema.pt", "tensorboard")
CONFIG_HEADERS = ("# the resolved settings of this run", "# vgg train:")  # config.yaml's first line, now and before
LOCK_NAME = ".vggnet.lock"


class RunFolderLock:
    """An exclusive `fcntl.flock` on `DIR/.vggnet.lock` for the life of a run.

    The kernel drops the lock when its process ends, however it ends (kill -9
    included), so a stale lock file never blocks a resume; the PID written in
    it only names the holder in the message of a refused run.
    """

    def __init__(self, folder: Path) -> None:
        import fcntl

        self.path = folder / LOCK_NAME
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self.fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self.fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise UserError(f"--output-dir {folder} is in use by another run (process {holder}, which holds "
                                f"{self.path}); two runs in one folder would delete each other's checkpoints: "
                                f"wait for it to end or choose another --output-dir") from None
            raise
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def remove_if_unused(self) -> None:
        """Remove the folder if it holds nothing but this lock (a run that failed before writing anything)."""
        folder = self.path.parent
        if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            self.path.unlink(missing_ok=True)
            self.release()
            try:
                folder.rmdir()
            except OSError:
                pass

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = -1


def claim_run_folder(out: Path) -> RunFolderLock:
    """Make `out` this run's folder, or a `UserError` saying why it cannot be (before any work).

    `out` must be a directory we can write in, not another run's at the moment
    (an exclusive lock, held until `release()`), and not a folder of other
    files that the run's outputs would overwrite.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file, not a folder; choose a folder for the run's checkpoints")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".vggnet-write-test.{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--output-dir {out}: cannot write there ({exc.strerror or exc}); the run's checkpoints "
                        f"need a writable folder with free space") from None
    lock = RunFolderLock(out)
    try:
        if not find_checkpoints(out) and not _is_our_config(out / "config.yaml"):
            clash = [name for name in RUN_OUTPUTS if (out / name).exists()]
            if clash:
                others = sorted(p.name for p in out.iterdir() if p.name not in clash and p.name != LOCK_NAME)
                listed = ", ".join(clash + others[:5]) + (" ..." if len(others) > 5 else "")
                raise UserError(f"--output-dir {out} is not a vggnet run folder but holds {listed}; the run would "
                                f"overwrite {', '.join(clash)}: choose an empty or new folder")
    except BaseException:
        lock.release()
        raise
    return lock


def _is_our_config(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith(CONFIG_HEADERS)
    except OSError:
        return False


def locate_resume(cfg: TrainConfig, out: Path, log: Callable[[str], None],
                  check: Callable[[Mapping[str, Any], Path], None]) -> tuple[dict[str, Any] | None, Path | None]:
    """(the checkpoint to continue, loaded; its path), or (None, None) for a fresh run.

    `check(ckpt, path)` raises `CheckpointError` for a checkpoint this run cannot
    continue (weights only, other settings, another task); `--resume auto` then
    tries the previous one. Errors name the file."""
    if cfg.resume is None:
        existing = find_checkpoints(out)
        if existing:
            raise UserError(f"--output-dir {out} already holds checkpoints of a run ({existing[0].name}); "
                            f"pass --resume auto to continue it, or choose another --output-dir")
        return None, None
    if cfg.resume == "auto" or Path(cfg.resume).is_dir():
        folder = out if cfg.resume == "auto" else Path(cfg.resume)
        candidates = find_checkpoints(folder)
        if not candidates:
            log(f"--resume auto: no checkpoint in {folder}; starting a new run")
            return None, None
        errors: dict[str, list[str]] = {}  # reason (the file's name taken out) -> files
        for path in candidates:
            try:
                ckpt = load_checkpoint(path)
                check(ckpt, path)
            except CheckpointError as exc:
                reason = str(exc).replace(str(path), "{}")
                if reason not in errors:  # one warning per reason, not one per file
                    log(f"warning: --resume auto: skipping {exc}; trying the previous checkpoint")
                errors.setdefault(reason, []).append(path.name)
                continue
            return ckpt, path
        raise CheckpointError(f"--resume auto: none of the {len(candidates)} checkpoints in {folder} can be "
                              f"used:\n  " + "\n  ".join(
                                  reason.replace("{}", files[0]) + (f" (also {', '.join(files[1:])})"
                                                                    if len(files) > 1 else "")
                                  for reason, files in errors.items()))
    path = Path(cfg.resume)
    try:
        ckpt = load_checkpoint(path)
        check(ckpt, path)
    except CheckpointError as exc:
        others = [p.name for p in find_checkpoints(path.parent) if p.resolve() != path.resolve()]
        hint = (f"; the other checkpoints in {path.parent} are kept: {', '.join(others[:5])} "
                f"(--resume auto tries them newest first)") if others else ""
        raise CheckpointError(f"--resume: {exc}{hint}") from None
    return ckpt, path


def agree_on_resume(cfg: TrainConfig, info: distributed.DistInfo, out: Path, log: Callable[[str], None],
                    check: Callable[[Mapping[str, Any], Path], None]) -> tuple[dict[str, Any] | None, Path | None]:
    """`locate_resume` decided once, on rank 0, and the same checkpoint loaded on every rank.

    Each rank looking in its own --output-dir would let the ranks of a multi-node
    run disagree (a node with its own disk finds no checkpoint and starts over)
    and an error raised on rank 0 alone would leave the others waiting forever.
    """
    if not distributed.is_distributed():
        return locate_resume(cfg, out, log, check)
    chosen, error, ckpt, path = None, None, None, None
    if info.is_main:
        try:
            ckpt, path = locate_resume(cfg, out, log, check)
            chosen = None if ckpt is None else str(path)
        except UserError as exc:
            error = (isinstance(exc, CheckpointError), str(exc))
    chosen, error = distributed.broadcast_object((chosen, error))
    if error is not None:
        raise (CheckpointError if error[0] else UserError)(error[1] if info.is_main else f"(from rank 0) {error[1]}")
    problem = None
    if chosen is not None and not info.is_main:
        try:
            ckpt, path = load_checkpoint(chosen), Path(chosen)
        except CheckpointError as exc:
            problem = f"rank {info.rank}: {exc}"
    problems = [p for p in distributed.all_gather_object(problem) if p]
    if problems:
        raise CheckpointError(
            f"rank 0 resumes from {chosen}, but not every process can read it; a multi-node run needs its "
            f"--output-dir on a filesystem that every node shares:\n  " + "\n  ".join(problems))
    return ckpt, path


def describe_build(build: Mapping[str, Any]) -> str:
    return (f"{build.get('name')} width {build.get('width')} fc {build.get('fc_width')} crop {build.get('crop_size')} "
            f"outputs {build.get('num_classes')}")


def _layers(keys: list[str]) -> list[str]:
    """State-dict keys -> their layers, in order (classifier.6.weight, classifier.6.bias -> classifier.6)."""
    return list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))


@torch.no_grad()
def init_from(model: nn.Module, ckpt: Mapping[str, Any], path: str, *, rest: str) -> str:
    """Start `model` from the weights of checkpoint `ckpt` (`--init from:CKPT`); returns what was done, in words.

    - A net of the same configuration (the paper's S=384 from S=256, multi-scale
      from S=384; a localisation net from its classification net; a net for
      other classes): every tensor whose name and shape fit is copied; the
      layers that do not fit (the last FC when the number of outputs differs,
      FC1 when the crop differs) are initialised with `rest` and named.
    - A net A for a deeper configuration (§3.1's pre-initialisation): A's first
      four conv layers and its three FC layers; the rest `rest`.
    """
    from vggnet.init import init_from_a, init_weights

    build = dict(ckpt["build"])
    mine = dict(model.build_args)
    state = ckpt["state_dict"]
    if build.get("name") == mine["name"]:
        own = model.state_dict()
        # a layer is copied whole or not at all (FC1's bias fits at another crop; its weight does not)
        misfit = {k.rsplit(".", 1)[0] for k in own
                  if k not in state or tuple(state[k].shape) != tuple(own[k].shape)}
        fits = [k for k in own if k.rsplit(".", 1)[0] not in misfit]
        missing = [k for k in own if k not in fits]
        if len(fits) == len(own) and len(state) == len(own):
            model.load_state_dict(state, strict=True)
            return f"all weights of {path}"
        convs = [k for k in own if k.startswith("features.")]
        if any(k in missing for k in convs):
            raise UserError(f"--init from:{path}: its conv layers do not fit the model: "
                            f"{build_differences(build, mine, ('width', 'batch_norm'))} (checkpoint vs model); "
                            f"the same --width and --batch-norm are needed")
        init_weights(model, rest)
        for k in fits:
            own[k].copy_(state[k])
        redone = _layers(missing)
        return (f"{path}, except {', '.join(redone)} (re-initialised {rest}: "
                f"{', '.join(_shape_note(k, state, own) for k in missing if k.endswith('weight'))})")
    if build.get("name") != "A":
        raise UserError(f"--init from:{path}: the checkpoint is configuration {build.get('name')} "
                        f"({describe_build(build)}) and the model is {describe_build(mine)}; from:CKPT takes "
                        f"either a net of the same configuration (all weights that fit) or a net A (§3.1's "
                        f"pre-initialisation)")
    differ = build_differences(build, mine, ("width", "batch_norm", "fc_width"))
    if differ:  # the layers §3.1 copies from A would not fit
        raise UserError(f"--init from:{path}: net A and the model {mine['name']} differ in {differ} (checkpoint vs "
                        f"model); pre-initialisation copies A's convs and FC layers, so these must be equal")
    init_weights(model, rest)
    own = model.state_dict()
    # FC1 at another crop, FC3 for other classes: re-initialised, as for a net of the same configuration
    redone = [layer for layer in ("classifier.0", "classifier.6")
              if any(k.startswith(layer + ".") and k in own and tuple(v.shape) != tuple(own[k].shape)
                     for k, v in state.items())]
    state = {k: v for k, v in state.items() if k.rsplit(".", 1)[0] not in redone}
    try:
        copied = init_from_a(model, state, source_name=path)
    except ValueError as exc:
        raise UserError(f"--init from:{path}: {exc}") from None
    note = (f" ({', '.join(redone)} re-initialised {rest}: {build_differences(build, mine, ('crop_size', 'num_classes'))})"
            if redone else "")
    return f"net A's first 4 conv and 3 FC layers from {path} ({len(copied)} tensors), the rest {rest}{note}"


# What a build argument is called in a message, and the flag that sets it.
_BUILD_WORDS = {"name": ("configuration", "--model"), "width": ("width", "--width"),
                "fc_width": ("fc width", "--fc-width"), "batch_norm": ("batch norm", "--batch-norm"),
                "crop_size": ("crop size", "--crop-size"), "num_classes": ("classes", None),
                "dropout": ("dropout", "--dropout")}


def build_differences(theirs: Mapping[str, Any], mine: Mapping[str, Any], keys: Any = tuple(_BUILD_WORDS)) -> str:
    """The build arguments in which two nets differ, in words: "configuration A vs D, width 0.125 vs 0.25"
    (empty if none of `keys` differs)."""
    defaults = {"width": 1.0, "fc_width": 4096, "batch_norm": False, "crop_size": 224, "dropout": 0.5}
    out = []
    for key in keys:
        a, b = theirs.get(key, defaults.get(key)), mine.get(key, defaults.get(key))
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            same = float(a) == float(b)
        else:
            same = a == b
        if not same:
            show = (lambda v: "on" if v else "off") if key == "batch_norm" else (lambda v: f"{v:g}" if isinstance(
                v, float) else str(v))
            out.append(f"{_BUILD_WORDS[key][0]} {show(a)} vs {show(b)}")
    return ", ".join(out)


# TrainConfig settings that `--init from:CKPT` brings from the checkpoint unless given explicitly.
INIT_SETTINGS = ("model", "width", "fc_width", "batch_norm", "crop_size", "dropout", "scale")


def settings_from_init(cfg: TrainConfig) -> str | None:
    """`--init from:CKPT`: the net's shape comes from the checkpoint (configuration, width, fc width,
    batch norm, crop size, dropout, and its training scale) for every one of these settings that
    `cfg` leaves unset (None: not given as a flag, a YAML key or a `TrainConfig` argument). Changes
    `cfg` in place; returns what was taken, in words. `vggnet.engine.train` calls it, once, for every
    run (command line or Python), before `TrainConfig.validate()` fills what is still unset.

    A setting given overrides where that is meaningful: `--model` of a deeper net with a net A
    (§3.1's pre-initialisation), `--crop-size` (FC1 re-initialised), `--fc-width` for the same
    configuration (the FC layers re-initialised), `--scale`, `--dropout`. Where it cannot be (the
    convs would not fit), a `UserError` names both values and the flag to drop. Preprocessing and
    statistics already come from the checkpoint (`TrainerSetup`)."""
    from vggnet.models import resolve_name

    _, path = parse_init(cfg.init)
    if path is None:
        return None
    explicit = {key for key in INIT_SETTINGS if getattr(cfg, key) is not None}
    if "model" in explicit:
        if not isinstance(cfg.model, str):
            raise UserError(f"--model must be text, got {cfg.model!r}")
        try:
            cfg.model = resolve_name(cfg.model)
        except ValueError as exc:
            raise UserError(f"--model: {exc}") from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # the header; tensors stay on disk
    except FileNotFoundError:
        raise CheckpointError(f"--init from:{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - the engine's own load names what is wrong, with its remedies
        ckpt = load_checkpoint(path) if Path(path).exists() else None
        if ckpt is None:
            raise CheckpointError(f"--init from:{path}: cannot be read ({exc})") from None
    build = ckpt.get("build") if isinstance(ckpt, Mapping) else None
    if not isinstance(build, Mapping) or "name" not in build:
        return None  # not a vggnet checkpoint: the engine's load names the problem
    theirs = {"model": resolve_name(build["name"]), "width": float(build.get("width", 1.0)),
              "fc_width": int(build.get("fc_width", 4096)), "batch_norm": bool(build.get("batch_norm", False)),
              "crop_size": int(build.get("crop_size", 224)), "dropout": float(build.get("dropout", 0.5)),
              "scale": (ckpt.get("meta") or {}).get("scale")}
    model_given = "model" in explicit and resolve_name(cfg.model) != theirs["model"]
    if model_given and theirs["model"] != "A":
        raise UserError(f"--model {cfg.model} and from:{path}'s configuration {theirs['model']} differ: drop --model "
                        f"to fine-tune {theirs['model']}, or initialise {cfg.model} from a net A (§3.1)")
    fixed = ("width", "batch_norm") + (("fc_width",) if model_given else ())
    for key in fixed:
        if key in explicit and build_differences(theirs, {key: getattr(cfg, key)}, (key,)):
            flag = _BUILD_WORDS[key][1]
            mine = getattr(cfg, key)
            raise UserError(f"{flag} {'(on)' if mine is True else mine} and from:{path}'s {_BUILD_WORDS[key][0]} "
                            f"{theirs[key]} differ: its layers would not fit; drop {flag}")
    taken = []
    for key in INIT_SETTINGS:
        if key in explicit or theirs[key] is None:
            continue
        if key == "model" and model_given:
            continue
        if key == "scale" and "crop_size" in explicit:
            continue  # another crop: S follows it (round(crop x 256/224)) unless --scale says otherwise
        if key == "dropout" and model_given:
            continue  # a deeper net from A: the paper's own training, not A's settings
        value = theirs[key]
        taken.append(f"{key.replace('_', ' ')} {value if not isinstance(value, list) else ':'.join(map(str, value))}")
        setattr(cfg, key, value)
    return (f"from {path}: {', '.join(taken)} (a setting given wins)" if taken else None)


def _shape_note(key: str, state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> str:
    theirs = tuple(state[key].shape) if key in state else "absent"
    return f"{key.rsplit('.', 1)[0]} {theirs} -> {tuple(own[key].shape)}"


def resolve_execution(amp: str, channels_last: str, device: torch.device) -> tuple[str, bool]:
    """`--amp` and `--channels-last` (auto, or a choice) -> (bf16 | fp16 | off, channels_last) on `device`.

    The decision is `vggnet.execution.choose_execution` (bf16 and channels_last
    on CUDA and on CPUs that compute bf16 natively, fp32 NCHW on the others),
    shared with `vgg eval` and `vgg predict`; it also says why, for the run log.
    An explicit fp16 runs anywhere (CPU autocast and GradScaler support it):
    slow on most CPUs, but the same code path as on a GPU, scaler state in the
    checkpoints included.
    """
    chosen = choose_execution(amp, channels_last, device)
    return chosen.amp, chosen.channels_last


def make_optimizer(model: nn.Module, cfg: TrainConfig, grad_scaler: bool = False) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay (§3.1), as `torch.optim.SGD` defines them
    (or AdamW with `--optimizer adamw`; biases and BatchNorm weights without decay
    with `--no-decay-norm-bias`: extensions beyond the paper).

    The fused implementation (weight decay, momentum and update in one pass over
    each tensor) where this torch and device have it: the same update as the
    default implementation up to rounding, and about 3x faster on a CPU, where
    the optimizer step over VGG's 100M+ FC weights is a real part of a step
    (docs/benchmarks.md, "Training step").

    Not with a gradient scaler (`--amp fp16`, `grad_scaler=True`): the scaler
    then hands overflow steps to the fused kernel instead of skipping them, and
    fused SGD allocates its momentum buffers uninitialised on the first step
    and leaves them so when that step overflows (as fp16 runs do at the start,
    while the scale settles), so the next step adds 0.9 x garbage to every
    weight. The default implementation is never called on a skipped step.
    """
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    params: Any = [p for p in model.parameters() if p.requires_grad]  # frozen layers (--freeze) are not optimised
    optimizer_class: Any = torch.optim.SGD
    if getattr(cfg, "optimizer", "sgd") == "adamw":  # an extension: torch's AdamW, decoupled weight decay
        optimizer_class, kwargs = torch.optim.AdamW, dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if not getattr(cfg, "decay_norm_bias", True):
        params = parameter_groups(model, cfg.weight_decay)
    if grad_scaler:
        return optimizer_class(params, **kwargs)
    try:
        return optimizer_class(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return optimizer_class(params, **kwargs)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """`--no-decay-norm-bias` (an extension, as in torchvision's references and timm): two groups,
    weights of conv and FC layers with `weight_decay`, and biases and BatchNorm weights (every
    one-dimensional parameter) without."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, *, mode: str) -> tuple[Any, Any]:
    """(warm-up scheduler or None, main scheduler), both stepped once per epoch by the loop.

    plateau: §3.1, `ReduceLROnPlateau` on the task's validation metric (`mode` min
    or max). step and cosine are extensions (torchvision's references):
    `StepLR(--lr-step-size, gamma=--lr-factor)` and `CosineAnnealingLR` to 0 at
    `--epochs`. `--warmup-epochs W`: `LinearLR` from 1% of the lr to the lr over
    the first W epochs, after which the main scheduler takes over (it counts its
    epochs from there)."""
    from torch.optim import lr_scheduler as sched

    warmup = None
    if cfg.warmup_epochs:
        warmup = sched.LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=cfg.warmup_epochs)
    if cfg.lr_scheduler == "step":
        main: Any = sched.StepLR(optimizer, step_size=cfg.lr_step_size, gamma=cfg.lr_factor)
    elif cfg.lr_scheduler == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs - cfg.warmup_epochs)
    else:
        main = sched.ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.lr_factor, patience=cfg.lr_patience)
    return warmup, main
