"""Image datasets on disk: the layouts of ImageNet (ILSVRC-2012, the paper's §4 data).

    root/train/<class>/*.JPEG              class folders (torchvision's ImageFolder layout)
    root/val/<class>/*.JPEG                validation in class folders, or
    root/val/*.JPEG + a labels file        flat, with one of
        CSV `image,label`                    (header optional; label = class name)
        ILSVRC2012_validation_ground_truth.txt   1-based devkit indices + the synset list
        LOC_val_solution.csv               Kaggle's ImageNet localisation challenge
    boxes (Appendix A)                     PASCAL VOC XML files, or LOC_*_solution.csv

Class indices follow `classes` (sorted folder names unless given, e.g. from a
checkpoint), so a model's outputs mean the same thing wherever it is evaluated.

Bad files: in training (`strict=False`) an image that cannot be decoded yields
`None` and a `BadImageWarning` naming the path; `collate_skip_bad` drops such
items and counts them (`Batch.skipped`), and `check_bad_fraction` stops the run
when too many are bad. In evaluation (`strict=True`) the same file raises
`DataError` naming it: the test set never shrinks silently. Layout mistakes (an
empty class folder, a missing labels file, a label that is not a known class) are
errors when the dataset is built, not in the middle of an epoch.

Listing files: one rule for training, evaluation and `vgg predict`
(`image_file_problem`). A file is an image when its suffix is one of
torchvision's `IMG_EXTENSIONS` or `.gif` (Pillow reads the first frame of an
animated GIF, as `predict` always has), or a format Pillow has a plugin for
here (`.avif`, `.heic` with pillow-heif, ...). Symbolic links are followed
(class folders often are links) but no directory is walked twice, so a link
loop cannot multiply the training set. Files left out for a reason a user would
want to know (a FIFO or device named `.jpg`, a broken link, a HEIC without its
plugin, a symlink loop) are named in one `LeftOutWarning` per dataset and kept
in `ImageDataset.left_out` as (path, reason) pairs for the run's log.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS

from vggnet.data.annotations import read_labels_file, read_loc_solution, read_voc_xml
from vggnet.data.images import BadImageError, decode_image, displayed_size, open_image
from vggnet.errors import DataError

__all__ = [
    "IMG_EXTENSIONS", "IMAGE_EXTENSIONS", "BadImageWarning", "LeftOutWarning", "image_file_problem", "ImageDataset", "Batch", "build_dataset", "collate_skip_bad",
    "check_bad_fraction", "make_loader",
]


class BadImageWarning(UserWarning):
    """An image was skipped in training because it cannot be decoded; the message names it."""


class LeftOutWarning(UserWarning):
    """Files of a dataset folder that were not listed (not regular files, unreadable formats, link loops)."""


def _pillow_suffixes() -> set[str]:
    from PIL import Image

    Image.init()  # registers every plugin Pillow has here (and pillow-heif's, once imported by the user)
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


# Formats that are images but that this Pillow may not read: named when left out, never silently.
_IMAGE_LIKE = (".heic", ".heif", ".avif", ".jxl", ".jp2", ".svg", ".raw", ".cr2", ".nef", ".arw", ".dng")
# The images we list: torchvision's ImageFolder suffixes, plus GIF (first frame, what `predict` reads).
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(IMG_EXTENSIONS) + (".gif",)


def _suffix_problem(name: str) -> str | None:
    """None for a file name we read as an image; the reason for an image-like one we cannot; '' for others."""
    lower = name.lower()
    if lower.endswith(IMAGE_EXTENSIONS):
        return None
    suffix = os.path.splitext(lower)[1]
    if suffix in _IMAGE_LIKE:
        if suffix in _pillow_suffixes():
            return None
        plugin = " (install pillow-heif)" if suffix in (".heic", ".heif") else ""
        return f"{suffix} images cannot be decoded by this Pillow{plugin}"
    return ""


def _file_kind(path: str | os.PathLike) -> str | None:
    """None for a regular file (links followed); else what it is, for a message."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "no such file"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    return "not a regular file"


