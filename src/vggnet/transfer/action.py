"""Action classification on PASCAL VOC-2012 (Appendix B, Table 12).

"Predicting an action class from a single image, given a bounding box of the
person performing the action." An example is one person instance. Two settings:

- `image`: the descriptor of the whole image only (every person of an image gets it);
- `image+box`: that descriptor stacked with the descriptor of the person's box,
  the box cropped from the image and described like an image (dense at each Q,
  flip-averaged, scales aggregated, L2-normalised); the stacked vector is
  L2-normalised again.

One linear SVM per action (one-vs-rest, `LinearSVMs`), C chosen on the training
instances only (`select_C`), mean AP over the actions on the test split (VOC AP:
`mAP` the 11-point measure, `mAP_area` the area under PR, VOC-2012's own). The
paper's Net-D & Net-E numbers: 79.2 (image) and 84.0 (image and box) mAP.

    vgg transfer D.pt E.pt --task action --data VOC2012 --test-scales 256,384,512,640,768 \\
        --action-setting image+box --output-dir voc12-action --json

Descriptors are cached as `vgg transfer`'s are (`output_dir/features/`), so the
two settings share the image descriptors; box crops are written once to
`output_dir/features/boxes/<split>/`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from vggnet.data.voc_action import ActionSet, read_action_split
from vggnet.distributed import on_main, rank_world
from vggnet.errors import UserError
from vggnet.transfer.descriptors import DescriptorExtractor, ImageSet
from vggnet.transfer.pipeline import C_GRID, check_disjoint
from vggnet.transfer.svm import LinearSVMs, multilabel_metrics, select_C

__all__ = ["ACTION_SETTINGS", "ActionWork", "crop_boxes", "action_descriptors", "fit_action", "action_transfer"]

ACTION_SETTINGS = ("image", "image+box")


def crop_boxes(instances: ActionSet, folder: str | os.PathLike) -> list[str]:
    """Each person's box cropped from its image into `folder` (PNG, written once); the files' paths."""
    from vggnet.data.images import load_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path, box, (image_id, index) in zip(instances.paths, instances.boxes, instances.instances):
        target = folder / f"{image_id}_{index}.png"
        if not target.is_file():
            img = load_image(path)
            x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
            x1, y1 = min(img.width, max(x0 + 1, int(np.ceil(box[2])))), min(img.height, max(y0 + 1, int(np.ceil(box[3]))))
            tmp = target.with_suffix(".tmp.png")
            img.crop((x0, y0, x1, y1)).save(tmp)
            os.replace(tmp, target)
        out.append(str(target))
    return out


@dataclass
class ActionWork:
    """The descriptors of the train and test instances, per setting's part."""

    extractor: DescriptorExtractor
    train: ActionSet
    test: ActionSet
    X_train: np.ndarray
    X_test: np.ndarray
    setting: str
    data: str
    out: Path
    splits: tuple[str, str]


def _describe(extractor: DescriptorExtractor, instances: ActionSet, split: str, setting: str, cache: Path,
              progress: bool) -> np.ndarray | None:
    """(N, D) descriptors of the instances (image, or image and box stacked), None on ranks > 0."""
    images = sorted(set(instances.paths))
    whole = extractor.extract(ImageSet(images, np.zeros(len(images), dtype=np.int64), ["?"]),
                              cache / f"action-{split}-images-{extractor.key[:16]}.safetensors",
                              progress=progress).descriptors
    row = {p: i for i, p in enumerate(images)}
    X = whole[[row[p] for p in instances.paths]]
    if setting == "image+box":
        crops = on_main(lambda: crop_boxes(instances, cache / "boxes" / split))
        crops = crops if crops is not None else [str(cache / "boxes" / split / f"{i}_{k}.png")
                                                 for i, k in instances.instances]
        boxes = extractor.extract(ImageSet(crops, np.zeros(len(crops), dtype=np.int64), ["?"]),
                                  cache / f"action-{split}-boxes-{extractor.key[:16]}.safetensors",
                                  progress=progress).descriptors
        X = np.concatenate([X, boxes], axis=1)
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X if rank_world()[0] == 0 else None


