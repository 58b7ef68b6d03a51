"""Transfer (Appendix B of the paper): very deep features and linear SVMs on new datasets.

The descriptors (the penultimate layer applied densely, pooled, flip-averaged, at
several scales Q and of several nets, L2-normalised) and their resumable files
live in `vggnet.transfer.descriptors`; their public names are re-exported here, so
`from vggnet.transfer.pipeline import DescriptorExtractor` still works. This module runs the
protocols (VOC devkit trainval/test, Caltech-style splits, disjoint train and
test sets) and fits the one-vs-rest linear SVMs of `vggnet.transfer.svm` (C
chosen on the training images only) and scores them as the paper does. The commands `vgg features` and
`vgg transfer` live in `vggnet.transfer.cli`.

    vgg transfer D.pt E.pt --data VOCdevkit/VOC2007 --aggregate average --output-dir voc07 --json
    vgg transfer D.pt --data 101_ObjectCategories --train-per-class 30 --test-per-class 50 --splits 3 \\
        --exclude-class BACKGROUND_Google --aggregate stack
    vgg transfer predict voc07 photo.jpg more_photos/

Under torchrun (`torchrun --nproc-per-node=8 -m vggnet.cli transfer ...`) every
rank computes its shard of the descriptors (see `vggnet.transfer.descriptors`); rank 0
alone then fits the SVMs, after the others have left the process group, writes
the files and prints.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from vggnet.distributed import on_main
from vggnet.transfer.descriptors import (  # re-exported: they were defined here before vggnet.transfer.descriptors
    AGGREGATIONS as AGGREGATIONS, FEATURES_FORMAT as FEATURES_FORMAT, DescriptorExtractor as DescriptorExtractor,
    Features as Features, ImageSet as ImageSet, checkpoint_digest as checkpoint_digest,
    default_scales as default_scales, list_images as list_images, load_features as load_features,
    pooled_descriptor as pooled_descriptor, split_per_class as split_per_class)
from vggnet.errors import CheckpointError, DataError, UserError
from vggnet.distributed import rank_world

__all__ = [
    "AGGREGATIONS", "ImageSet", "list_images", "split_per_class", "pooled_descriptor", "checkpoint_digest",
    "DescriptorExtractor", "Features", "load_features", "LinearSVMs", "C_SELECTIONS", "select_C", "voc07_ap", "voc_area_ap",
    "multilabel_metrics", "singlelabel_metrics", "check_disjoint", "transfer", "predict_transfer", "pixel_descriptors",
    "demo_transfer",
]

CLASSIFIER_FORMAT = "vggnet.transfer.pipeline.classifier"
# C of the linear SVM, chosen over this log grid (descriptors are L2-normalised).
from vggnet.arguments import C_GRID  # noqa: E402  (defined with the flags)
from vggnet.transfer.svm import (  # noqa: E402  (re-exported: the SVMs and metrics used to live here)
    C_SELECTIONS as C_SELECTIONS, LinearSVMs as LinearSVMs, multilabel_metrics as multilabel_metrics,
    select_C as select_C, singlelabel_metrics as singlelabel_metrics, voc07_ap as voc07_ap,
    voc_area_ap as voc_area_ap)


def _evaluate(scores: np.ndarray, images: ImageSet) -> dict[str, Any]:
    if images.multi_label:
        return multilabel_metrics(scores, images.labels, images.classes)
    return singlelabel_metrics(scores, images.labels, images.classes)


# --------------------------------------------------------------------------- end to end


def check_disjoint(train_set: ImageSet, test_set: ImageSet, what: str) -> None:
    """Refuse to test on training images: `what` names the two sets in the error."""
    shared = set(map(os.path.realpath, train_set.paths)) & set(map(os.path.realpath, test_set.paths))
    if shared:
        raise UserError(f"{what} share {len(shared)} image(s) (e.g. {sorted(shared)[0]}): a classifier must not be "
                        f"tested on its training images; choose disjoint --train-split and --test-split (VOC: "
                        f"trainval and test, or train and val), or split a folder of classes with "
                        f"--train-per-class N --test-per-class M")


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

        return on_main(read)
    out = cache / f"{name}-{extractor.key[:16]}.safetensors"
    return extractor.extract(images, out, progress=progress).descriptors


@dataclass
class TransferWork:
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
    output_dir: str | os.PathLike = "runs/transfer",
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
    c_selection: str = "holdout",
    holdout: float = 0.2,
    train_features: str | None = None,
    test_features: str | None = None,
    device: str | torch.device | None = None,
    amp: str = "off",
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
) -> dict[str, Any] | None:
    """Appendix B end to end: descriptors, SVMs with C chosen on a hold-out of the training images
    (`c_selection="holdout"`, 20% by default, the paper's) or by `folds`-fold cross-validation
    (`c_selection="cv"`), the test metrics. Train and test images never overlap (refused otherwise).

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
    work = transfer_descriptors(
        checkpoints, data, output_dir=output_dir, scales=scales, flip=flip, aggregation=aggregation,
        train_split=train_split, test_split=test_split, train_per_class=train_per_class,
        test_per_class=test_per_class, splits=splits, exclude=exclude, c_grid=c_grid, folds=folds,
        train_features=train_features, test_features=test_features, device=device, amp=amp,
        batch_size=batch_size, workers=workers, progress=progress)
    return None if work is None else fit_transfer(work, c_grid=c_grid, folds=folds, c_selection=c_selection,
                                                  holdout=holdout)


def transfer_descriptors(
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
    channels_last: str | bool = False,
    batch_size: int,
    workers: int,
    progress: bool,
) -> TransferWork | None:
    """The first half of `transfer`: the image lists, the splits and the descriptors.

    Collective under torch.distributed; returns the work for the SVMs on rank 0 and
    None on the other ranks. Everything that can be refused (flags, too few images
    in a class) is refused before any descriptor is computed.
    """
    from vggnet.data.voc import is_voc_devkit, voc_splits

    if splits < 1 or folds < 2 or not c_grid or min(c_grid) <= 0:
        raise UserError(f"need --splits >= 1, --folds >= 2 and a positive --C-grid; got {splits}, {folds}, "
                        f"{list(c_grid)}")
    rank, _ = rank_world()
    out = Path(output_dir)
    cache = out / "features"
    extractor = DescriptorExtractor(checkpoints, scales=scales, flip=flip, aggregation=aggregation, device=device,
                                    amp=amp, batch_size=batch_size, workers=workers, channels_last=channels_last)
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
        for (tr_set, _, te_set, _), seed in zip(runs, range(splits)):
            check_disjoint(tr_set, te_set, f"--data {data}, split {seed}")
        protocol = f"{train_per_class} train / {test_per_class or 'all other'} test images per class, {splits} splits"
    else:
        if is_voc_devkit(root):
            have = voc_splits(root)
            tr_name = train_split or ("trainval" if "trainval" in have and "test" in have else "train")
            te_name = test_split or ("test" if "test" in have and tr_name == "trainval" else "val")
        else:
            from vggnet.data.voc_action import is_voc_action

            if is_voc_action(root):
                raise UserError(f"--data {data} holds VOC action lists (ImageSets/Action) and no ImageSets/Main: "
                                f"classify its persons' actions with --task action")
            if not any((root / s).is_dir() for s in ("train", "val", "test")):
                # class folders with no split: "train" and "test" would both be the whole folder
                raise UserError(f"--data {data} is a folder of class folders with no train/ and test/ (or val/) "
                                f"split, so it would be tested on its own training images: give "
                                f"--train-per-class N (and --test-per-class M, --splits K) to split it per class "
                                f"(the paper's Caltech protocol: 30 and 50, 3 splits), or point --data at a root "
                                f"with train/ and test/ folders")
            tr_name = train_split or "train"
            te_name = test_split or ("test" if (root / "test").is_dir() else "val")
        train_set = list_images(root, tr_name, exclude=exclude)
        test_set = list_images(root, te_name, classes=train_set.classes, exclude=exclude)
        check_disjoint(train_set, test_set, f"--data {data}: the training set ({tr_name}) and the test set "
                                            f"({te_name})")
        X_tr = _features_for(extractor, train_set, tr_name, cache, train_features, progress)
        X_te = _features_for(extractor, test_set, te_name, cache, test_features, progress)
        if rank != 0:
            return None
        assert X_tr is not None and X_te is not None
        runs.append((train_set, X_tr, test_set, X_te))
        protocol = f"train on {tr_name}, test on {te_name}"
    return TransferWork(extractor, runs, protocol, str(data), out)


def fit_transfer(work: TransferWork, *, c_grid: Sequence[float], folds: int, c_selection: str = "holdout",
                 holdout: float = 0.2) -> dict[str, Any]:
    """The second half of `transfer` (one process: rank 0): C on a hold-out or by cross-validation
    (`select_C`), the SVMs, the test metrics; writes the classifier and results.json once."""
    from vggnet.checkpoint import atomic_write

    results = []
    first_svm = None
    for train_set, X_tr, test_set, X_te in work.runs:
        Y = train_set.targets()
        for name, images, targets in (("training", train_set, Y), ("test", test_set, test_set.targets())):
            if images.multi_label and not (np.asarray(targets) > 0).any():  # every AP undefined: mAP nan
                raise DataError(f"{work.data}: none of the {len(images.paths)} {name} images has an object of any "
                                f"class (every annotation empty?); AP needs positives")
        C, cv = select_C(X_tr, Y, multi_label=train_set.multi_label, grid=c_grid, folds=folds,
                         selection=c_selection, holdout=holdout)
        svm = LinearSVMs(C).fit(X_tr, Y)
        first_svm = first_svm or svm
        results.append({"C": C, "cv": cv, "train_images": len(train_set.paths), "test_images": len(test_set.paths),
                        **_evaluate(svm.decision_function(X_te), test_set)})
    first = work.runs[0][0]
    report = _summarise(results, multi_label=first.multi_label)
    settings = {**work.extractor.settings(), "classes": first.classes, "multi_label": first.multi_label,
                "C": results[0]["C"]}
    _save_classifier(work.out / "classifier.safetensors", first_svm, settings)
    report["C_selection"] = (f"{holdout:.0%} hold-out of the training images" if c_selection == "holdout"
                             else f"{folds}-fold cross-validation on the training images")
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
                     device: str | torch.device | None = None, batch_size: int = 32, amp: str = "auto",
                     channels_last: str | bool = False) -> list[dict[str, Any]]:
    """Apply a saved `vgg transfer` classifier end to end: image -> descriptor -> SVM scores.

    Each result: `{"image", "scores": {class: score}, "labels": [...]}` where labels
    are the classes with a positive score (multi-label) or the best class.
    """
    from vggnet.data.datasets import list_image_files

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
            files += [str(f) for f in list_image_files(p)]
        elif p.is_file():
            files.append(str(p))
        else:
            raise UserError(f"{item}: no such image file or directory")
    if not files:
        raise UserError("no images to classify")
    extractor = DescriptorExtractor(ckpts, scales=settings["scales"], flip=settings["flip"],
                                    aggregation=settings["aggregation"],
                                    # auto: the precision the SVMs' descriptors were computed in
                                    amp=settings.get("amp", "off") if amp == "auto" else amp,
                                    channels_last=channels_last,
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
    from vggnet.data.images import load_image

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
