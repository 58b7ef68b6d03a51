"""Transfer (Appendix B of the paper): very deep features and linear SVMs on new datasets.

The descriptor of an image: the net without its last FC layer, applied densely
(`VGG.features_map`: FC1 as a grid x grid conv, FC2 as a 1x1 conv, after ReLU) to
the whole image rescaled so its smallest side is Q, globally average-pooled to
`fc_width` numbers (4096 in the paper), averaged with the descriptor of the
horizontally flipped image. Several Q are stacked (concatenated) or averaged
(`aggregation`; the paper averages for VOC and stacks for Caltech); the
descriptors of several nets are stacked (the paper's D+E fusion); the result is
L2-normalised. Always in eval mode. One-vs-rest linear SVMs are trained on the
descriptors, C chosen by cross-validation on the training split only.

    vgg features run/best.pt --data DIR --split train --test-scales 256,384,512 --out train.safetensors
    vgg transfer D.pt E.pt --data VOCdevkit/VOC2007 --aggregate average --output-dir voc07 --json
    vgg transfer D.pt --data 101_ObjectCategories --train-per-class 30 --test-per-class 50 --splits 3 \\
        --exclude-class BACKGROUND_Google --aggregate stack
    vgg transfer predict voc07 photo.jpg more_photos/

Images of different sizes are batched by rescaled size, exactly as dense
evaluation does (`vggnet.evaluate._run_pass`). Descriptor files are written in
chunks, so an interrupted `vgg features` continues where it stopped, and are keyed
by the checkpoints' content (SHA-256), the scales, the flip and the aggregation,
so nothing is ever computed twice.

Under torchrun (`torchrun --nproc-per-node=8 -m vggnet.cli features ...`, or
`transfer`) the descriptors scale as `vgg eval` does: rank r describes images r,
r+W, r+2W, ... of each chunk and the finished rows are all-gathered, so every
rank holds each chunk's descriptors, the ones a single process computes. Rank 0
alone reads the files (what to resume or reuse is its decision, broadcast to the
others), writes the chunks and the file, prints, and in `vgg transfer` fits the
SVMs after the others have left the process group.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from vggnet import distributed
from vggnet.errors import CheckpointError, DataError, UserError
from vggnet.evaluate import (_gather_shards, _identity_preprocessing, _load_nets, _parse_scales, _rank_world,
                             _resolve_device, _run_pass, _with_transform)
from vggnet.execution import choose_execution
from vggnet.models import VGG

__all__ = [
    "AGGREGATIONS", "ImageSet", "list_images", "split_per_class", "pooled_descriptor", "checkpoint_digest",
    "DescriptorExtractor", "Features", "load_features", "LinearSVMs", "select_C", "voc07_ap", "voc_area_ap",
    "multilabel_metrics", "singlelabel_metrics", "transfer", "predict_transfer", "pixel_descriptors",
    "demo_transfer", "add_features_arguments", "run_features", "add_transfer_arguments", "run_transfer",
]

AGGREGATIONS = ("average", "stack")
FEATURES_FORMAT = "vggnet.features"
CLASSIFIER_FORMAT = "vggnet.transfer.classifier"
# C of the linear SVM, chosen by cross-validation over this log grid (descriptors are L2-normalised).
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
T = TypeVar("T")


# --------------------------------------------------------------------------- torch.distributed
#
# Under torchrun every rank computes the descriptors of its shard of the images
# (rows r, r+W, ... as `vgg eval` does) and all_gather reassembles them, so every
# rank holds every descriptor; rank 0 alone reads and writes files and fits SVMs.
# The helpers below keep the ranks in step: whatever rank 0 decides from the files
# it sees is broadcast, and an error on one rank is raised on every rank instead of
# leaving the others blocked in their next collective.


def _agree(error: Exception | None) -> None:
    """Collective under torch.distributed: raise on every rank if `error` happened on any rank.

    The rank that failed raises its own exception (with its traceback); the others
    raise one of the same `UserError` class (else a RuntimeError) naming that rank.
    In a single process `error` is simply raised.
    """
    if not distributed.is_distributed():
        if error is not None:
            raise error
        return
    mine = None
    if error is not None:
        cls = type(error) if isinstance(error, UserError) else None
        mine = (cls, str(error) if cls else f"{type(error).__name__}: {error}")
    reports = distributed.all_gather_object(mine)
    if error is not None:
        raise error
    for rank, report in enumerate(reports):
        if report is not None:
            cls, message = report
            raise (cls or RuntimeError)(f"(rank {rank}) {message}")


def _on_main(action: Callable[[], T]) -> T | None:
    """`action()` on rank 0 only (files are read and written there); None on the other ranks.

    Every rank must call it: a failure on rank 0 is raised on every rank (`_agree`).
    """
    rank, _ = _rank_world()
    result, error = None, None
    if rank == 0:
        try:
            result = action()
        except Exception as exc:
            error = exc
    _agree(error)
    return result


@contextmanager
def _process_group(device: str | torch.device | None) -> Iterator[distributed.DistInfo]:
    """Join the process group under torchrun (as `vgg eval` does) for the body, and always leave it.

    Yields this process's `DistInfo` (rank, world size, its device). A group that
    was already initialised by the caller is left alone.
    """
    joined = not (dist.is_available() and dist.is_initialized())
    info = distributed.setup(device)
    try:
        yield info
    finally:
        if joined and info.distributed:
            distributed.cleanup()


# --------------------------------------------------------------------------- image sets


@dataclass
class ImageSet:
    """Image files with labels: `(N,)` class indices, or `(N, C)` int8 in {1, 0, -1} when multi-label
    (VOC: 1 present, 0 only difficult instances, -1 absent)."""

    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    source: str = ""

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def subset(self, rows: Sequence[int]) -> ImageSet:
        rows = list(rows)
        return ImageSet([self.paths[i] for i in rows], self.labels[rows], self.classes, self.source)

    def targets(self) -> np.ndarray:
        """(N, C) in {1, 0, -1}: one-vs-rest targets (0 = ignored for that class)."""
        if self.multi_label:
            return self.labels
        out = np.full((len(self.paths), len(self.classes)), -1, dtype=np.int8)
        out[np.arange(len(self.paths)), self.labels] = 1
        return out


def list_images(data: str | os.PathLike, split: str | None = None, *, classes: Sequence[str] | None = None,
                exclude: Sequence[str] = ()) -> ImageSet:
    """The images of `data`: a VOC devkit folder's image set `split`, the class folders of
    `data/split` (ImageFolder), or, with no split, the class folders of `data` itself."""
    from vggnet.data.datasets import build_dataset
    from vggnet.data.voc import is_voc_devkit, read_voc_split

    root = Path(data)
    if not root.is_dir():
        raise UserError(f"--data {data}: no such directory")
    if is_voc_devkit(root):
        if split is None:
            raise UserError(f"--data {data} is a VOC devkit folder: name its image set with --split "
                            f"(train, val, trainval or test)")
        paths, labels, names = read_voc_split(root, split, classes)
        return ImageSet(paths, labels, names, f"{root} ({split}, VOC)")
    found = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    if split is None and found:
        raise UserError(f"--data {data} has split folders ({', '.join(found)}); name one with --split, "
                        f"or point --data at a folder of class folders")
    if classes is not None:  # the training split's classes; excluded folders still need a name to be dropped
        classes = list(classes) + [c for c in exclude if c not in classes]
    ds = build_dataset(root, split=split or root.name, classes=classes, strict=True)
    names = list(ds.classes)
    unknown = [c for c in exclude if c not in names]
    if unknown:
        raise UserError(f"--exclude-class {unknown[0]}: no such class in {ds.root} (classes: {', '.join(names[:8])}"
                        f"{' ...' if len(names) > 8 else ''})")
    kept = [c for c in names if c not in exclude]
    remap = {names.index(c): i for i, c in enumerate(kept)}
    samples = [(p, remap[t]) for p, t in ds.samples if t in remap]
    return ImageSet([p for p, _ in samples], np.array([t for _, t in samples], dtype=np.int64), kept,
                    f"{ds.root}")


def split_per_class(images: ImageSet, train_per_class: int, test_per_class: int | None, seed: int
                    ) -> tuple[list[int], list[int]]:
    """Caltech's protocol: per class, `train_per_class` random images to train and at most
    `test_per_class` of the others to test. Deterministic per seed; the two never overlap."""
    if images.multi_label:
        raise UserError("--train-per-class splits a single-label folder of classes, not a multi-label VOC set")
    train: list[int] = []
    test: list[int] = []
    for c, name in enumerate(images.classes):
        rows = np.flatnonzero(images.labels == c)
        if len(rows) <= train_per_class:
            raise DataError(f"class {name!r} has {len(rows)} images; --train-per-class {train_per_class} needs at "
                            f"least {train_per_class + 1} ({train_per_class} to train, at least one to test); "
                            f"lower it or exclude the class with --exclude-class {name}")
        # one stream per (seed, class): a class's split does not depend on the other classes
        order = rows[np.random.default_rng([seed, c]).permutation(len(rows))]
        train += order[:train_per_class].tolist()
        rest = order[train_per_class:]
        test += (rest if test_per_class is None else rest[:test_per_class]).tolist()
    return sorted(train), sorted(test)


# --------------------------------------------------------------------------- descriptors


@torch.no_grad()
def pooled_descriptor(model: VGG, images: torch.Tensor, *, flip: bool = True) -> torch.Tensor:
    """`(N, fc_width)`: the dense penultimate map, globally averaged, averaged with the flipped image's."""
    n = images.shape[0]
    x = torch.cat([images, images.flip(-1)]) if flip else images
    f = model.features_map(x).float().mean(dim=(2, 3))   # (N or 2N, fc_width) global average pooling
    return (f[:n] + f[n:]) / 2 if flip else f