def action_descriptors(checkpoints: Sequence[str | os.PathLike | Mapping[str, Any]], data: str | os.PathLike, *,
                       output_dir: str | os.PathLike, setting: str = "image+box", train_split: str | None = None,
                       test_split: str | None = None, scales: Sequence[int] | None = None, flip: bool = True,
                       aggregation: str = "average", device: str | torch.device | None = None, amp: str = "off",
                       channels_last: str = "auto", batch_size: int = 32, workers: int = 0,
                       progress: bool = False) -> ActionWork | None:
    """The instances of the train and test splits (`train` and `val` by default: VOC-2012's test labels
    are not public) and their descriptors. Collective under torch.distributed; None on ranks > 0."""
    if setting not in ACTION_SETTINGS:
        raise UserError(f"--action-setting: expected one of {', '.join(ACTION_SETTINGS)}, got {setting!r}")
    tr_name, te_name = train_split or "train", test_split or "val"
    train = read_action_split(data, tr_name)
    test = read_action_split(data, te_name, actions=train.actions)

    def image_set(s: ActionSet) -> ImageSet:
        return ImageSet(sorted(set(s.paths)), np.zeros(len(set(s.paths)), dtype=np.int64), ["?"])

    check_disjoint(image_set(train), image_set(test), f"--data {data}: the action lists of {tr_name} and {te_name}")
    out = Path(output_dir)
    extractor = DescriptorExtractor(checkpoints, scales=scales, flip=flip, aggregation=aggregation, device=device,
                                    amp=amp, batch_size=batch_size, workers=workers, channels_last=channels_last)
    X_tr = _describe(extractor, train, tr_name, setting, out / "features", progress)
    X_te = _describe(extractor, test, te_name, setting, out / "features", progress)
    if X_tr is None or X_te is None:
        return None
    return ActionWork(extractor, train, test, X_tr, X_te, setting, str(data), out, (tr_name, te_name))


def fit_action(work: ActionWork, *, c_grid: Sequence[float] = C_GRID, folds: int = 3, c_selection: str = "holdout",
               holdout: float = 0.2) -> dict[str, Any]:
    """One linear SVM per action on the training instances, AP per action on the test instances;
    writes `results.json` in the output folder and returns the report."""
    from vggnet.checkpoint import atomic_write

    Y = work.train.labels
    C, scores = select_C(work.X_train, Y, multi_label=True, grid=c_grid, folds=folds, selection=c_selection,
                         holdout=holdout)
    svm = LinearSVMs(C).fit(work.X_train, Y)
    metrics = multilabel_metrics(svm.decision_function(work.X_test), work.test.labels, work.test.actions)
    report = {**metrics, "task": "action", "setting": work.setting, "C": C, "cv": scores,
              "C_selection": (f"{holdout:.0%} hold-out of the training instances" if c_selection == "holdout"
                              else f"{folds}-fold cross-validation on the training instances"),
              "train_instances": len(work.train), "test_instances": len(work.test),
              "protocol": f"train on {work.splits[0]}, test on {work.splits[1]} (person instances, boxes given)",
              "actions": work.test.actions, "data": work.data, "descriptor": work.extractor.settings()}
    text = json.dumps(report, indent=2) + "\n"
    atomic_write(work.out / "results.json", lambda f: f.write(text.encode("utf-8")))
    return report


def action_transfer(checkpoints: Sequence[str | os.PathLike | Mapping[str, Any]], data: str | os.PathLike, *,
                    output_dir: str | os.PathLike = "action_run", setting: str = "image+box",
                    c_grid: Sequence[float] = C_GRID, folds: int = 3, c_selection: str = "holdout",
                    holdout: float = 0.2, **descriptor_args: Any) -> dict[str, Any] | None:
    """Table 12 end to end: descriptors, per-action SVMs, mAP (None on ranks > 0 under torchrun)."""
    work = action_descriptors(checkpoints, data, output_dir=output_dir, setting=setting, **descriptor_args)
    return None if work is None else fit_action(work, c_grid=c_grid, folds=folds, c_selection=c_selection,
                                                holdout=holdout)