def image_file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not read as an image (None when it is): the one rule of training, evaluation and predict.

    Reading a FIFO named `.jpg` would block forever, so only regular files (or
    links to them) are images; their suffix must be one we decode.
    """
    kind = _file_kind(path)
    if kind is not None:
        return kind
    reason = _suffix_problem(os.path.basename(path))
    if reason == "":
        return (f"not an image file name (expected a suffix among "
                f"{', '.join(sorted({*IMAGE_EXTENSIONS, *(e for e in _IMAGE_LIKE if e in _pillow_suffixes())}))})")
    return reason


def _is_image(name: str) -> bool:
    return not name.startswith(".") and _suffix_problem(name) is None


def _dir_ids(folders: Iterable[Path]) -> set[tuple[int, int]]:
    ids = set()
    for f in folders:
        try:
            st = f.stat()
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def list_image_files(folder: Path, recursive: bool = True, left_out: list[tuple[str, str]] | None = None,
                 seen: set[tuple[int, int]] | None = None) -> list[Path]:
    """Image files under `folder`, in sorted walk order (a folder's files, then its sub-folders).

    Links are followed like torchvision's make_dataset does (class folders are
    often symlinks), but a directory already walked (a link loop such as
    `loop -> ..`, or a second link to one folder), `folder` itself or one of its
    parents is not entered again; `seen` shares the walked directories between
    calls (the class folders of one split). Files that look like images but
    cannot be read as one go to `left_out` with the reason.
    """
    left_out = [] if left_out is None else left_out
    found: list[Path] = []
    seen = set() if seen is None else seen
    for start in (folder.absolute(), Path(os.path.realpath(folder))):
        seen |= _dir_ids([start, *start.parents])
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            st = here.stat()
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            raise DataError(f"{here}: permission denied (the folder cannot be listed); "
                            f"fix its permissions (chmod a+rx) or remove it") from None
        except OSError as exc:
            raise DataError(f"{here}: cannot list the folder: {exc.strerror or exc}") from None
        seen.add((st.st_dev, st.st_ino))
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            path = Path(e.path)
            try:
                is_dir = e.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                if not recursive:
                    continue
                try:
                    target = e.stat()
                except OSError as exc:
                    left_out.append((str(path), f"cannot be read ({exc.strerror or exc})"))
                    continue
                if (target.st_dev, target.st_ino) in seen:
                    left_out.append((str(path), f"a link to {os.path.realpath(path)}, a folder already listed "
                                                f"(a symlink loop): not followed"))
                    continue
                seen.add((target.st_dev, target.st_ino))
                subdirs.append(path)
                continue
            reason = _suffix_problem(e.name)
            if reason == "":
                continue  # not an image name (labels, XML boxes, notes): not ours to report
            if reason is None:
                try:
                    regular = e.is_file()  # follows links; no stat for a plain file (d_type)
                except OSError:
                    regular = False
                if regular:
                    found.append(path)
                    continue
                reason = _file_kind(path) or "not a regular file"
            left_out.append((str(path), reason))
        stack.extend(reversed(subdirs))
    return found


def warn_left_out(where: Path, left_out: Sequence[tuple[str, str]]) -> None:
    if not left_out:
        return
    shown = "; ".join(f"{p}: {r}" for p, r in left_out[:10])
    more = f"; and {len(left_out) - 10} more" if len(left_out) > 10 else ""
    warnings.warn(f"{where}: left out {len(left_out)} file(s): {shown}{more}", LeftOutWarning, stacklevel=3)


# --------------------------------------------------------------------------- annotation formats




# --------------------------------------------------------------------------- the dataset


class ImageDataset(Dataset):
    """Images with labels (and optionally boxes) from files.

    Items: `(image, label)`, or `(image, label, boxes)` when boxes are loaded
    (`tv_tensors.BoundingBoxes`, XYXY, transformed with the image); `None` for an
    undecodable file when `strict=False`. `transform(image)` or
    `transform(image, boxes)` receives a Pillow image: lazily opened for our
    presets (so they can decode JPEGs at reduced size), decoded to RGB otherwise.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], *,
                 transform: Callable[..., Any] | None = None, strict: bool = True, root: str | Path = "",
                 boxes: Sequence[Any] | None = None, left_out: Sequence[tuple[str, str]] = ()) -> None:
        self.samples = [(str(p), int(t)) for p, t in samples]
        # (path, reason) of the files of the folder that were not listed (see `image_file_problem`)
        self.left_out = [(str(p), str(r)) for p, r in left_out]
        self.targets = [t for _, t in self.samples]
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform
        self.strict = strict
        self.root = str(root)
        # per sample: None (no box), a path to a VOC XML (parsed when read) or (boxes, names)
        self.box_sources = None if boxes is None else list(boxes)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def has_boxes(self) -> bool:
        return self.box_sources is not None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={self.root!r}, images={len(self)}, classes={len(self.classes)}, "
                f"boxes={self.has_boxes}, strict={self.strict})")

    def raw_boxes(self, index: int) -> tuple[np.ndarray, list[str]]:
        """((n, 4) XYXY boxes in the displayed image's pixels, class names) of one image."""
        if self.box_sources is None:
            raise DataError(f"{self.root}: this dataset was built without boxes")
        src = self.box_sources[index]
        if src is None:
            return np.zeros((0, 4), np.float32), []
        if isinstance(src, (str, Path)):
            return read_voc_xml(src)
        return src

    def __getitem__(self, index: int) -> Any:
        path, label = self.samples[index]
        try:
            img = open_image(path)
            boxes = None
            if self.box_sources is not None:
                w, h = displayed_size(img)
                try:
                    arr, _ = self.raw_boxes(index)
                except BadImageError:
                    raise
                except DataError as exc:  # a broken annotation is a bad sample, like a broken image
                    raise BadImageError(None, f"its annotation cannot be used: {exc}") from None
                boxes = tv_tensors.BoundingBoxes(torch.as_tensor(arr, dtype=torch.float32).reshape(-1, 4),
                                                 format="XYXY", canvas_size=(h, w))
            if self.transform is None or not hasattr(self.transform, "decode_side"):
                # a foreign transform gets what ImageFolder would give it: a decoded RGB image
                img = decode_image(img)
            if self.transform is not None:
                out = self.transform(img) if boxes is None else self.transform(img, boxes)
                if boxes is not None:
                    img, boxes = out
                else:
                    img = out
        except BadImageError as exc:
            if exc.path is None:
                exc = BadImageError(path, exc.reason)
            if self.strict:
                raise exc from None
            warnings.warn(f"skipping bad image {exc}", BadImageWarning, stacklevel=2)
            return None
        return (img, label) if boxes is None else (img, label, boxes)


