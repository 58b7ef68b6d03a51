"""The synthetic shapes dataset: the embedded default for training and evaluation.

A deterministic generator of labelled shapes (circle, triangle, star, ring, ...)
drawn at widely varying scale (a seventh to most of the image), position (around
the centre, as photographers frame objects), tilt (up to about 30 degrees either
way: objects in photos are mostly upright) and colour on textured, noisy backgrounds, in images of varied size and
aspect (160-400 px per side by default). Scale varies on purpose: it is what the
paper's isotropic rescaling and scale jittering (§3.1) and multi-scale evaluation
(§3.2) are about. Every image has a ground-truth box (Appendix A).

Colour is drawn independently of the class, so mean colour does not predict the
label; the class is in the outline only.

Image `i` of a split depends only on (seed, split, i): the dataset is the same in
any order, in any number of worker processes, in memory or on disk.

On disk (`write_synthetic`, `vgg synth OUT`) it has the layout of a real dataset:

    OUT/train/<class>/<class>_<i>.jpg          ImageNet train layout
    OUT/val/<class>/<class>_<i>.jpg            validation in class folders
    OUT/annotations/<split>/<class>/<stem>.xml  PASCAL VOC boxes (ILSVRC bbox layout)
    OUT/synthetic.json                         the generator's settings and class list

`write_multilabel` (`vgg synth --multi-label OUT`) writes scenes of one to three
shapes in the PASCAL VOC devkit layout instead, for the transfer experiments of
Appendix B (multi-label classification, mAP).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from vggnet.errors import UserError

__all__ = ["SHAPES", "SyntheticShapes", "write_synthetic", "voc_xml", "render_scene", "write_multilabel"]

_Poly = list[tuple[float, float]]


def _regular(n: int, r: float = 1.0, phase: float = 0.0) -> _Poly:
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star(points: int = 5, inner: float = 0.42) -> _Poly:
    return [((1.0 if k % 2 == 0 else inner) * math.cos(-math.pi / 2 + math.pi * k / points),
             (1.0 if k % 2 == 0 else inner) * math.sin(-math.pi / 2 + math.pi * k / points)) for k in range(2 * points)]


def _heart() -> _Poly:
    pts = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x / 17.0, (y + 2.5) / 17.0))
    return pts


def _ellipse(rx: float, ry: float, n: int = 48, cx: float = 0.0) -> _Poly:
    return [(cx + rx * math.cos(2 * math.pi * k / n), ry * math.sin(2 * math.pi * k / n)) for k in range(n)]


# Each shape: polygons in a unit frame (extent about [-1, 1]) with fill 255 (ink) or
# 0 (a hole). Drawing into a mask and pasting a colour through it keeps the
# background's texture around and inside holes (ring, crescent).
SHAPES: dict[str, list[tuple[_Poly, int]]] = {
    "circle": [(_regular(48), 255)],
    "triangle": [(_regular(3, phase=-math.pi / 2), 255)],
    "square": [(_regular(4, phase=math.pi / 4), 255)],
    "star": [(_star(), 255)],
    "cross": [([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
                (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)], 255)],
    "ring": [(_regular(48), 255), (_regular(48, 0.58), 0)],
    "crescent": [(_regular(48), 255), (_ellipse(0.85, 0.85, cx=0.45), 0)],
    "arrow": [([(-1, -0.22), (0.15, -0.22), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.22), (-1, 0.22)], 255)],
    "heart": [(_heart(), 255)],
    "semicircle": [([(math.cos(math.pi * k / 32), -0.5 + math.sin(math.pi * k / 32)) for k in range(33)], 255)],
    "hexagon": [(_regular(6), 255)],
    "ellipse": [(_ellipse(1.0, 0.45), 255)],
    "rectangle": [([(-1, -0.4), (1, -0.4), (1, 0.4), (-1, 0.4)], 255)],
    "lshape": [([(-0.7, -1), (-0.1, -1), (-0.1, 0.4), (0.7, 0.4), (0.7, 1), (-0.7, 1)], 255)],
    "trapezoid": [([(-1, 0.55), (1, 0.55), (0.45, -0.55), (-0.45, -0.55)], 255)],
    "pentagon": [(_regular(5, phase=-math.pi / 2), 255)],
}
# `classes=k` takes the first k: the most distinct outlines come first.
_ORDER = list(SHAPES)

# The generator's difficulty knobs: the shape's extent as a fraction of the smallest
# side, its rotation range (radians, either way), and the number of random lines.
# Full turns (rotation pi) and extents down to a tenth held a narrow VGG near chance
# for hundreds of steps: in-memory trials of the demo's net (A at 1/8 width, 64 px
# crops, 3000 images) reached 20% validation accuracy after 400 steps with them and
# 53% with these, and 85% after 1200 steps.
_EXTENT = (0.15, 0.9)
_ROTATION = 0.5
_LINES = (0, 3)
_BG_SPREAD = 48

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

# Sensor-like noise: one fixed bank of N(0, 1) int8 values (scaled x16) from which
# each image takes a window at a random offset. Drawing fresh Gaussian noise per
# image costs more than everything else in the generator together.
_NOISE_BANK: np.ndarray | None = None
_NOISE_SIDE = 512


def _noise_bank() -> np.ndarray:
    global _NOISE_BANK
    if _NOISE_BANK is None:
        rng = np.random.default_rng(20140904)  # arXiv 1409.1556 submission date
        _NOISE_BANK = np.clip(rng.standard_normal((_NOISE_SIDE, _NOISE_SIDE, 3)) * 16, -127, 127).astype(np.int8)
    return _NOISE_BANK


def _resolve_classes(classes: int | Sequence[str]) -> list[str]:
    if isinstance(classes, int):
        if not 2 <= classes <= len(_ORDER):
            raise UserError(f"--classes: expected 2 to {len(_ORDER)} shape classes, got {classes}")
        names = _ORDER[:classes]
    else:
        names = list(classes)
        unknown = [n for n in names if n not in SHAPES]
        if unknown or len(set(names)) != len(names) or len(names) < 2:
            raise UserError(f"classes: expected at least 2 distinct names from {', '.join(_ORDER)}, got {names}")
    # class index order = sorted names = torchvision ImageFolder's order of the folders on disk
    return sorted(names)


def _image_size(rng: np.random.Generator, size_range: tuple[int, int]) -> tuple[int, int]:
    """(width, height): side lengths anywhere in [lo, hi] with photo-like aspect ratios (up to 16:10 either way)."""
    lo, hi = size_range
    w = int(rng.integers(lo, hi + 1))
    h = int(np.clip(round(w * math.exp(rng.uniform(-0.47, 0.47))), lo, hi))
    if rng.random() < 0.5:
        w, h = h, w
    return w, h


def _render(rng: np.random.Generator, shape: str, size_range: tuple[int, int]) -> tuple[Image.Image, tuple[int, int, int, int]]:
    w, h = _image_size(rng, size_range)
    img, c1, c2 = _background(rng, w, h)
    # The shape: size from 0.15 to 0.9 of the smallest side (larger ones more often), tilted up to _ROTATION,
    # in a colour that stands out from the background. Its centre is drawn around the
    # image centre (objects in photos tend to be framed), so that the paper's random
    # crops of the rescaled image usually contain at least part of it.
    # sqrt: larger shapes are more frequent (as objects in ImageNet photos), small ones still occur
    extent = (_EXTENT[0] + (_EXTENT[1] - _EXTENT[0]) * math.sqrt(rng.uniform())) * min(w, h)
    box = _paste_shape(rng, img, shape, extent, c1, c2, centre_spread=0.2)
    return _add_noise(rng, img), box


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    # Background: a random colour and a second one near it (within _BG_SPREAD per
    # channel) mixed by a low-frequency noise field (a coarse random grid upsampled
    # bicubically), crossed by up to two random lines. Texture of full contrast (two
    # independent colours) and more lines made the task too hard for a small net to
    # start learning in minutes of CPU time.
    c1 = rng.integers(0, 256, 3)
    c2 = np.clip(c1 + rng.integers(-_BG_SPREAD, _BG_SPREAD + 1, 3), 0, 255)
    cells = rng.integers(2, 7, 2)
    field = Image.fromarray(rng.integers(0, 256, (cells[1], cells[0]), dtype=np.uint8), "L")
    t = np.asarray(field.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)[..., None] / 255.0
    bg = (c1 * (1 - t) + c2 * t).astype(np.uint8)
    img = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(*_LINES))):
        x0, x1 = rng.integers(0, w, 2)
        y0, y1 = rng.integers(0, h, 2)
        draw.line([(int(x0), int(y0)), (int(x1), int(y1))], fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
                  width=int(rng.integers(1, 4)))
    return img, c1, c2


def _paste_shape(rng: np.random.Generator, img: Image.Image, shape: str, extent: float, c1: np.ndarray,
                 c2: np.ndarray, *, centre_spread: float | None) -> tuple[int, int, int, int]:
    """Draw `shape` of size `extent` px into `img` (in place); its box (x0, y0, x1, y1), upper corner exclusive.

    The centre is drawn around the image centre (`centre_spread`: std as a fraction
    of the side) or, with None, uniformly where the shape fits.
    """
    w, h = img.size
    angle = rng.uniform(-_ROTATION, _ROTATION)
    ca, sa = math.cos(angle), math.sin(angle)
    r = extent / 2
    polys = [([(r * (ca * x - sa * y), r * (sa * x + ca * y)) for x, y in poly], fill) for poly, fill in SHAPES[shape]]
    xs = [p[0] for p in polys[0][0]]
    ys = [p[1] for p in polys[0][0]]
    minx, maxx, miny, maxy = min(xs), max(xs), min(ys), max(ys)
    if centre_spread is None:
        cx = float(rng.uniform(-minx, max(-minx, w - 1 - maxx)))
        cy = float(rng.uniform(-miny, max(-miny, h - 1 - maxy)))
    else:
        cx = float(np.clip(w / 2 + rng.normal(0, centre_spread * w), -minx, max(-minx, w - 1 - maxx)))
        cy = float(np.clip(h / 2 + rng.normal(0, centre_spread * h), -miny, max(-miny, h - 1 - maxy)))
    mask = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    for poly, fill in polys:
        mdraw.polygon([(cx + x, cy + y) for x, y in poly], fill=fill)
    for _ in range(50):  # visible against both background colours (L1 distance)
        colour = rng.integers(0, 256, 3)
        if min(np.abs(colour - c1).sum(), np.abs(colour - c2).sum()) > 120:
            break
    img.paste(tuple(int(v) for v in colour), mask=mask)
    return mask.getbbox() or (0, 0, 1, 1)


def _add_noise(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    # Noise over everything, of random strength: a window of the fixed bank.
    w, h = img.size
    bank = _noise_bank()
    ox, oy = int(rng.integers(0, _NOISE_SIDE - w + 1)), int(rng.integers(0, _NOISE_SIDE - h + 1))
    strength = int(rng.integers(1, 9))  # sigma = 2 * strength grey levels
    noise = bank[oy:oy + h, ox:ox + w].astype(np.int16) * strength >> 3
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


class SyntheticShapes(torch.utils.data.Dataset):
    """The synthetic shapes dataset in memory: `size` images, classes balanced.

    Items are `(image, label)`, or `(image, label, boxes)` with `boxes=True`
    (`tv_tensors.BoundingBoxes`, XYXY). `transform` is called as `transform(image)`
    or `transform(image, boxes)` with a Pillow RGB image, as `build_dataset` does.
    """

    def __init__(self, size: int = 1000, *, classes: int | Sequence[str] = 10, split: str = "train",
                 seed: int = 0, transform: Callable[..., Any] | None = None, boxes: bool = False,
                 image_size: tuple[int, int] = (160, 400)) -> None:
        if split not in _SPLIT_IDS:
            raise UserError(f"split: expected one of {', '.join(_SPLIT_IDS)}, got {split!r}")
        if size < 0:
            raise UserError(f"size: expected a number of images >= 0, got {size}")
        lo, hi = int(image_size[0]), int(image_size[1])
        if not 32 <= lo <= hi <= _NOISE_SIDE:
            raise UserError(f"image_size: expected 32 <= min <= max <= {_NOISE_SIDE} pixels, got {image_size}")
        self.classes = _resolve_classes(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.size, self.split, self.seed = int(size), split, int(seed)
        self.image_size = (lo, hi)
        self.transform = transform
        self.return_boxes = boxes
        n = len(self.classes)
        self.targets = [i % n for i in range(self.size)]
        self.samples = [(f"synthetic/{split}/{self.classes[t]}/{self.stem(i)}", t) for i, t in enumerate(self.targets)]

    def stem(self, index: int) -> str:
        return f"{self.classes[self.targets[index]]}_{index:05d}"

    def __len__(self) -> int:
        return self.size

    def generate(self, index: int) -> tuple[Image.Image, int, tuple[int, int, int, int]]:
        """(RGB image, label, box (x0, y0, x1, y1)) of image `index`; pure function of (seed, split, index)."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        label = self.targets[index]
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        img, box = _render(rng, self.classes[label], self.image_size)
        return img, label, box

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        from torchvision import tv_tensors

        img, label, box = self.generate(index)
        if not self.return_boxes:
            return (self.transform(img) if self.transform else img), label
        boxes = tv_tensors.BoundingBoxes(torch.tensor([box], dtype=torch.float32), format="XYXY",
                                         canvas_size=(img.height, img.width))
        if self.transform:
            img, boxes = self.transform(img, boxes)
        return img, label, boxes


