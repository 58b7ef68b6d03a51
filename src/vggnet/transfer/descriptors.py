"""Appendix B's descriptors: very deep features of new images, and the files that keep them.

The descriptor of an image: the net without its last FC layer, applied densely
(`VGG.features_map`: FC1 as a grid x grid conv, FC2 as a 1x1 conv, after ReLU) to
the whole image rescaled so its smallest side is Q, globally average-pooled to
`fc_width` numbers (4096 in the paper), averaged with the descriptor of the
horizontally flipped image. Several Q are stacked (concatenated) or averaged
(`aggregation`; the paper averages for VOC and stacks for Caltech); the
descriptors of several nets are stacked (the paper's D+E fusion); the result is
L2-normalised. Always in eval mode. The linear SVMs trained on them are
`vggnet.transfer.pipeline`'s; `vgg features` (`vggnet.transfer.cli`) writes them to a file.

    vgg features --checkpoint run/best.pt --data DIR --split train --test-scales 256,384,512 --output train.safetensors

Images of different sizes are batched by rescaled size, exactly as dense
evaluation does (`vggnet.classification.evaluate.run_pass`). Descriptor files are written in
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

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vggnet import distributed
from vggnet.errors import CheckpointError, DataError, UserError
from vggnet.distributed import agree, gather_shards, on_main, rank_world
from vggnet.inference import check_scales_fit, identity_preprocessing, load_nets, resolve_device, run_pass, with_transform
from vggnet.execution import choose_execution
from vggnet.models import VGG
from vggnet.paths import fingerprint

__all__ = [
    "AGGREGATIONS", "ImageSet", "list_images", "split_per_class", "pooled_descriptor", "checkpoint_digest",
    "DescriptorExtractor", "Features", "load_features",
]

from vggnet.arguments import AGGREGATIONS  # noqa: E402  (defined with the flags)
FEATURES_FORMAT = "vggnet.features"


# --------------------------------------------------------------------------- torch.distributed
#
# Under torchrun every rank computes the descriptors of its shard of the images
# (rows r, r+W, ... as `vgg eval` does) and all_gather reassembles them, so every
# rank holds every descriptor; rank 0 alone reads and writes files and fits SVMs.
# The helpers below keep the ranks in step: whatever rank 0 decides from the files
# it sees is broadcast, and an error on one rank is raised on every rank instead of
# leaving the others blocked in their next collective.


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
    if not kept:
        raise UserError(f"--exclude-class leaves no class of {ds.root} (it names all {len(names)}); exclude fewer")
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
                 workers: int = 0, channels_last: str | bool = False) -> None:
        if aggregation not in AGGREGATIONS:
            raise UserError(f"--aggregate: expected one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
        if not checkpoints:
            raise UserError("give at least one checkpoint (CKPT...)")
        if batch_size < 1 or workers < 0:
            raise UserError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
        self.device = resolve_device(device)
        chosen = choose_execution(amp, channels_last, self.device)  # auto: bf16 on CUDA and bf16-native CPUs
        self.nets = load_nets(list(checkpoints), preprocessing=None, device=self.device,
                              channels_last=chosen.channels_last,
                              use="descriptors (vgg features, vgg transfer)")
        crop = max(net.crop_size for net in self.nets)
        self.scales = sorted(set(scales)) if scales else default_scales(crop)
        if self.scales[0] < crop:
            raise UserError(f"--test-scales: Q={self.scales[0]} is smaller than the crop size {crop}; the dense "
                            f"net needs Q >= crop_size")
        self.flip, self.aggregation = bool(flip), aggregation
        self.amp = chosen.amp
        for net in self.nets:  # a Q that cannot fit is refused with the estimate, before any work
            check_scales_fit(net.model, self.scales, self.device, method="dense", flip=self.flip, amp=self.amp,
                             where=f"net {net.name}")
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
        rank, world = rank_world()
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
        agree(error)  # (a no-op in one process) an unreadable image on one rank stops every rank
        assert local is not None
        return gather_shards(local, len(rows))

    def _compute_local(self, images: ImageSet, rows: list[int], *, progress: bool, desc: str) -> torch.Tensor:
        """The descriptors of `rows` computed in this process (one shard under torch.distributed).

        Every step after `run_pass` (scales stacked or averaged, nets stacked, L2)
        works row by row, so a shard's rows are final before they are gathered.
        """
        from vggnet.data.datasets import ImageDataset
        from vggnet.data.transforms import DenseEvalPreset

        if not rows:  # a shard can be empty (fewer images than ranks)
            return torch.zeros(0, self.dim)
        dataset = ImageDataset([(p, 0) for p in images.paths], ["image"], strict=True)
        per_net: list[list[torch.Tensor]] = [[] for _ in self.nets]
        for q in self.scales:
            ds = with_transform(dataset, DenseEvalPreset(scale=q, preprocessing=identity_preprocessing()))
            local, _ = run_pass(self.nets, ds, rows, methods=["dense"], flip=self.flip, grid=1,
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

        from vggnet.checkpoint import atomic_write, weights_checksum

        out = Path(out)
        if chunk_size < 1:
            raise UserError(f"--chunk-size must be >= 1, got {chunk_size}")
        meta = self._metadata(images)
        parts = out.with_name(f"{out.name}.parts-{self.key[:16]}")
        n = len(images.paths)
        chunk_rows = [list(range(start, min(start + chunk_size, n))) for start in range(0, n, chunk_size)]
        # a chunk is reused for the same images, unchanged (paths, sizes, mtimes: `vggnet.paths.fingerprint`)
        tags = [fingerprint([images.paths[i] for i in rows]) for rows in chunk_rows]

        found = on_main(lambda: self._on_disk(images, out, parts, chunk_rows, tags))  # rank 0 looks
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
            on_main(lambda d=d, path=path, tag=tags[c]: atomic_write(
                path, lambda f: f.write(st_save({"descriptors": d.contiguous()},
                                                {"images": tag, "sha256": weights_checksum({"descriptors": d})}))))
            chunks.append(d)
        descriptors = torch.cat(chunks) if chunks else torch.zeros(0, self.dim)

        def finish() -> None:
            labels = torch.from_numpy(np.ascontiguousarray(images.labels))
            blob = st_save({"descriptors": descriptors.contiguous(), "labels": labels}, meta)
            atomic_write(out, lambda f: f.write(blob))
            shutil.rmtree(parts, ignore_errors=True)

        on_main(finish)
        return Features(descriptors.numpy(), images, self.key, self.settings())

    def _on_disk(self, images: ImageSet, out: Path, parts: Path, chunk_rows: list[list[int]], tags: list[str]
                 ) -> tuple[Features | None, dict[int, torch.Tensor]]:
        """What an earlier run left (read on rank 0): a complete `out` made with this key for these
        images, else the chunks of `parts` whose images are these chunks' (by index)."""
        from safetensors import SafetensorError, safe_open

        from vggnet.checkpoint import weights_checksum

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
                    header = f.metadata() or {}
                    if header.get("images") != tag:
                        continue  # other images (another --chunk-size or another list): computed again
                    d = f.get_tensor("descriptors")
            except (SafetensorError, OSError):
                continue  # unreadable: computed again and replaced
            if header.get("sha256") != weights_checksum({"descriptors": d}):
                warnings.warn(f"{path}: its descriptors do not match their checksum (damaged on disk, or written "
                              f"by an older vggnet): computed again", stacklevel=2)
                continue
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