# --------------------------------------------------------------------------- batching


class Batch(tuple):
    """A collated batch: unpacks as `images, labels` (or `images, labels, boxes`),
    and `.skipped` says how many items of it were bad files and dropped."""

    skipped: int

    def __new__(cls, items: Iterable[Any], skipped: int = 0) -> Batch:
        self = super().__new__(cls, items)
        self.skipped = int(skipped)
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickling across DataLoader workers keeps .skipped
        return (tuple(self), self.skipped)

    def pin_memory(self) -> Batch:
        # DataLoader's pin_memory calls this method when present; keep the count
        return Batch((x.pin_memory() if isinstance(x, torch.Tensor) else x for x in self), self.skipped)

    def to(self, device: Any, non_blocking: bool = False) -> Batch:
        return Batch((x.to(device, non_blocking=non_blocking) if isinstance(x, torch.Tensor) else x
                      for x in self), self.skipped)


def collate_skip_bad(batch: Sequence[Any]) -> Batch:
    """Drop the `None` items of bad files and collate the rest.

    Images and labels are stacked; boxes (the third element, when present) stay a
    list, one `BoundingBoxes` per image, since their number varies. Returns a
    `Batch` with `.skipped` set. When every item was bad the `Batch` is empty
    (falsy, len 0) and still carries the count, so a training loop reads
    `if not batch: bad += batch.skipped; continue`.
    """
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return Batch((), skipped)
    images = torch.stack([torch.as_tensor(b[0]).as_subclass(torch.Tensor) for b in good])
    labels = torch.tensor([int(b[1]) for b in good], dtype=torch.long)
    if len(good[0]) > 2:
        return Batch((images, labels, [b[2] for b in good]), skipped)
    return Batch((images, labels), skipped)


def check_bad_fraction(bad: int, total: int, max_fraction: float, *, where: str = "the training set") -> None:
    """Stop training when more than `max_fraction` of the images of an epoch were bad files."""
    if total > 0 and bad / total > max_fraction:
        raise DataError(f"{bad} of {total} images ({100 * bad / total:.2f}%) in {where} could not be decoded, "
                        f"more than the allowed {100 * max_fraction:.2f}% (the warnings above name them)")


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool = False, workers: int = 0,
                device: str | torch.device = "cpu", sampler: Any = None, drop_last: bool = False,
                prefetch_factor: int = 2) -> DataLoader:
    """The DataLoader the paper's pipeline wants: worker processes kept across
    epochs (no re-forking and re-importing each epoch), pinned memory on GPU, bad
    files skipped by `collate_skip_bad`."""
    workers = int(workers)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=workers, collate_fn=collate_skip_bad, drop_last=drop_last,
        pin_memory=torch.device(device).type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None)


# --------------------------------------------------------------------------- build_dataset