def voc_xml(filename: str, size: tuple[int, int], objects: Sequence[tuple[Any, ...]],
            folder: str = "") -> str:
    """A PASCAL VOC annotation. `objects`: (name, box) or (name, box, difficult). Boxes
    are (x0, y0, x1, y1) in continuous pixel coordinates; VOC stores 1-based inclusive
    pixel indices: xmin = x0 + 1, xmax = x1."""
    w, h = size
    objs = "".join(
        f"  <object>\n    <name>{o[0]}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
        f"    <difficult>{int(bool(o[2])) if len(o) > 2 else 0}</difficult>\n    <bndbox>\n"
        f"      <xmin>{int(round(o[1][0])) + 1}</xmin>\n"
        f"      <ymin>{int(round(o[1][1])) + 1}</ymin>\n      <xmax>{int(round(o[1][2]))}</xmax>\n"
        f"      <ymax>{int(round(o[1][3]))}</ymax>\n    </bndbox>\n  </object>\n"
        for o in objects)
    return (f"<annotation>\n  <folder>{folder}</folder>\n  <filename>{filename}</filename>\n"
            f"  <source><database>vggnet synthetic shapes</database></source>\n"
            f"  <size>\n    <width>{w}</width>\n    <height>{h}</height>\n    <depth>3</depth>\n  </size>\n"
            f"  <segmented>0</segmented>\n{objs}</annotation>\n")


