"""The PASCAL VOC-2012 action layout (Appendix B's Table 12: action classification).

    ROOT/JPEGImages/<id>.jpg
    ROOT/Annotations/<id>.xml                 person objects: <bndbox> and <actions><jumping>1</jumping>...
    ROOT/ImageSets/Action/<action>_<split>.txt   "<id> <object index> <label>": 1 / -1 (0: ignored)

An example is one person instance (an image and the 1-based index of its object
in the annotation): the task is "predicting an action class from a single image,
given a bounding box of the person performing the action". The actions are the
`<action>` prefixes of the lists (VOC-2012: jumping, phoning, playinginstrument,
reading, ridingbike, ridinghorse, running, takingphoto, usingcomputer, walking,
other), in sorted order unless given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vggnet.data.annotations import read_voc_xml
from vggnet.data.voc import image_path
from vggnet.errors import DataError

__all__ = ["ActionSet", "is_voc_action", "action_splits", "read_action_split"]



@dataclass
class ActionSet:
    """Person instances of one split: image paths, person boxes `(N, 4)` XYXY (continuous pixels),
    labels `(N, A)` int8 in {1, 0, -1}, the actions, and `(image id, object index)` of each."""

    paths: list[str]
    boxes: np.ndarray
    labels: np.ndarray
    actions: list[str]
    instances: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.paths)


def is_voc_action(root: str | os.PathLike) -> bool:
    """True when `root` has JPEGImages/, Annotations/ and ImageSets/Action/ lists."""
    root = Path(root)
    return ((root / "JPEGImages").is_dir() and (root / "Annotations").is_dir()
            and any((root / "ImageSets" / "Action").glob("*_*.txt")))


def action_splits(root: str | os.PathLike) -> dict[str, list[str]]:
    """split -> the actions that have a list for it, from ROOT/ImageSets/Action/<action>_<split>.txt."""
    out: dict[str, list[str]] = {}
    for p in sorted((Path(root) / "ImageSets" / "Action").glob("*_*.txt")):
        action, _, split = p.stem.rpartition("_")
        out.setdefault(split, []).append(action)
    return out


def read_action_split(root: str | os.PathLike, split: str, actions: Sequence[str] | None = None) -> ActionSet:
    """The person instances of `split` with their boxes and per-action labels.

    `actions` fixes the order (e.g. the training split's); every one of them must
    have a list for `split`. A listed image without its file or annotation, or an
    object index not in the annotation, is a `DataError` naming the file.
    """
    root = Path(root)
    have = action_splits(root)
    if split not in have:
        raise DataError(f"{root / 'ImageSets' / 'Action'}: no <action>_{split}.txt lists (splits found: "
                        f"{', '.join(sorted(have)) or 'none'})")
    names = list(actions) if actions is not None else sorted(have[split])
    missing = [a for a in names if a not in have[split]]
    if missing:
        raise DataError(f"{root / 'ImageSets' / 'Action' / f'{missing[0]}_{split}.txt'}: not found (the actions of "
                        f"the training split need a list for {split})")
    labels: dict[tuple[str, int], np.ndarray] = {}
    for a, action in enumerate(names):
        listing = root / "ImageSets" / "Action" / f"{action}_{split}.txt"
        for n, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                image_id, index, flag = parts[0], int(parts[1]), int(parts[2])
            except (IndexError, ValueError):
                raise DataError(f"{listing}:{n}: expected '<image id> <object index> <1|0|-1>', got {line!r}") from None
            labels.setdefault((image_id, index), np.full(len(names), -1, dtype=np.int8))[a] = np.sign(flag)
    paths, boxes, instances = [], [], []
    for image_id, index in sorted(labels):
        image = image_path(root, image_id)
        xml = root / "Annotations" / f"{image_id}.xml"
        if image is None:
            raise DataError(f"{root / 'JPEGImages' / image_id}.jpg: listed in ImageSets/Action/*_{split}.txt but "
                            f"not found")
        if not xml.is_file():
            raise DataError(f"{xml}: not found (the person boxes of {image_id})")
        object_boxes, _ = read_voc_xml(xml)
        if not 1 <= index <= len(object_boxes):
            raise DataError(f"{xml}: object {index} is listed in ImageSets/Action/*_{split}.txt, but the annotation "
                            f"has {len(object_boxes)} objects")
        paths.append(str(image))
        boxes.append(object_boxes[index - 1])
        instances.append((image_id, index))
    if not paths:
        raise DataError(f"{root / 'ImageSets' / 'Action'}: the {split} lists name no person")
    return ActionSet(paths, np.array(boxes, dtype=np.float32).reshape(-1, 4),
                     np.stack([labels[i] for i in instances]), names, instances)
