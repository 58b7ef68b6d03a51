"""Our checkpoint format: make, atomic save, safe load, model from checkpoint.

A checkpoint is a `torch.save` of plain containers only (tensors, numbers,
strings, lists, dicts), so `torch.load(weights_only=True)` reads it and loading
a file never runs code from it. It carries everything needed to use the weights
correctly: the model's build arguments, the preprocessing it was trained with,
the class names and, for training checkpoints, the complete training state
(`TRAIN_STATE_KEYS`, written by `vggnet.engine`). Every part of vggnet reads and
writes weights through this module; foreign formats live in `vggnet.interop`.
See docs/architecture.md for the layout.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vggnet.errors import CheckpointError
from vggnet.models import VGG, vgg

__all__ = [
    "FORMAT",
    "VERSION",
    "CAFFE_PREPROCESSING",
    "TORCHVISION_PREPROCESSING",
    "TRAIN_STATE_KEYS",
    "make_checkpoint",
    "checkpoint_from_state",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "atomic_write",
    "unwrap",
    "is_checkpoint",
    "weights_checksum",
    "SKIP_CHECKSUM_ENV",
    "KINDS",
    "checkpoint_kind",
    "kind_from_contents",
    "require_kind",
    "verify_checksum",
    "check_finite",
]

FORMAT = "vggnet.checkpoint"
VERSION = 1

# The paper's preprocessing: 0-255 pixels minus the training set's mean RGB
# (here ImageNet's, as in the released Caffe models; training replaces it with
# the statistics of its own training set).
CAFFE_PREPROCESSING = {"pixel_scale": 255.0, "mean": [123.68, 116.779, 103.939], "std": [1.0, 1.0, 1.0]}
# torchvision's weights expect 0-1 pixels normalised by ImageNet mean and std.
TORCHVISION_PREPROCESSING = {"pixel_scale": 1.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


# What `ckpt["train"]` of a training checkpoint holds (vggnet.engine writes and reads it):
TRAIN_STATE_KEYS = (
    "epoch", "step_in_epoch", "steps_per_epoch", "global_step",  # where the run stands
    "sampler",                                                    # data order: seed, epoch, position
    "optimizer", "scheduler", "scaler",                           # optimisation state
    "rng",                                                        # every RNG of every process
    "world_size", "config", "task", "stats",                      # the run's settings and statistics
    "history", "lr_reductions", "best_metric", "best_epoch",     # validation so far
    "epoch_totals", "finished", "stopped",
)

def make_checkpoint(
    model: VGG,
    *,
    preprocessing: Mapping[str, Any],
    classes: list[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint dict for `model` (weights moved to CPU; DDP/compile wrappers unwrapped)."""
    model = unwrap(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return checkpoint_from_state(model.build_args, state, preprocessing=preprocessing, classes=classes,
                                 meta=meta, train=train)


def checkpoint_from_state(
    build: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    preprocessing: Mapping[str, Any],
    classes: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict for a model given by its build arguments and weights (no model needed)."""
    num_classes = int(build["num_classes"])
    if classes is None:
        classes = [str(i) for i in range(num_classes)]
    task = (meta or {}).get("task", "classification")
    if len(classes) != num_classes and task == "classification":
        raise ValueError(f"{len(classes)} class names for a model with {num_classes} outputs")
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "build": dict(build),
        "state_dict": dict(state_dict),
        "preprocessing": {"pixel_scale": float(preprocessing["pixel_scale"]),
                          "mean": [float(v) for v in preprocessing["mean"]],
                          "std": [float(v) for v in preprocessing["std"]]},
        "classes": [str(c) for c in classes],
        "meta": dict(meta or {}),
    }
    if train is not None:
        ckpt["train"] = dict(train)
    return ckpt


def unwrap(model: torch.nn.Module) -> VGG:
    """The VGG inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model  # type: ignore[return-value]


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call `write(file_object)` on a temporary file beside `path`, fsync it, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode open() would (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            # a failed write names no file (File too large, No space left): name the one being written
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    return path


# Set to 1 to load a checkpoint whose weights no longer match their checksum (after a deliberate edit).
SKIP_CHECKSUM_ENV = "VGGNET_SKIP_CHECKSUM"


def weights_checksum(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, in name order.

    Stored in every checkpoint we write (`weights_sha256`) and verified on load,
    so a flipped bit in the tensor data (a bad disk, a copy error) is an error
    naming the file, not a silently different net.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# What a checkpoint's net is, stored as ckpt["kind"]: what its outputs mean decides which commands may
# use it (a localiser's box coordinates are not class scores).
KINDS = {
    "classifier": "classification net (one score per class)",
    "localiser-scr": "SCR localisation net (one box for every class)",
    "localiser-pcr": "PCR localisation net (one box per class)",
}
# A `vgg transfer` classifier (linear SVMs over descriptors) is a safetensors file with this header key.
TRANSFER_CLASSIFIER_KEY = "vggnet.transfer.pipeline.classifier"


def kind_from_contents(ckpt: Mapping[str, Any]) -> str:
    """The kind a checkpoint's contents say, whatever its "kind" entry: `meta["task"]` (and the
    localisation head) when written by vggnet since tasks were recorded; for older files, the
    outputs against the class names (4 per class: PCR; 4 for another number of classes: SCR)."""
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
    task = meta.get("task")
    if task == "localisation":
        head = str((meta.get("task_settings") or {}).get("head", "")).lower()
        return f"localiser-{head}" if f"localiser-{head}" in KINDS else "localiser-pcr"
    if task:
        return "classifier" if task == "classification" else str(task)
    try:
        outputs, names = int(ckpt["build"]["num_classes"]), len(ckpt.get("classes") or [])
    except (KeyError, TypeError, ValueError):
        return "classifier"
    if names > 1 and outputs == 4 * names:
        return "localiser-pcr"
    if outputs == 4 and names not in (0, 4):
        return "localiser-scr"
    return "classifier"


def checkpoint_kind(ckpt: Mapping[str, Any]) -> str:
    """What a checkpoint's net is (a key of `KINDS`): its "kind" entry, or what its contents say."""
    kind = ckpt.get("kind")
    return str(kind) if kind else kind_from_contents(ckpt)


def require_kind(ckpt: Mapping[str, Any], where: str, kinds: Sequence[str], *, use: str) -> str:
    """A `CheckpointError` naming what the checkpoint is when it is not one of `kinds` (for `use`)."""
    kind = checkpoint_kind(ckpt)
    if kind not in kinds:
        wanted = " or ".join(KINDS.get(k, k) for k in kinds)
        hint = {"localiser-scr": "; use it with `vgg localize eval|predict --checkpoint`",
                "localiser-pcr": "; use it with `vgg localize eval|predict --checkpoint`",
                "classifier": "; use it with `vgg eval|predict`"}.get(kind, "")
        raise CheckpointError(f"{where} is a {KINDS.get(kind, kind)} ({kind}); {use} needs a {wanted}{hint}")
    return kind


def save_checkpoint(path: str | os.PathLike, ckpt: Mapping[str, Any]) -> Path:
    """Write `ckpt` to `path` atomically (temporary file, fsync, rename), with its weights' checksum
    and its kind (`checkpoint_kind`)."""
    blob = dict(ckpt)
    if isinstance(blob.get("state_dict"), Mapping):
        blob["weights_sha256"] = weights_checksum(blob["state_dict"])
    blob["kind"] = checkpoint_kind(blob)
    return atomic_write(path, lambda f: torch.save(blob, f))


def verify_checksum(ckpt: Mapping[str, Any], path: Path) -> None:
    """A `CheckpointError` when the stored checksum does not match the weights (files without one pass)."""
    stored = ckpt.get("weights_sha256")
    if stored is None or os.environ.get(SKIP_CHECKSUM_ENV) == "1":
        return
    if weights_checksum(ckpt["state_dict"]) != stored:
        raise CheckpointError(f"checkpoint {path}: its weights do not match the checksum stored with them (bits "
                              f"changed on disk or in a copy); use an earlier checkpoint, or, if you edited the "
                              f"weights on purpose, load it with {SKIP_CHECKSUM_ENV}=1")


def check_finite(state_dict: Mapping[str, Any], where: str, *, advice: str) -> None:
    """A `CheckpointError` naming the tensors of `state_dict` that hold NaN or infinite values."""
    bad = [k for k, t in state_dict.items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                              f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); {advice}")


def torch_load(path: Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """`torch.load(weights_only=True)` with a `CheckpointError` naming the file for anything unreadable."""
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory; give the file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): it was not written completely")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = lines[0] if lines else type(exc).__name__
        if first.startswith("Weights only load failed"):
            # torch's advice to retry with weights_only=False is wrong for damaged files and unsafe for others
            detail = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if "WeightsUnpickler" in line), "")
            first = ("a safe (weights_only) load refuses it: it is damaged, not a PyTorch file, or pickles "
                     f"Python objects{f' ({detail})' if detail else ''}")
        raise CheckpointError(
            f"{what} {path} cannot be read (truncated, corrupt, or not a vggnet/PyTorch file): {first}"
            f"{_safetensors_hint(path)}") from None


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: 8 bytes of header length, then the JSON header."""
    if path.suffix.lower() == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _safetensors_hint(path: Path) -> str:
    if not _is_safetensors(path):
        return ""
    if _is_transfer_classifier(path):
        return (f"; it is a `vgg transfer` classifier (linear SVMs over descriptors), not a net: apply it with "
                f"`vgg transfer predict {path.parent} IMAGE...`")
    return (f"; it is a safetensors file: convert it with `vgg import safetensors {path} --output CKPT.pt` "
            f"(a vggnet export keeps its classes and preprocessing)")


def _is_transfer_classifier(path: Path) -> bool:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return TRANSFER_CLASSIFIER_KEY in (f.metadata() or {})
    except Exception:  # not readable as safetensors: no hint
        return False


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def check_checkpoint(ckpt: Any, path: Path) -> dict[str, Any]:
    if not is_checkpoint(ckpt):
        hint = _safetensors_hint(path)
        if not hint and isinstance(ckpt, dict) and any(str(k).startswith("features.") for k in ckpt):
            hint = "; it looks like a bare state dict: convert it with `vgg import torchvision FILE --output CKPT`"
        raise CheckpointError(f"{path} is not a vggnet checkpoint (no format={FORMAT!r} entry){hint}")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt['version']}; this vggnet reads "
                              f"up to {VERSION}: upgrade vggnet")
    for key in ("build", "state_dict", "preprocessing", "classes"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry")
    verify_checksum(ckpt, path)  # every reader of a checkpoint file, export and import included
    stored, said = ckpt.get("kind"), kind_from_contents(ckpt)
    if stored is not None and said in KINDS and stored != said:
        raise CheckpointError(f"checkpoint {path}: its kind entry says {stored!r}, and its contents (meta task, "
                              f"outputs, classes) say {said!r}: it was edited or damaged")
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a vggnet checkpoint safely; a `CheckpointError` naming the file if it is not one."""
    path = Path(path)
    ckpt = check_checkpoint(torch_load(path, map_location), path)
    return ckpt


def model_from_checkpoint(
    ckpt: Mapping[str, Any] | str | os.PathLike, map_location: str | torch.device = "cpu", *,
    kinds: Sequence[str] | None = None, use: str = "this command",
) -> tuple[VGG, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (strict).

    The model is built on the meta device and takes CPU copies of the
    checkpoint's tensors (in the model's dtypes), so no time goes into an
    initialisation that would be overwritten (about 1 s for net D), and the
    model shares no memory with `ckpt`. With `kinds`, a checkpoint of another
    kind (`KINDS`) is refused naming what it is.
    """
    source = "checkpoint"
    if not isinstance(ckpt, Mapping):
        source = str(ckpt)
        ckpt = load_checkpoint(ckpt, map_location=map_location)
    if kinds is not None:  # what the net's outputs mean, before building it (see KINDS)
        require_kind(ckpt, source, kinds, use=use)
    try:
        with torch.device("meta"):
            model = vgg(**ckpt["build"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source} has invalid build arguments {ckpt['build']}: {exc}") from None
    expected = model.state_dict()
    state = {k: v.to(device="cpu", dtype=expected[k].dtype, copy=True) if k in expected else v
             for k, v in ckpt["state_dict"].items()}  # a CPU model, as before, whatever map_location says
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{source} does not match the model it describes "
                              f"({ckpt['build']}): {' '.join(lines[1:3])[:300]} ...") from None
    return model, dict(ckpt)


# =========================================================================== interop
#
# Foreign weights in (`vgg import`), our weights out (`vgg export`). Every
# importer turns a file into the same two things — the build arguments of the
# net it holds (inferred from the shapes, or given) and a state dict in our
# (= torchvision's) layout — checks every tensor against `vgg(**build)` and