def _write_range(args: tuple[Path, dict[str, Any], str, int, int, int, int]) -> int:
    out, params, split, size, start, stop, quality = args
    ds = SyntheticShapes(size, classes=params["classes"], split=split, seed=params["seed"],
                         image_size=tuple(params["image_size"]))
    for i in range(start, stop):
        img, label, box = ds.generate(i)
        cls, stem = ds.classes[label], ds.stem(i)
        img.save(out / split / cls / f"{stem}.jpg", quality=quality)
        (out / "annotations" / split / cls / f"{stem}.xml").write_text(
            voc_xml(f"{stem}.jpg", img.size, [(cls, box)], folder=cls), encoding="utf-8")
    return stop - start


def prepare_output(out: str | os.PathLike, force: bool, folders: Sequence[str],
                    counts: Sequence[tuple[int, str]]) -> Path:
    """`out` ready to be written: refused if it is a file, or not empty without `force` (then only
    `folders` and synthetic.json, what a writer here makes, are removed); image counts checked."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out}: exists and is not empty; pass --force (force=True) to overwrite it")
        for name in folders:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        (out / "synthetic.json").unlink(missing_ok=True)
    for n, flag in counts:
        if n < 0:
            raise UserError(f"{flag}: expected a number of images >= 0, got {n}")
    return out


def write_synthetic(out: str | os.PathLike, classes: int | Sequence[str] = 10, train: int = 2000, val: int = 500,
                    seed: int = 0, force: bool = False, *, image_size: tuple[int, int] = (160, 400),
                    quality: int = 90, workers: int = 0) -> dict[str, Any]:
    """Write the dataset as JPEG class folders with VOC XML boxes (layout in the module docstring).

    `train` and `val` are total image counts, spread evenly over the classes. An
    existing non-empty `out` is refused unless `force`, which replaces only what
    this function writes (train/, val/, annotations/, synthetic.json).
    Returns the settings written to `out/synthetic.json`.
    """
    out = prepare_output(out, force, ("train", "val", "annotations"), ((train, "--train"), (val, "--val")))
    if not 1 <= quality <= 100:
        raise UserError(f"--quality: expected 1 to 100, got {quality}")
    names = _resolve_classes(classes)
    SyntheticShapes(0, classes=names, image_size=image_size)  # validates image_size
    params = {"generator": "vggnet.data.synthetic", "version": 1, "classes": names, "seed": int(seed),
              "image_size": [int(image_size[0]), int(image_size[1])], "train": int(train), "val": int(val),
              "quality": int(quality), "boxes": "annotations/<split>/<class>/<stem>.xml (PASCAL VOC)"}
    jobs = []
    for split, size in (("train", train), ("val", val)):
        for cls in names:
            (out / split / cls).mkdir(parents=True, exist_ok=True)
            (out / "annotations" / split / cls).mkdir(parents=True, exist_ok=True)
        chunk = max(1, math.ceil(size / max(1, 4 * workers))) if workers > 1 else max(size, 1)
        jobs += [(out, params, split, size, s, min(size, s + chunk), quality) for s in range(0, size, chunk)]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_range, jobs))
    else:
        for job in jobs:
            _write_range(job)
    (out / "synthetic.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return params


# --------------------------------------------------------------------------- multi-label scenes (Appendix B)

# Scenes for the transfer experiments: one to three shapes of distinct classes,
# each 0.2-0.5 of the smallest side, placed uniformly (they may overlap). A shape
# smaller than _DIFFICULT_EXTENT of the smallest side is marked <difficult>, as
# VOC's annotators mark objects too small to recognise without context.
_SCENE_EXTENT = (0.2, 0.5)
_DIFFICULT_EXTENT = 0.24
_SCENE_SPLIT_ID = 3


def render_scene(seed: int, index: int, classes: Sequence[str], image_size: tuple[int, int] = (160, 400)
                 ) -> tuple[Image.Image, list[tuple[str, tuple[int, int, int, int], bool]]]:
    """Scene `index`: (RGB image, [(class, box, difficult), ...]); a pure function of (seed, index)."""
    rng = np.random.default_rng([seed, _SCENE_SPLIT_ID, index])
    w, h = _image_size(rng, image_size)
    img, c1, c2 = _background(rng, w, h)
    count = int(rng.integers(1, 4))
    names = [classes[int(i)] for i in rng.choice(len(classes), size=min(count, len(classes)), replace=False)]
    objects = []
    for name in names:
        fraction = float(rng.uniform(*_SCENE_EXTENT))
        box = _paste_shape(rng, img, name, fraction * min(w, h), c1, c2, centre_spread=None)
        objects.append((name, box, fraction < _DIFFICULT_EXTENT))
    return _add_noise(rng, img), objects


def write_multilabel(out: str | os.PathLike, classes: int | Sequence[str] = 10, trainval: int = 2000,
                     test: int = 500, seed: int = 0, force: bool = False, *,
                     image_size: tuple[int, int] = (160, 400), quality: int = 90) -> dict[str, Any]:
    """Write multi-label scenes in the PASCAL VOC devkit layout (Appendix B's VOC protocol):

        OUT/JPEGImages/<id>.jpg, OUT/Annotations/<id>.xml (objects with <difficult>),
        OUT/ImageSets/Main/{train,val,trainval,test}.txt and <class>_<split>.txt (1 / -1 / 0),
        OUT/synthetic.json

    `trainval` images are split in halves into train and val; `test` images follow.
    """
    out = prepare_output(out, force, ("JPEGImages", "Annotations", "ImageSets"),
                          ((trainval, "--train"), (test, "--val")))
    names = _resolve_classes(classes)
    SyntheticShapes(0, classes=names, image_size=image_size)  # validates image_size
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    ids = {"train": [], "val": [], "test": []}
    presence: dict[str, dict[str, int]] = {}
    for i in range(trainval + test):
        image_id = f"{i + 1:06d}"
        split = "test" if i >= trainval else ("train" if i < trainval // 2 else "val")
        ids[split].append(image_id)
        img, objects = render_scene(seed, i, names, image_size)
        img.save(out / "JPEGImages" / f"{image_id}.jpg", quality=quality)
        (out / "Annotations" / f"{image_id}.xml").write_text(
            voc_xml(f"{image_id}.jpg", img.size, objects, folder="JPEGImages"), encoding="utf-8")
        # the devkit's per-class lists: 1 present, 0 only difficult instances, -1 absent
        flags: dict[str, int] = {}
        for name, _, difficult in objects:
            flags[name] = max(flags.get(name, -1), 0 if difficult else 1)
        presence[image_id] = flags
    ids["trainval"] = ids["train"] + ids["val"]
    main = out / "ImageSets" / "Main"
    for split, members in ids.items():
        (main / f"{split}.txt").write_text("".join(f"{m}\n" for m in members), encoding="utf-8")
        for name in names:
            (main / f"{name}_{split}.txt").write_text(
                "".join(f"{m} {presence[m].get(name, -1):2d}\n" for m in members), encoding="utf-8")
    params = {"generator": "vggnet.data.synthetic.write_multilabel", "version": 1, "classes": names,
              "seed": int(seed), "image_size": [int(image_size[0]), int(image_size[1])], "trainval": int(trainval),
              "test": int(test), "quality": int(quality), "layout": "PASCAL VOC devkit"}
    (out / "synthetic.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return params


# --------------------------------------------------------------------------- vgg synth