_LABEL_FILES = ("LOC_{split}_solution.csv", "ILSVRC2012_validation_ground_truth.txt", "{split}_labels.csv",
                "{split}.csv", "labels.csv")


def _split_dir(root: Path, split: str) -> tuple[Path, Path]:
    """(split folder, dataset root): `root/split` when it exists, else `root` is the split folder."""
    if not root.exists():
        raise DataError(f"{root}: no such directory")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a dataset folder with {split}/ or a folder of images)")
    if (root / split).is_dir():
        return root / split, root
    others = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    if others:
        # a dataset root without this split: do not mistake train/ and val/ for classes
        raise DataError(f"{root}: no {split}/ folder (found {', '.join(f'{s}/' for s in others)}); "
                        f"pass the {split} folder itself or add {root / split}")
    return root, root.parent


def _find_labels_file(split_dir: Path, data_root: Path, split: str) -> Path | None:
    for folder in (split_dir, data_root):
        for pattern in _LABEL_FILES:
            cand = folder / pattern.format(split=split)
            if cand.is_file():
                if "ILSVRC2012_validation" in cand.name and split == "train":
                    continue
                return cand
    return None


def _subfolders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders (the class folders of an ImageFolder layout)."""
    try:
        with os.scandir(folder) as entries:  # closed even when the caller only asks whether any exist
            return sorted(d.name for d in entries if d.is_dir() and not d.name.startswith("."))
    except PermissionError:
        raise DataError(f"{folder}: permission denied (the folder cannot be listed); "
                        f"fix its permissions (chmod a+rx)") from None


def _class_folders(split_dir: Path, classes: Sequence[str] | None,
                   left_out: list[tuple[str, str]]) -> tuple[list[tuple[str, int]], list[str]]:
    folders = _subfolders(split_dir)
    if classes is None:
        classes = folders
    class_to_idx = {c: i for i, c in enumerate(classes)}
    unknown = [f for f in folders if f not in class_to_idx]
    if unknown:
        raise DataError(f"{split_dir}: class folder(s) {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''} are not among the {len(classes)} known classes "
                        f"(e.g. {', '.join(list(classes)[:5])}); the model's classes come from its training set")
    samples: list[tuple[str, int]] = []
    # a link inside one class folder to another (or to the split folder) must not relabel its images
    seen = _dir_ids([split_dir, *(split_dir / name for name in folders)])
    for name in folders:
        before = len(left_out)
        files = list_image_files(split_dir / name, left_out=left_out, seen=seen)
        if not files:
            why = "".join(f"; left out {p}: {r}" for p, r in left_out[before:before + 3])
            raise DataError(f"{split_dir / name}: empty class folder (no files ending in "
                            f"{', '.join(IMAGE_EXTENSIONS)}{why}); remove it or add its images")
        samples += [(str(p), class_to_idx[name]) for p in files]
    return samples, list(classes)


def _flat_with_labels(split_dir: Path, labels_file: Path, classes: Sequence[str] | None,
                      synsets: Any, left_out: list[tuple[str, str]]) -> tuple[list[tuple[str, int]], list[str]]:
    labels = read_labels_file(labels_file, synsets)
    files = list_image_files(split_dir, left_out=left_out)
    by_key: dict[str, Path] = {}
    for p in files:
        rel = p.relative_to(split_dir).as_posix()
        for key in {rel, p.name, p.stem, str(Path(rel).with_suffix("").as_posix())}:
            by_key.setdefault(key, p)
    if classes is None:
        classes = sorted(set(labels.values()))
    class_to_idx = {c: i for i, c in enumerate(classes)}
    samples, missing, seen = [], [], set()
    for key, name in labels.items():
        if name not in class_to_idx:
            raise DataError(f"{labels_file}: label {name!r} of {key!r} is not among the {len(classes)} known "
                            f"classes (e.g. {', '.join(list(classes)[:5])})")
        p = by_key.get(key) or by_key.get(Path(key).stem)
        if p is None:
            missing.append(key)
            continue
        seen.add(p)
        samples.append((str(p), class_to_idx[name]))
    if missing:
        why = "".join(f"; left out {p}: {r}" for p, r in left_out[:3])
        raise DataError(f"{labels_file}: {len(missing)} labelled image(s) are not in {split_dir}, "
                        f"e.g. {', '.join(missing[:3])}{why}")
    unlabelled = [p for p in files if p not in seen]
    if unlabelled:
        raise DataError(f"{split_dir}: {len(unlabelled)} image(s) have no label in {labels_file}, "
                        f"e.g. {', '.join(p.name for p in unlabelled[:3])}")
    if not samples:
        raise DataError(f"{labels_file}: labels no images")
    samples.sort()
    return samples, list(classes)


def _box_sources(samples: Sequence[tuple[str, int]], split_dir: Path, data_root: Path, split: str,
                 boxes: Any) -> list[Any]:
    if boxes is True:
        candidates = [data_root / "annotations" / split, split_dir.parent / "annotations" / split_dir.name,
                      data_root / f"LOC_{split}_solution.csv", split_dir / f"LOC_{split}_solution.csv"]
        source = next((c for c in candidates if c.exists()), None)
        if source is None:
            source = split_dir  # XML files beside the images
    else:
        source = Path(boxes)
        if not source.exists():
            raise DataError(f"{source}: boxes not found (expected a folder of VOC XML files or LOC_*_solution.csv)")
    out: list[Any] = []
    if source.is_file():
        table = read_loc_solution(source)
        for path, _ in samples:
            out.append(table.get(Path(path).stem))
    else:
        # An image's annotation is the XML at its own relative path (train/<class>/x.jpg ->
        # annotations/train/<class>/x.xml), or, for a flat folder of XML files (ImageNet's val), the one
        # of its file name. Never the XML of the same name in another class's folder: that is another
        # image's box.
        xmls: dict[str, Path] = {}
        for dirpath, _, filenames in os.walk(source, followlinks=True):
            for f in filenames:
                if f.lower().endswith(".xml"):
                    full = Path(dirpath) / f
                    xmls.setdefault(full.relative_to(source).with_suffix("").as_posix(), full)
        for path, _ in samples:
            p = Path(path)
            rel = p.relative_to(split_dir).with_suffix("").as_posix() if p.is_relative_to(split_dir) else p.stem
            out.append(xmls.get(rel) or xmls.get(p.stem))
    if not any(o is not None for o in out):
        raise DataError(f"{source}: no boxes found for any of the {len(samples)} images of {split_dir}")
    return out


def build_dataset(root: str | os.PathLike, transform: Callable[..., Any] | None = None, split: str = "train",
                  classes: Sequence[str] | None = None, labels_file: str | os.PathLike | None = None,
                  strict: bool | None = None, *, boxes: bool | str | os.PathLike | None = None,
                  synsets: str | os.PathLike | Sequence[str] | None = None) -> ImageDataset:
    """The dataset of one split of `root` (or of `root` itself if it is the split folder).

    `classes` fixes the class order (e.g. a checkpoint's); by default it is the
    sorted class folders, or the sorted labels of a flat split. `labels_file`
    makes the split flat (found automatically when the folder has no class
    folders: LOC_<split>_solution.csv, ILSVRC2012_validation_ground_truth.txt,
    <split>_labels.csv, <split>.csv, labels.csv). `strict` defaults to
    False for "train" and True otherwise. `boxes=True` loads boxes from
    `ROOT/annotations/<split>/` (VOC XML, mirrored or flat), `LOC_<split>_solution.csv`,
    or XML files beside the images; `boxes=PATH` names the folder or CSV.
    """
    root = Path(root)
    split_dir, data_root = _split_dir(root, split)
    left_out: list[tuple[str, str]] = []
    if classes is not None:
        classes = list(classes)
        if len(set(classes)) != len(classes) or not classes:
            raise DataError(f"classes: expected distinct class names, got {len(classes)} with repeats or none")
    if labels_file is not None:
        labels_path = Path(labels_file)
        if not labels_path.is_file():
            raise DataError(f"{labels_path}: labels file not found")
        samples, classes = _flat_with_labels(split_dir, labels_path, classes, synsets, left_out)
    elif _subfolders(split_dir):
        samples, classes = _class_folders(split_dir, classes, left_out)
    else:
        found = _find_labels_file(split_dir, data_root, split)
        if found is None:
            raise DataError(f"{split_dir}: no class folders and no labels file (expected {split_dir}/<class>/*.jpg, "
                            f"or flat images with a labels file: CSV image,label, the ILSVRC2012 devkit "
                            f"ground truth or LOC_{split}_solution.csv)")
        samples, classes = _flat_with_labels(split_dir, found, classes, synsets, left_out)
    if not samples:
        raise DataError(f"{split_dir}: no images")
    box_sources = None if boxes in (None, False) else _box_sources(samples, split_dir, data_root, split, boxes)
    warn_left_out(split_dir, left_out)
    return ImageDataset(samples, classes, transform=transform, strict=(split != "train") if strict is None else strict,
                        root=split_dir, boxes=box_sources, left_out=left_out)