def checkpoint_digest(checkpoint: str | os.PathLike | Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint file's bytes (of its tensors, in key order, for an in-memory checkpoint)."""
    h = hashlib.sha256()
    if isinstance(checkpoint, Mapping):
        for k, v in sorted(checkpoint["state_dict"].items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
    try:
        with open(checkpoint, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise CheckpointError(f"{checkpoint}: cannot read the checkpoint ({exc.strerror or exc})") from None
    return h.hexdigest()


def _digest(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def default_scales(crop_size: int) -> list[int]:
    """The paper's Q = 256, 384, 512 for 224 crops, scaled to `crop_size` (multiples of 8)."""
    return sorted({max(crop_size, int(round(q * crop_size / 224 / 8)) * 8) for q in (256, 384, 512)})


@dataclass
class Features:
    """A descriptor file: `(N, D)` L2-normalised descriptors with labels, paths and the settings."""

    descriptors: np.ndarray
    images: ImageSet
    key: str
    settings: dict[str, Any]


class DescriptorExtractor:
    """Appendix B descriptors of one or several nets (stacked) at scales Q (stacked or averaged).

    `checkpoints`: paths or checkpoint dicts. `compute(images)` returns the
    descriptors in memory; `extract(images, out)` writes them to a file in chunks
    (resumable) and reuses a complete file made with the same settings.
    """

    def __init__(self, checkpoints: Sequence[str | os.PathLike | Mapping[str, Any]], *,
                 scales: Sequence[int] | None = None, flip: bool = True, aggregation: str = "average",
                 device: str | torch.device | None = None, amp: str = "off", batch_size: int = 32,
                 workers: int = 0) -> None:
        if aggregation not in AGGREGATIONS:
            raise UserError(f"--aggregate: expected one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
        if not checkpoints:
            raise UserError("give at least one checkpoint (CKPT...)")
        if batch_size < 1 or workers < 0:
            raise UserError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
        self.device = _resolve_device(device)
        self.nets = _load_nets(list(checkpoints), preprocessing=None, device=self.device, channels_last=False)
        crop = max(net.crop_size for net in self.nets)
        self.scales = sorted(set(scales)) if scales else default_scales(crop)
        if self.scales[0] < crop:
            raise UserError(f"--test-scales: Q={self.scales[0]} is smaller than the crop size {crop}; the dense "
                            f"net needs Q >= crop_size")
        self.flip, self.aggregation = bool(flip), aggregation
        self.amp = choose_execution(amp, False, self.device).amp  # auto: bf16 on CUDA and bf16-native CPUs
        self.batch_size, self.workers = int(batch_size), int(workers)
        self.checkpoints = [{"name": net.name, "path": None if isinstance(c, Mapping) else str(Path(c).resolve()),
                             "sha256": checkpoint_digest(c)} for net, c in zip(self.nets, checkpoints)]
        per_net = len(self.scales) if aggregation == "stack" else 1
        self.dim = sum(self._width(net) * per_net for net in self.nets)
        identity = {"format": FEATURES_FORMAT, "version": 1, "checkpoints": [c["sha256"] for c in self.checkpoints],
                    "scales": self.scales, "flip": self.flip, "aggregation": aggregation, "amp": self.amp}
        self.key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    @staticmethod
    def _width(net: Any) -> int:
        return net.model.classifier[-1].in_features  # fc_width: FC2's outputs

    def settings(self) -> dict[str, Any]:
        return {"checkpoints": self.checkpoints, "scales": self.scales, "flip": self.flip,
                "aggregation": self.aggregation, "amp": self.amp, "dim": self.dim}

    def compute(self, images: ImageSet, rows: Sequence[int] | None = None, *, progress: bool = False,
                desc: str = "") -> torch.Tensor:
        """`(len(rows), dim)` descriptors of `images.paths[rows]` (default: all), L2-normalised.

        Under torch.distributed (torchrun) this is collective: rank r computes
        rows[r::W] only and the shards are all-gathered in order, so every rank
        returns the whole tensor, the one a single process computes (each row is
        computed alone, so only the batching differs: bitwise equal on CPUs in our
        tests). Every rank must call it with the same images, rows and nets; the
        ranks check that they do, and an unreadable image on any rank is an error
        on every rank.
        """
        rows = list(range(len(images.paths))) if rows is None else [int(i) for i in rows]
        rank, world = _rank_world()
        if world > 1:
            self._check_same_work(images, rows)
        if not rows:
            return torch.zeros(0, self.dim)
        error, local = None, None
        try:
            local = self._compute_local(images, rows[rank::world], progress=progress and rank == 0, desc=desc)
        except Exception as exc:
            if world == 1:
                raise
            error = exc
        _agree(error)  # (a no-op in one process) an unreadable image on one rank stops every rank
        assert local is not None
        return _gather_shards(local, len(rows))

    def _compute_local(self, images: ImageSet, rows: list[int], *, progress: bool, desc: str) -> torch.Tensor:
        """The descriptors of `rows` computed in this process (one shard under torch.distributed).

        Every step after `_run_pass` (scales stacked or averaged, nets stacked, L2)
        works row by row, so a shard's rows are final before they are gathered.
        """
        from vggnet.data.datasets import ImageDataset
        from vggnet.data.transforms import DenseEvalPreset

        if not rows:  # a shard can be empty (fewer images than ranks)
            return torch.zeros(0, self.dim)
        dataset = ImageDataset([(p, 0) for p in images.paths], ["image"], strict=True)
        per_net: list[list[torch.Tensor]] = [[] for _ in self.nets]
        for q in self.scales:
            ds = _with_transform(dataset, DenseEvalPreset(scale=q, preprocessing=_identity_preprocessing()))
            local, _ = _run_pass(self.nets, ds, rows, methods=["dense"], flip=self.flip, grid=1,
                                 batch_size=self.batch_size, workers=self.workers, device=self.device, amp=self.amp,
                                 channels_last=False, progress=progress, desc=f"{desc}Q={q}",
                                 dense_fn=pooled_descriptor, width=self._width)
            for k in range(len(self.nets)):
                per_net[k].append(local[(k, "dense")])       # (n, fc_width) at this Q
        stack = self.aggregation == "stack"
        parts = [torch.cat(qs, dim=1) if stack else torch.stack(qs).mean(dim=0) for qs in per_net]
        return F.normalize(torch.cat(parts, dim=1), dim=1)   # nets stacked, then L2-normalised

    def _check_same_work(self, images: ImageSet, rows: list[int]) -> None:
        """Collective: every rank describes the same images with the same nets and settings.

        Ranks that listed different folders (a node with another copy of --data) or
        loaded other checkpoints would gather rows of different images into one
        tensor without noticing; this compares a digest of the paths and the key.
        """
        mine = (self.key, _digest([images.paths[i] for i in rows]), len(rows))
        everyone = distributed.all_gather_object(mine)
        if len(set(everyone)) > 1:
            lines = [f"rank {r}: {n} images (paths sha256 {paths[:12]}), descriptor key {key[:12]}"
                     for r, (key, paths, n) in enumerate(everyone)]
            raise UserError("the processes of this torchrun do not describe the same images with the same nets and "
                            "settings; give every process the same --data, checkpoints and flags, on storage every "
                            "node sees alike:\n  " + "\n  ".join(lines))

    def _metadata(self, images: ImageSet) -> dict[str, str]:
        # One metadata entry holding sorted JSON: safetensors writes several entries
        # in hash-map order, and the same descriptors must give the same bytes.
        meta = {"version": 1, "key": self.key, "images": _digest(images.paths), "settings": self.settings(),
                "paths": images.paths, "classes": images.classes, "source": images.source}
        return {FEATURES_FORMAT: json.dumps(meta, sort_keys=True)}

    def extract(self, images: ImageSet, out: str | os.PathLike, *, chunk_size: int = 512,
                progress: bool = False) -> Features:
        """Descriptors of `images` written to `out` (safetensors), resumably.

        Chunks of `chunk_size` images are written to `out.parts-<key>/` as they
        finish; a rerun skips the chunks already there, so an interrupted run
        continues where it stopped and writes the same file an uninterrupted run
        writes. A complete `out` with the same key and images is reused as is.

        Under torch.distributed (torchrun) this is collective: every chunk is
        computed by all ranks together (`compute`), rank 0 alone looks at the
        files, decides what is reused and writes every file, and every rank
        returns the same `Features` (what rank 0 read from disk is broadcast). The
        decision is rank 0's, not each rank's, because the ranks of a multi-node
        run may see different disks; the files are where rank 0 runs.
        """
        from safetensors.torch import save as st_save

        from vggnet.checkpoint import atomic_write

        out = Path(out)
        if chunk_size < 1:
            raise UserError(f"--chunk-size must be >= 1, got {chunk_size}")
        meta = self._metadata(images)
        parts = out.with_name(f"{out.name}.parts-{self.key[:16]}")
        n = len(images.paths)
        chunk_rows = [list(range(start, min(start + chunk_size, n))) for start in range(0, n, chunk_size)]
        tags = [_digest([images.paths[i] for i in rows]) for rows in chunk_rows]

        found = _on_main(lambda: self._on_disk(images, out, parts, chunk_rows, tags))  # rank 0 looks
        existing, done = found if found is not None else (None, {})
        # every rank learns rank 0's decision: reuse the complete file, or which chunks to skip
        decision = distributed.broadcast_object(
            ("reuse", existing.images, existing.settings) if existing is not None else ("resume", sorted(done)))
        if decision[0] == "reuse":
            _, reused_images, reused_settings = decision
            shared = distributed.broadcast_tensor(
                None if existing is None else torch.from_numpy(existing.descriptors), (n, self.dim))
            return Features(shared.numpy(), reused_images, self.key, reused_settings)
        skip = set(decision[1])
        chunks = []
        for c, rows in enumerate(chunk_rows):
            if c in skip:  # rank 0 read it; the others receive it
                chunks.append(distributed.broadcast_tensor(done.get(c), (len(rows), self.dim)))
                continue
            d = self._chunk(images, rows, progress=progress, desc=f"chunk {c + 1}/{len(chunk_rows)} ")
            path = parts / f"chunk_{c:06d}.safetensors"
            _on_main(lambda d=d, path=path, tag=tags[c]: atomic_write(
                path, lambda f: f.write(st_save({"descriptors": d.contiguous()}, {"images": tag}))))
            chunks.append(d)
        descriptors = torch.cat(chunks) if chunks else torch.zeros(0, self.dim)

        def finish() -> None:
            labels = torch.from_numpy(np.ascontiguousarray(images.labels))
            blob = st_save({"descriptors": descriptors.contiguous(), "labels": labels}, meta)
            atomic_write(out, lambda f: f.write(blob))
            shutil.rmtree(parts, ignore_errors=True)

        _on_main(finish)
        return Features(descriptors.numpy(), images, self.key, self.settings())

    def _on_disk(self, images: ImageSet, out: Path, parts: Path, chunk_rows: list[list[int]], tags: list[str]
                 ) -> tuple[Features | None, dict[int, torch.Tensor]]:
        """What an earlier run left (read on rank 0): a complete `out` made with this key for these
        images, else the chunks of `parts` whose images are these chunks' (by index)."""
        from safetensors import SafetensorError, safe_open

        if out.is_file():
            try:
                existing = load_features(out)
                if existing.key == self.key and existing.images.paths == images.paths:
                    return existing, {}
            except UserError:
                pass  # not ours or damaged: recompute and replace
        parts.mkdir(parents=True, exist_ok=True)
        done: dict[int, torch.Tensor] = {}
        for c, (rows, tag) in enumerate(zip(chunk_rows, tags)):
            path = parts / f"chunk_{c:06d}.safetensors"
            if not path.is_file():
                continue
            try:
                with safe_open(str(path), framework="pt") as f:
                    if (f.metadata() or {}).get("images") != tag:
                        continue  # other images (another --chunk-size or another list): computed again
                    d = f.get_tensor("descriptors")
            except (SafetensorError, OSError):
                continue  # unreadable: computed again and replaced
            if d.dtype == torch.float32 and tuple(d.shape) == (len(rows), self.dim):
                done[c] = d
        return None, done

    def _chunk(self, images: ImageSet, rows: list[int], *, progress: bool, desc: str) -> torch.Tensor:
        return self.compute(images, rows, progress=progress, desc=desc)

    def check(self, features: Features, images: ImageSet, where: str) -> None:
        """Refuse a descriptor file made with other nets, scales, flip, aggregation or images, saying which."""
        s = features.settings
        mine = [c["sha256"] for c in self.checkpoints]
        theirs = [c["sha256"] for c in s.get("checkpoints", [])]
        if theirs != mine:
            made = ", ".join(f"{c.get('path') or c.get('name')} (sha256 {c['sha256'][:12]})"
                             for c in s.get("checkpoints", []))
            wanted = ", ".join(f"{c['path'] or c['name']} (sha256 {c['sha256'][:12]})" for c in self.checkpoints)
            raise UserError(f"{where}: descriptors of other nets: made with {made}, not {wanted}; "
                            f"recompute them with `vgg features` and these checkpoints")
        for name, value in (("scales", self.scales), ("flip", self.flip), ("aggregation", self.aggregation),
                            ("amp", self.amp)):
            if s.get(name) != value:
                raise UserError(f"{where}: descriptors computed with {name} {s.get(name)}, not {value} as asked "
                                f"(--test-scales / --no-flip / --aggregate / --amp); recompute them or pass the "
                                f"same settings")
        if features.images.paths != images.paths:
            raise UserError(f"{where}: descriptors of other images ({len(features.images.paths)} images from "
                            f"{features.images.source or '?'}), not the {len(images.paths)} images of "
                            f"{images.source}")


def load_features(path: str | os.PathLike) -> Features:
    """Read a descriptor file written by `vgg features` / `DescriptorExtractor.extract`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(FEATURES_FORMAT)
            if raw is None:
                raise UserError(f"{path}: not a descriptor file written by `vgg features`")
            meta = json.loads(raw)
            descriptors = f.get_tensor("descriptors").numpy()
            labels = f.get_tensor("labels").numpy()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot be read as a descriptor file ({exc})") from None
    images = ImageSet(meta["paths"], labels, meta["classes"], meta.get("source", ""))
    return Features(descriptors, images, meta["key"], meta["settings"])


# --------------------------------------------------------------------------- linear SVMs


class LinearSVMs:
    """One-vs-rest linear SVMs (scikit-learn `LinearSVC`: L2-regularised squared hinge loss).

    `fit(X, Y)` with `Y` (N, C) in {1, 0, -1} (0: this image is left out of class
    c's training: VOC's difficult-only images); `decision_function(X)` -> (N, C).
    Only coefficients are kept, so a classifier saves and loads without pickling.
    """

    def __init__(self, C: float = 1.0, *, max_iter: int = 10000, seed: int = 0, n_jobs: int | None = None) -> None:
        self.C, self.max_iter, self.seed = float(C), int(max_iter), int(seed)
        # liblinear releases the GIL: the classes' SVMs train in parallel threads
        # (each holds a float64 copy of its rows, hence the cap)
        self.n_jobs = n_jobs if n_jobs is not None else min(8, os.cpu_count() or 1)
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None

    def _fit_class(self, X: np.ndarray, target: np.ndarray) -> tuple[np.ndarray | None, float]:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC

        keep = target != 0
        y = target[keep] > 0
        if y.all() or not y.any():  # one kind of example only: a constant score
            return None, 1.0 if y.all() and y.size else -1.0
        svm = LinearSVC(C=self.C, loss="squared_hinge", dual="auto", max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings():  # large C on separable data: more iterations change nothing ranked
            warnings.simplefilter("ignore", ConvergenceWarning)
            svm.fit(X[keep], y)
        return svm.coef_[0], float(svm.intercept_[0])

    def fit(self, X: np.ndarray, Y: np.ndarray) -> LinearSVMs:
        from joblib import Parallel, delayed

        X = np.asarray(X, dtype=np.float32)
        jobs = max(1, min(self.n_jobs, Y.shape[1]))
        fitted = Parallel(n_jobs=jobs, prefer="threads")(delayed(self._fit_class)(X, Y[:, c])
                                                         for c in range(Y.shape[1]))
        coef = np.zeros((Y.shape[1], X.shape[1]), dtype=np.float32)
        intercept = np.zeros(Y.shape[1], dtype=np.float32)
        for c, (w, b) in enumerate(fitted):
            if w is not None:
                coef[c] = w
            intercept[c] = b
        self.coef_, self.intercept_ = coef, intercept
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        if self.coef_ is None:
            raise RuntimeError("LinearSVMs: call fit() first")
        return np.asarray(X, dtype=np.float32) @ self.coef_.T + self.intercept_

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The highest-scoring class of each row (single-label use)."""
        return self.decision_function(X).argmax(axis=1)


def select_C(X: np.ndarray, Y: np.ndarray, *, multi_label: bool, grid: Sequence[float] = C_GRID, folds: int = 3,
             seed: int = 0) -> tuple[float, dict[str, float]]:
    """C by `folds`-fold cross-validation on the training data only: accuracy (single-label,
    stratified folds) or mAP (multi-label, area under PR). Ties go to the smaller C."""
    from sklearn.model_selection import KFold, StratifiedKFold

    grid = sorted(float(c) for c in grid)
    if multi_label:
        k = min(folds, len(X))
        splitter = KFold(k, shuffle=True, random_state=seed) if k >= 2 else None
        strata = None
    else:
        strata = Y.argmax(axis=1)
        k = min(folds, int(np.bincount(strata).min()))
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed) if k >= 2 else None
    if splitter is None or len(grid) == 1:
        return grid[len(grid) // 2], {}
    scores: dict[str, float] = {}
    for C in grid:
        fold_scores = []
        for tr, va in splitter.split(X, strata):
            s = LinearSVMs(C, seed=seed).fit(X[tr], Y[tr]).decision_function(X[va])
            if multi_label:
                fold_scores.append(multilabel_metrics(s, Y[va], ["?"] * Y.shape[1])["mAP_area"])
            else:
                fold_scores.append(100.0 * float((s.argmax(1) == strata[va]).mean()))
        scores[f"{C:g}"] = float(np.nanmean(fold_scores))
    best = max(grid, key=lambda C: (scores[f"{C:g}"], -C))
    return best, scores


# --------------------------------------------------------------------------- metrics


def _precision_recall(scores: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    # As VOCevalcls: rank by score (stable), gt 1 = true positive, -1 = false
    # positive, 0 (difficult only) = neither: the image is ignored.
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    g = np.asarray(gt)[order]
    g = g[g != 0]
    tp, fp = np.cumsum(g > 0), np.cumsum(g < 0)
    if not len(g) or tp[-1] == 0:
        return None
    return tp / (tp + fp), tp / tp[-1]


def voc07_ap(scores: np.ndarray, gt: np.ndarray) -> float:
    """VOC-2007's 11-point interpolated AP: the mean over recall r in {0, 0.1, ..., 1}
    of the highest precision at recall >= r. NaN when the class has no positive."""
    pr = _precision_recall(scores, gt)
    if pr is None:
        return float("nan")
    prec, rec = pr
    return float(np.mean([prec[rec >= t].max() if (rec >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]))


def voc_area_ap(scores: np.ndarray, gt: np.ndarray) -> float:
    """VOC-2010-onward AP: the area under the precision-recall curve with precision made
    monotone (each precision replaced by the highest at equal or greater recall)."""
    pr = _precision_recall(scores, gt)
    if pr is None:
        return float("nan")
    prec, rec = pr
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def multilabel_metrics(scores: np.ndarray, gt: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class AP and mAP in percent: `ap`/`mAP` the VOC-2007 11-point AP, `ap_area`/`mAP_area`
    the area under the PR curve (VOC-2010+). Classes without a positive are left out of the means."""
    ap = [voc07_ap(scores[:, c], gt[:, c]) for c in range(gt.shape[1])]
    area = [voc_area_ap(scores[:, c], gt[:, c]) for c in range(gt.shape[1])]

    def mean(v: list[float]) -> float:
        v = [x for x in v if not np.isnan(x)]
        return 100.0 * float(np.mean(v)) if v else float("nan")

    return {"mAP": mean(ap), "mAP_area": mean(area),
            "ap": {n: (None if np.isnan(a) else 100.0 * a) for n, a in zip(classes, ap)},
            "ap_area": {n: (None if np.isnan(a) else 100.0 * a) for n, a in zip(classes, area)},
            "ap_definition": {"mAP": "VOC-2007 11-point interpolated AP",
                              "mAP_area": "area under the PR curve (VOC-2010 onward)"}}


def singlelabel_metrics(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy and mean class accuracy (the mean per-class recall, Caltech's metric), in percent."""
    from vggnet.results import per_class_accuracy

    per_class = per_class_accuracy(torch.from_numpy(np.asarray(scores, dtype=np.float32)),
                                   torch.from_numpy(np.asarray(labels, dtype=np.int64)))
    present = [a for a in per_class if a is not None]
    return {"accuracy": 100.0 * float((scores.argmax(1) == labels).mean()),
            "mean_class_accuracy": float(np.mean(present)),
            "per_class_accuracy": dict(zip(classes, per_class))}


def _evaluate(scores: np.ndarray, images: ImageSet) -> dict[str, Any]:
    if images.multi_label:
        return multilabel_metrics(scores, images.labels, images.classes)
    return singlelabel_metrics(scores, images.labels, images.classes)


# --------------------------------------------------------------------------- end to end


def _save_classifier(path: Path, svm: LinearSVMs, settings: Mapping[str, Any]) -> Path:
    from safetensors.torch import save as st_save

    from vggnet.checkpoint import atomic_write

    blob = st_save({"coef": torch.from_numpy(svm.coef_), "intercept": torch.from_numpy(svm.intercept_)},
                   {CLASSIFIER_FORMAT: json.dumps({"version": 1, **settings}, sort_keys=True)})
    return atomic_write(path, lambda f: f.write(blob))


def _load_classifier(path: Path) -> tuple[LinearSVMs, dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(CLASSIFIER_FORMAT)
            if raw is None:
                raise UserError(f"{path}: not a classifier written by `vgg transfer`")
            svm = LinearSVMs()
            svm.coef_, svm.intercept_ = f.get_tensor("coef").numpy(), f.get_tensor("intercept").numpy()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (expected the --output-dir of a `vgg transfer` run)") from None
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path}: cannot be read as a classifier ({exc})") from None
    settings = json.loads(raw)
    svm.C = float(settings["C"])
    return svm, settings


def _features_for(extractor: DescriptorExtractor, images: ImageSet, name: str, cache: Path,
                  given: str | None, progress: bool) -> np.ndarray | None:
    """The descriptors of `images`: read from `given` (a `vgg features` file) or computed into the
    cache. Under torch.distributed only rank 0, which fits the SVMs, reads a given file; the other
    ranks get None (or, when computed, the same descriptors as rank 0)."""
    if given:
        def read() -> np.ndarray:
            feats = load_features(given)
            extractor.check(feats, images, given)
            return feats.descriptors

        return _on_main(read)
    out = cache / f"{name}-{extractor.key[:16]}.safetensors"
    return extractor.extract(images, out, progress=progress).descriptors


@dataclass
class _TransferWork:
    """What the SVMs of a `transfer` run need: the descriptors of every train/test run, computed."""

    extractor: DescriptorExtractor
    runs: list[tuple[ImageSet, np.ndarray, ImageSet, np.ndarray]]
    protocol: str
    data: str
    out: Path


def transfer(
    checkpoints: Sequence[str | os.PathLike | Mapping[str, Any]],
    data: str | os.PathLike,
    *,
    output_dir: str | os.PathLike = "transfer_run",
    scales: Sequence[int] | None = None,
    flip: bool = True,
    aggregation: str = "average",
    train_split: str | None = None,
    test_split: str | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    splits: int = 1,
    exclude: Sequence[str] = (),
    c_grid: Sequence[float] = C_GRID,
    folds: int = 3,
    train_features: str | None = None,
    test_features: str | None = None,
    device: str | torch.device | None = None,
    amp: str = "off",
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
) -> dict[str, Any] | None:
    """Appendix B end to end: descriptors, SVMs with C by cross-validation, the test metrics.

    Layouts: a VOC devkit folder (multi-label; `trainval` -> `test` when both lists
    exist, else `train` -> `val`); a folder of classes split per class
    (`train_per_class`, `test_per_class`, over `splits` seeds: mean and std); or
    class folders `train/` and `test/` (else `val/`). Writes `output_dir/` with
    `features/` (the descriptor cache), `classifier.safetensors` (of the first
    split) and `results.json`; returns the results.

    Under torch.distributed (torchrun) the descriptors are computed by all ranks
    together (each its shard of the images); rank 0 alone then fits the SVMs,
    writes the files and returns the results, and the other ranks return None as
    soon as the descriptors are done.
    """
    work = _transfer_descriptors(
        checkpoints, data, output_dir=output_dir, scales=scales, flip=flip, aggregation=aggregation,
        train_split=train_split, test_split=test_split, train_per_class=train_per_class,
        test_per_class=test_per_class, splits=splits, exclude=exclude, c_grid=c_grid, folds=folds,
        train_features=train_features, test_features=test_features, device=device, amp=amp,
        batch_size=batch_size, workers=workers, progress=progress)
    return None if work is None else _fit_transfer(work, c_grid=c_grid, folds=folds)


def _transfer_descriptors(
    checkpoints: Sequence[str | os.PathLike | Mapping[str, Any]],
    data: str | os.PathLike,
    *,
    output_dir: str | os.PathLike,
    scales: Sequence[int] | None,
    flip: bool,
    aggregation: str,
    train_split: str | None,
    test_split: str | None,
    train_per_class: int | None,
    test_per_class: int | None,
    splits: int,
    exclude: Sequence[str],
    c_grid: Sequence[float],
    folds: int,
    train_features: str | None,
    test_features: str | None,
    device: str | torch.device | None,
    amp: str,
    batch_size: int,
    workers: int,
    progress: bool,
) -> _TransferWork | None:
    """The first half of `transfer`: the image lists, the splits and the descriptors.

    Collective under torch.distributed; returns the work for the SVMs on rank 0 and
    None on the other ranks. Everything that can be refused (flags, too few images
    in a class) is refused before any descriptor is computed.
    """
    from vggnet.data.voc import is_voc_devkit, voc_splits

    if splits < 1 or folds < 2 or not c_grid or min(c_grid) <= 0:
        raise UserError(f"need --splits >= 1, --folds >= 2 and a positive --C-grid; got {splits}, {folds}, "
                        f"{list(c_grid)}")
    rank, _ = _rank_world()
    out = Path(output_dir)
    cache = out / "features"
    extractor = DescriptorExtractor(checkpoints, scales=scales, flip=flip, aggregation=aggregation, device=device,
                                    amp=amp, batch_size=batch_size, workers=workers)
    root = Path(data)
    runs: list[tuple[ImageSet, np.ndarray, ImageSet, np.ndarray]] = []
    if train_per_class is not None:
        if train_per_class < 1 or (test_per_class is not None and test_per_class < 1):
            raise UserError(f"--train-per-class and --test-per-class must be >= 1, got {train_per_class} "
                            f"and {test_per_class}")
        everything = list_images(root, train_split, exclude=exclude)
        chosen = [split_per_class(everything, train_per_class, test_per_class, seed) for seed in range(splits)]
        X = _features_for(extractor, everything, "all", cache, train_features, progress)
        if rank != 0:
            return None
        assert X is not None
        runs += [(everything.subset(tr), X[tr], everything.subset(te), X[te]) for tr, te in chosen]
        protocol = f"{train_per_class} train / {test_per_class or 'all other'} test images per class, {splits} splits"
    else:
        if is_voc_devkit(root):
            have = voc_splits(root)
            tr_name = train_split or ("trainval" if "trainval" in have and "test" in have else "train")
            te_name = test_split or ("test" if "test" in have and tr_name == "trainval" else "val")
        else:
            tr_name = train_split or "train"
            te_name = test_split or ("test" if (root / "test").is_dir() else "val")
        train_set = list_images(root, tr_name, exclude=exclude)
        test_set = list_images(root, te_name, classes=train_set.classes, exclude=exclude)
        X_tr = _features_for(extractor, train_set, tr_name, cache, train_features, progress)
        X_te = _features_for(extractor, test_set, te_name, cache, test_features, progress)
        if rank != 0:
            return None
        assert X_tr is not None and X_te is not None
        runs.append((train_set, X_tr, test_set, X_te))
        protocol = f"train on {tr_name}, test on {te_name}"
    return _TransferWork(extractor, runs, protocol, str(data), out)


def _fit_transfer(work: _TransferWork, *, c_grid: Sequence[float], folds: int) -> dict[str, Any]:
    """The second half of `transfer` (one process: rank 0): C by cross-validation, the SVMs, the
    test metrics; writes the classifier and results.json once."""
    from vggnet.checkpoint import atomic_write

    results = []
    first_svm = None
    for train_set, X_tr, test_set, X_te in work.runs:
        Y = train_set.targets()
        C, cv = select_C(X_tr, Y, multi_label=train_set.multi_label, grid=c_grid, folds=folds)
        svm = LinearSVMs(C).fit(X_tr, Y)
        first_svm = first_svm or svm
        results.append({"C": C, "cv": cv, "train_images": len(train_set.paths), "test_images": len(test_set.paths),
                        **_evaluate(svm.decision_function(X_te), test_set)})
    first = work.runs[0][0]
    report = _summarise(results, multi_label=first.multi_label)
    settings = {**work.extractor.settings(), "classes": first.classes, "multi_label": first.multi_label,
                "C": results[0]["C"]}
    _save_classifier(work.out / "classifier.safetensors", first_svm, settings)
    report.update({"data": work.data, "protocol": work.protocol, "classes": first.classes,
                   "descriptor": work.extractor.settings(), "classifier": str(work.out / "classifier.safetensors")})
    text = json.dumps(report, indent=2) + "\n"
    atomic_write(work.out / "results.json", lambda f: f.write(text.encode("utf-8")))
    return report


def _summarise(results: list[dict[str, Any]], *, multi_label: bool) -> dict[str, Any]:
    keys = ("mAP", "mAP_area") if multi_label else ("accuracy", "mean_class_accuracy")
    if len(results) == 1:
        return dict(results[0])
    out: dict[str, Any] = {"splits": results}
    for k in keys:  # the paper's "mean +- std over the splits"
        values = np.array([r[k] for r in results])
        out[k], out[f"{k}_std"] = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out["C"] = [r["C"] for r in results]
    return out


def predict_transfer(output_dir: str | os.PathLike, images: Sequence[str | os.PathLike], *,
                     device: str | torch.device | None = None, batch_size: int = 32) -> list[dict[str, Any]]:
    """Apply a saved `vgg transfer` classifier end to end: image -> descriptor -> SVM scores.

    Each result: `{"image", "scores": {class: score}, "labels": [...]}` where labels
    are the classes with a positive score (multi-label) or the best class.
    """
    from vggnet.data.datasets import _list_images

    target = Path(output_dir)
    svm, settings = _load_classifier(target / "classifier.safetensors" if target.is_dir() else target)
    ckpts = []
    for c in settings["checkpoints"]:
        if not c.get("path") or not Path(c["path"]).is_file():
            raise CheckpointError(f"{target}: the classifier was trained on descriptors of {c.get('path')}, "
                                  f"which is no longer there; restore the checkpoint")
        if checkpoint_digest(c["path"]) != c["sha256"]:
            raise CheckpointError(f"{c['path']} has changed since the classifier in {target} was trained "
                                  f"(its SHA-256 differs); retrain with `vgg transfer`")
        ckpts.append(c["path"])
    files: list[str] = []
    for item in images:
        p = Path(item)
        if p.is_dir():
            files += [str(f) for f in _list_images(p)]
        elif p.is_file():
            files.append(str(p))
        else:
            raise UserError(f"{item}: no such image file or directory")
    if not files:
        raise UserError("no images to classify")
    extractor = DescriptorExtractor(ckpts, scales=settings["scales"], flip=settings["flip"],
                                    aggregation=settings["aggregation"], amp=settings.get("amp", "off"),
                                    device=device, batch_size=batch_size)
    X = extractor.compute(ImageSet(files, np.zeros(len(files), dtype=np.int64), ["?"])).numpy()
    scores = svm.decision_function(X)
    classes = settings["classes"]
    out = []
    for f, s in zip(files, scores):
        labels = [classes[i] for i in np.flatnonzero(s > 0)] if settings["multi_label"] else [classes[int(s.argmax())]]
        out.append({"image": f, "scores": {c: float(v) for c, v in zip(classes, s)}, "labels": labels})
    return out


# --------------------------------------------------------------------------- demo stage


def pixel_descriptors(paths: Sequence[str], side: int = 16) -> np.ndarray:
    """The baseline: each image squashed to side x side RGB, flattened, centred and L2-normalised."""
    from vggnet.data.transforms import load_image

    rows = []
    for p in paths:
        img = load_image(p).resize((side, side), resample=3)  # bicubic
        rows.append(np.asarray(img, dtype=np.float32).reshape(-1) / 255.0)
    X = np.stack(rows)
    X -= X.mean(axis=1, keepdims=True)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def demo_transfer(classifier_ckpt: str | os.PathLike, workdir: str | os.PathLike, *, trainval: int = 300,
                  test: int = 300, image_size: tuple[int, int] = (96, 192), scales: Sequence[int] | None = None,
                  seed: int = 0, workers: int = 0, progress: bool = False) -> dict[str, Any]:
    """The demo's transfer stage: SVMs on descriptors of the demo's classifier for multi-label
    scenes of the same shapes (VOC protocol), next to the same SVMs on raw 16x16 pixels."""
    from vggnet.data.synthetic import write_multilabel
    from vggnet.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    work = Path(workdir)
    scenes = work / "scenes"
    classes = load_checkpoint(classifier_ckpt)["classes"]
    expected = {"trainval": trainval, "test": test, "seed": seed, "image_size": list(image_size),
                "classes": sorted(classes)}
    try:
        written = json.loads((scenes / "synthetic.json").read_text(encoding="utf-8"))
        fresh = any(written.get(k) != v for k, v in expected.items())
    except (OSError, ValueError):
        fresh = True
    if fresh:
        write_multilabel(scenes, classes=classes, trainval=trainval, test=test, seed=seed, force=True,
                         image_size=image_size)
    report = transfer([classifier_ckpt], scenes, output_dir=work, scales=scales, aggregation="average",
                      workers=workers, progress=progress)
    assert report is not None  # (None only on ranks > 0 under torch.distributed)
    train_set, test_set = list_images(scenes, "trainval"), None
    test_set = list_images(scenes, "test", classes=train_set.classes)
    X_tr, X_te = pixel_descriptors(train_set.paths), pixel_descriptors(test_set.paths)
    C, _ = select_C(X_tr, train_set.labels, multi_label=True)
    pixels = multilabel_metrics(LinearSVMs(C).fit(X_tr, train_set.labels).decision_function(X_te),
                                test_set.labels, test_set.classes)
    seconds = time.perf_counter() - t0
    print(f"transfer (Appendix B) on {test} multi-label test scenes, {len(train_set.classes)} classes: "
          f"mAP {report['mAP']:.1f}% (VOC-2007 11-point; {report['mAP_area']:.1f}% area under PR) with "
          f"descriptors of {Path(classifier_ckpt).name} at Q = {', '.join(map(str, report['descriptor']['scales']))}"
          f" (C = {report['C']:g}), vs {pixels['mAP']:.1f}% ({pixels['mAP_area']:.1f}%) with the same SVMs on raw "
          f"16x16 pixels (C = {C:g}); {seconds:.0f} s")
    return {"mAP": report["mAP"], "mAP_area": report["mAP_area"], "mAP_pixels": pixels["mAP"],
            "mAP_area_pixels": pixels["mAP_area"], "C": report["C"], "C_pixels": C, "seconds": seconds,
            "results": str(work / "results.json")}


# --------------------------------------------------------------------------- command line


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--test-scales", type=_parse_scales, default=None, metavar="Q,Q,...",
                        help="scales Q (smallest image side) of the dense descriptors (default: the paper's "
                             "256,384,512, scaled by crop_size/224)")
    parser.add_argument("--aggregate", choices=AGGREGATIONS, default="average",
                        help="combine the scales' descriptors by averaging (the paper for VOC) or stacking "
                             "(the paper for Caltech) (default: %(default)s)")
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="do not average with the horizontally flipped image's descriptor")
    parser.add_argument("--exclude-class", action="append", default=[], metavar="NAME",
                        help="leave a class folder out (repeatable), e.g. Caltech-101's BACKGROUND_Google")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                        help="mixed precision as in vgg eval; auto = bf16 on CUDA, off on CPU; part of the "
                             "descriptor cache's key (default: %(default)s)")


def add_features_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT",
                        help="checkpoint(s); several nets' descriptors are stacked (late fusion)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="a folder of class folders, a dataset root with --split, or a VOC devkit folder")
    parser.add_argument("--split", default=None, metavar="NAME",
                        help="DIR/NAME (class folders) or the VOC image set ImageSets/Main/NAME.txt")
    parser.add_argument("--out", required=True, metavar="FILE", help="output descriptor file (.safetensors)")
    parser.add_argument("--chunk-size", type=int, default=512,
                        help="images per resumable chunk (default: %(default)s)")
    _common(parser)


def run_features(args: argparse.Namespace) -> int:
    """`vgg features`. Under torchrun every process computes its shard of every chunk (gathered on
    all of them); rank 0 alone writes the chunks and the file and prints."""
    with _process_group(args.device) as info:
        images = list_images(args.data, args.split, exclude=args.exclude_class)
        extractor = DescriptorExtractor(args.checkpoints, scales=args.test_scales, flip=args.flip,
                                        aggregation=args.aggregate, device=info.device, amp=args.amp,
                                        batch_size=args.batch_size, workers=args.workers)
        feats = extractor.extract(images, args.out, chunk_size=args.chunk_size,
                                  progress=info.is_main and sys.stderr.isatty())
    if not info.is_main:
        return 0
    where = f" ({info.world_size} processes)" if info.distributed else ""
    print(f"{args.out}: {feats.descriptors.shape[0]} descriptors of {feats.descriptors.shape[1]} dimensions "
          f"({', '.join(c['name'] for c in extractor.checkpoints)} at Q = {', '.join(map(str, extractor.scales))}, "
          f"{extractor.aggregation}, flip {'on' if extractor.flip else 'off'}; key {extractor.key[:16]}){where}")
    return 0


def add_transfer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", nargs="+", metavar="CKPT",
                        help="checkpoint(s) (descriptors stacked), or `predict OUT IMAGE|DIR...` to apply a "
                             "trained classifier")
    parser.add_argument("--data", metavar="DIR", help="VOC devkit folder, dataset root with train/ and test/ (or "
                                                      "val/), or with --train-per-class a folder of classes")
    parser.add_argument("--output-dir", default="transfer_run", metavar="DIR",
                        help="descriptor cache, classifier and results (default: %(default)s)")
    parser.add_argument("--train-split", default=None, metavar="NAME",
                        help="training image set (default: VOC trainval if test exists, else train)")
    parser.add_argument("--test-split", default=None, metavar="NAME", help="test image set (default: test, else val)")
    parser.add_argument("--train-per-class", type=int, default=None, metavar="N",
                        help="Caltech protocol: N random training images per class (Caltech-101: 30, -256: 60)")
    parser.add_argument("--test-per-class", type=int, default=None, metavar="M",
                        help="at most M test images per class (Caltech-101: 50; default: all the others)")
    parser.add_argument("--splits", type=int, default=1, help="random splits (seeds 0..N-1), mean and std reported")
    parser.add_argument("--C-grid", dest="c_grid", default=",".join(f"{c:g}" for c in C_GRID), metavar="C,C,...",
                        help="SVM C values tried by cross-validation (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds (default: %(default)s)")
    parser.add_argument("--train-features", metavar="FILE", help="training descriptors from `vgg features`")
    parser.add_argument("--test-features", metavar="FILE", help="test descriptors from `vgg features`")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    _common(parser)


def run_transfer(args: argparse.Namespace) -> int:
    """`vgg transfer` and `vgg transfer predict`. Under torchrun every process computes its shard of
    the descriptors; the process group is then left, and rank 0 alone fits the SVMs (which can take
    longer than a collective's timeout), writes the files and prints; the other ranks exit with 0."""
    if args.items[0] == "predict" and not Path("predict").is_file():
        if len(args.items) < 3:
            raise UserError("usage: vgg transfer predict OUT IMAGE|DIR... (OUT: a `vgg transfer` --output-dir)")
        with _process_group(args.device) as info:
            results = predict_transfer(args.items[1], args.items[2:], device=info.device,
                                       batch_size=args.batch_size)
        if not info.is_main:
            return 0
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            for r in results:
                print(f"{r['image']}: {', '.join(r['labels']) or '(no class)'}")
        return 0
    if not args.data:
        raise UserError("--data DIR is required")
    try:
        grid = [float(c) for c in args.c_grid.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--C-grid: expected comma-separated numbers such as 0.1,1,10, got {args.c_grid!r}") from None
    with _process_group(args.device) as info:
        work = _transfer_descriptors(
            args.items, args.data, output_dir=args.output_dir, scales=args.test_scales, flip=args.flip,
            aggregation=args.aggregate, train_split=args.train_split, test_split=args.test_split,
            train_per_class=args.train_per_class, test_per_class=args.test_per_class, splits=args.splits,
            exclude=args.exclude_class, c_grid=grid, folds=args.folds, train_features=args.train_features,
            test_features=args.test_features, device=info.device, amp=args.amp, batch_size=args.batch_size,
            workers=args.workers, progress=info.is_main and sys.stderr.isatty())
    if work is None:  # a rank > 0: its share of the descriptors is done
        return 0
    report = _fit_transfer(work, c_grid=grid, folds=args.folds)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    pm = (lambda k: f" ± {report[k + '_std']:.2f}" if k + "_std" in report else "")
    if "mAP" in report:
        print(f"mAP {report['mAP']:.2f}%{pm('mAP')} (VOC-2007 11-point AP); {report['mAP_area']:.2f}%"
              f"{pm('mAP_area')} (area under PR, VOC-2010+)")
    else:
        print(f"accuracy {report['accuracy']:.2f}%{pm('accuracy')}; mean class accuracy "
              f"{report['mean_class_accuracy']:.2f}%{pm('mean_class_accuracy')}")
    print(f"{report['protocol']}; C = {report['C']} (cross-validated); results in {args.output_dir}/results.json")
    return 0
