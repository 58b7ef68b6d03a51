"""The PASCAL VOC devkit layout as a multi-label image set (Appendix B's VOC-2007/2012 protocol).

    ROOT/JPEGImages/<id>.jpg
    ROOT/Annotations/<id>.xml            objects with <name> and <difficult>
    ROOT/ImageSets/Main/<split>.txt      image ids of train, val, trainval, test

An image's labels come from the objects in its annotation, as the devkit's
classification task does: 1 when it holds a non-difficult object of the class,
0 when its only objects of the class are difficult (the image is ignored for that
class's AP and left out of that class's training), -1 otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vggnet.data.annotations import read_text_file, read_voc_xml
from vggnet.errors import DataError

__all__ = ["is_voc_devkit", "voc_splits", "read_voc_split"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def is_voc_devkit(root: str | os.PathLike) -> bool:
    """True when `root` has the devkit's JPEGImages/ and ImageSets/Main/ folders."""
    root = Path(root)
    return (root / "JPEGImages").is_dir() and (root / "ImageSets" / "Main").is_dir()


def voc_splits(root: str | os.PathLike) -> list[str]:
    """The image-set lists of ROOT/ImageSets/Main (those without a class prefix), sorted."""
    main = Path(root) / "ImageSets" / "Main"
    return sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)


def image_path(root: Path, image_id: str) -> Path | None:
    """`root/JPEGImages/<image_id>` with the first image suffix that exists (.jpg, .jpeg, .png), or None."""
    for suffix in _IMAGE_SUFFIXES:
        p = root / "JPEGImages" / f"{image_id}{suffix}"
        if p.is_file():
            return p
    return None


def read_voc_split(root: str | os.PathLike, split: str, classes: Sequence[str] | None = None
                   ) -> tuple[list[str], np.ndarray, list[str]]:
    """One image set of a VOC devkit folder: (image paths, labels (N, C) int8 in {1, 0, -1}, classes).

    `classes` fixes the class order (e.g. the training split's); by default the
    sorted names of every object in the split. Every listed image must exist and
    have an annotation; a missing one is a `DataError` naming it.
    """
    root = Path(root)
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        found = voc_splits(root) if (root / "ImageSets" / "Main").is_dir() else []
        raise DataError(f"{listing}: no such image set (found: {', '.join(found) or 'none'}); "
                        f"pass --split / --train-split / --test-split with one of these")
    ids = [line.split()[0] for line in read_text_file(listing, "image set").splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{listing}: lists no images")
    paths: list[str] = []
    objects: list[dict[str, bool]] = []  # per image: class -> has a non-difficult instance
    for image_id in ids:
        image = image_path(root, image_id)
        if image is None:
            raise DataError(f"{listing}: lists image {image_id!r}, but {root / 'JPEGImages' / image_id}.jpg "
                            f"does not exist; restore the file or remove the id from the list")
        xml = root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            raise DataError(f"{xml}: missing annotation of image {image_id!r} listed in {listing}; every listed "
                            f"image needs Annotations/<id>.xml (its objects are its labels)")
        _, names, difficult = read_voc_xml(xml, difficult=True)
        present: dict[str, bool] = {}
        for name, hard in zip(names, difficult.tolist()):
            present[name] = present.get(name, False) or not hard
        paths.append(str(image))
        objects.append(present)
    if classes is None:
        classes = sorted({name for present in objects for name in present})
        if not classes:
            raise DataError(f"{listing}: the annotations of its images hold no objects")
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.full((len(ids), len(classes)), -1, dtype=np.int8)
    for row, present in enumerate(objects):
        for name, easy in present.items():
            if name not in index:
                raise DataError(f"{root / 'Annotations' / ids[row]}.xml: object class {name!r} is not among the "
                                f"{len(classes)} classes of the training split ({', '.join(classes[:8])}...)")
            labels[row, index[name]] = 1 if easy else 0
    return paths, labels, classes
