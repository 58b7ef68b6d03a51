"""`vgg localize train|eval|predict`: the localisation system of Appendix A on the command line.

    # fine-tune a classification net into a per-class box regressor (lr 1e-3)
    vgg localize train --data DIR --init from:runs/cls/best.pt --head pcr --scale 256 --output-dir runs/loc
    # protocol 1 (Table 8): the central crop's box for the ground-truth class
    vgg localize eval --checkpoint runs/loc/best.pt --data DIR --protocol central
    # full protocol (Table 9): dense boxes at several Q, classes ranked by the classifier(s), greedy merge
    vgg localize eval --checkpoint runs/loc/best.pt --classifier runs/cls/best.pt --data DIR \\
        --protocol full --test-scales 256,384
    # Table 9's fusion: two localisation nets, each at its own Q (--test-scales once per --checkpoint)
    vgg localize eval --checkpoint runs/loc256/best.pt --test-scales 256 \\
        --checkpoint runs/loc384/best.pt --test-scales 352,384 --classifier runs/cls/best.pt --data DIR --protocol full
    # five boxes per image, drawn
    vgg localize predict --checkpoint runs/loc/best.pt --classifier runs/cls/best.pt photos/ --output-dir boxes/

Training is the engine's (`vggnet.engine.train`) with a `LocalisationTask`:
every flag of `vgg train` works here, under torchrun too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vggnet.arguments import (BOX_MODES, HEADS, METHODS, TARGETS, add_batch_size_argument, add_checkpoint_argument,
                              add_data_argument, add_execution_arguments, add_json_argument, add_output_argument,
                              add_output_dir_argument, add_progress_argument, add_workers_argument, non_negative_int,
                              output_dir_default, parse_test_scales, positive_int, resolve_workers)
from vggnet.errors import DataError, UserError
from vggnet.paths import check_output, check_output_dir, distinct_outputs

# torch, numpy and the task's modules are imported where they are used, so that the parsers are built
# (and a wrong flag refused) without them
if TYPE_CHECKING:
    import torch

__all__ = ["add_localize_arguments", "run_localize", "localize_train", "evaluate_localisation", "predict_localisation",
           "report_table", "demo_localize"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp", ".gif")


# --------------------------------------------------------------------------- train


def _task_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("localisation (Appendix A)")
    g.add_argument("--head", choices=HEADS, default="pcr",
                   help="scr: one box for all classes (4 outputs); pcr: one box per class (default: %(default)s)")
    g.add_argument("--finetune", choices=("all", "fc"), default="all",
                   help="all layers, or only the FC layers (the conv layers frozen; Table 8) (default: %(default)s)")
    g.add_argument("--box-mode", choices=BOX_MODES, default="whole",
                   help="a box cut by the crop: kept whole (the dense form can predict the full object) "
                        "or clipped to the crop (default: %(default)s)")
    g.add_argument("--target-box", dest="target", choices=TARGETS, default="overlap",
                   help="of several boxes: the one with the largest area inside the crop, or the largest box the "
                        "crop touches (default: %(default)s)")


def localize_train(config: Any, *, head: str = "pcr", finetune: str = "all", box_mode: str = "whole",
                   target: str = "overlap") -> dict[str, Any]:
    """Train a localisation net with the engine; `config` is a `vggnet.engine.TrainConfig`."""
    import dataclasses

    from vggnet.engine import train
    from vggnet.localisation.task import LocalisationTask

    if finetune not in ("all", "fc"):
        raise UserError(f"--finetune: expected all or fc, got {finetune!r}")
    if finetune == "fc":
        config = dataclasses.replace(config, freeze="features")
    if config.data:
        _check_boxes(config)
    return train(config, task=LocalisationTask(head, box_mode=box_mode, target=target))


def _check_boxes(config: Any) -> None:
    """Images without boxes are an error before training starts, naming how many and where."""
    from vggnet.localisation.task import count_images_without_boxes

    from vggnet.data.datasets import build_dataset

    root = Path(config.data)
    for split, folder in (("train", config.train_dir), ("val", config.val_dir)):
        try:
            ds = build_dataset(folder or root, split=split if not folder else "train", boxes=True,
                               labels_file=config.val_labels if split == "val" else None)
        except DataError as exc:
            raise DataError(f"{exc} (looked for boxes in {root / 'annotations' / split}/, "
                            f"LOC_{split}_solution.csv and XML files beside the images)") from None
        missing, examples = count_images_without_boxes(ds)
        if missing:
            raise DataError(f"{missing} of {len(ds)} {split} images have no box (e.g. {', '.join(examples)}); "
                            f"looked in {root / 'annotations' / split}/ (VOC XML), LOC_{split}_solution.csv and "
                            f"beside the images; annotate them or remove them from the localisation set")


# --------------------------------------------------------------------------- eval


def _val_dataset(data: str, classes: Sequence[str], labels_file: str | None = None) -> Any:
    from vggnet.localisation.task import count_images_without_boxes

    from vggnet.data.datasets import build_dataset

    ds = build_dataset(data, split="val", classes=classes, labels_file=labels_file, strict=True, boxes=True)
    missing, examples = count_images_without_boxes(ds)
    if missing:
        raise DataError(f"{missing} of {len(ds)} validation images have no box (e.g. {', '.join(examples)}); "
                        f"localisation error needs a ground-truth box for every image")
    return ds


def _mean_box_row(data: str, val: Any, classes: Sequence[str], sample: int) -> dict[str, Any] | None:
    """The mean training box, scored on the validation images (None without DATA/train)."""
    from vggnet.localisation.task import mean_box, mean_box_error

    from vggnet.data.datasets import build_dataset
    from vggnet.localisation.task import raw_boxes

    root = Path(data)
    if not (root / "train").is_dir():
        return None
    train = build_dataset(root, split="train", classes=classes, boxes=True, strict=False)
    box = mean_box(train, sample=sample)
    base, indices = (val.dataset, list(val.indices)) if hasattr(val, "indices") else (val, range(len(val)))
    gts, sizes = zip(*[raw_boxes(base, i) for i in indices])
    return {"method": "mean training box", "box": [round(float(v), 4) for v in box],
            "localisation_error": mean_box_error(box, gts, sizes)}


def evaluate_localisation(checkpoints: Sequence[str], data: str, *, protocol: str = "central",
                          classifiers: Sequence[str] = (),
                          scales: Sequence[int] | Sequence[Sequence[int]] | None = None,
                          cls_method: str = "dense", cls_scales: Sequence[int] | None = None,
                          merge_iou: float = 0.5, nms_iou: float = 0.5, device: str | torch.device = "auto", batch_size: int = 32, workers: int = 0,
                          mean_box_sample: int = 1000, max_images: int | None = None,
                          progress: bool = False, amp: str = "off", channels_last: bool = False) -> dict[str, Any]:
    """Protocol 1 ("central") or the full protocol ("full") on DATA's validation split.

    `scales`: one list of Q for every net, or one list per net in the order of `checkpoints`
    (`vggnet.localisation.full_protocol.per_net_scales`); default: each net's training S.
    Returns the report: `{"protocol", "localisation_error" (percent; the first net at its
    first scale for "central", the greedy merge for "full"), "rows", "mean_box", ...}`."""
    from vggnet.localisation.task import load_classifier_checkpoint, load_localiser, protocol1
    from vggnet.inference import check_scales_fit, resolve_device

    if protocol not in ("central", "full"):
        raise UserError(f"--protocol: expected central or full, got {protocol!r}")
    if not checkpoints:
        raise UserError("--checkpoint LOC is required (repeat it for several localisation nets)")
    if protocol == "full" and not classifiers:
        raise UserError("--protocol full ranks the classes with a classification net: give --classifier CLS "
                        "(repeat it to fuse several)")
    if not 0 < merge_iou <= 1 or not 0 < nms_iou <= 1:
        raise UserError(f"--merge-iou and --nms-iou must be in (0, 1], got {merge_iou} and {nms_iou}")
    if not Path(data).exists():
        raise UserError(f"--data {data}: no such directory")
    if max_images is not None and max_images < 1:
        raise UserError(f"--max-images must be >= 1 (leave it out for every image), got {max_images}")
    if mean_box_sample < 1:
        raise UserError(f"--mean-box-sample must be >= 1 (training images the mean box is taken over), "
                        f"got {mean_box_sample}")
    for c in classifiers:
        load_classifier_checkpoint(c)  # a localisation checkpoint given as --classifier: named, before any work
    dev = resolve_device(device)
    from vggnet.localisation.full_protocol import per_net_scales, scales_label

    locs = [load_localiser(c) for c in checkpoints]
    per_net = per_net_scales(scales, [loc.default_scale() for loc in locs])
    for loc, qs in zip(locs, per_net):  # a Q that cannot fit is refused with the estimate, before any work
        check_scales_fit(loc.model, qs, dev,
                         method="dense" if protocol == "full" else "central crop", flip=protocol == "full",
                         amp="off", where=f"localisation net {loc.name}")
    classes = locs[0].classes
    val = _val_dataset(data, classes)
    if max_images and max_images < len(val):   # evenly spaced, so every class keeps its share
        from torch.utils.data import Subset

        step = len(val) / max_images
        val = Subset(val, [int(k * step) for k in range(max_images)])
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"protocol": protocol, "data": str(data), "images": len(val),
                              "nets": [{"checkpoint": l.checkpoint, "name": l.name, "head": l.head,
                                        "train_scale": list(l.train_scale) if l.train_scale else None,
                                        "test_scales": qs}
                                       for l, qs in zip(locs, per_net)]}
    if protocol == "central":
        for loc, qs in zip(locs, per_net):
            for q in qs:
                r = protocol1(loc.model.to(dev), val, head=loc.head, preprocessing=loc.preprocessing, scale=q,
                              device=dev, batch_size=batch_size, workers=workers, amp=amp)
                rows.append({"net": f"{loc.name} {loc.head.upper()}", "test_scale": str(q), "method": "central crop",
                             "localisation_error": r["localisation_error"]})
        report["localisation_error"] = rows[0]["localisation_error"]
    else:
        from vggnet.localisation.full_protocol import MERGE_LABELS, MERGE_METHODS, localise_images

        qs = sorted({q for net_qs in per_net for q in net_qs})
        res = localise_images(locs, list(classifiers), val, scales=per_net, cls_scales=cls_scales, cls_method=cls_method,
                              merge_iou=merge_iou, nms_iou=nms_iou, device=dev, workers=workers, batch_size=batch_size,
                              progress=progress, amp=amp, channels_last=channels_last)
        name = " + ".join(f"{l.name} {l.head.upper()}" for l in locs)
        for m in MERGE_METHODS:
            rows.append({"net": name, "test_scale": scales_label(per_net), "method": MERGE_LABELS[m],
                         "localisation_error": res.error(m)})
        report.update({"localisation_error": res.error("merge"), "merge_iou": merge_iou, "nms_iou": nms_iou,
                       "classifiers": list(classifiers), "classification_method": cls_method,
                       "classification_scales": list(cls_scales or qs),
                       "classification_top5_error": res.classification_top5_error, "test_scales": qs,
                       "seconds": res.seconds, "windows": res.windows})
    mb = _mean_box_row(data, val, classes, mean_box_sample)
    if mb is not None:
        rows.append({"net": "-", "test_scale": "-", "method": mb["method"],
                     "localisation_error": mb["localisation_error"]})
        report["mean_box"] = mb
    report["rows"] = rows
    return report


def report_table(report: dict[str, Any]) -> str:
    """The paper-style table (Tables 8-9): net / test Q / method / localisation error."""
    head = ["localisation net", "test Q", "method", "loc. error (%)"]
    body = [[r["net"], r["test_scale"], r["method"], f"{r['localisation_error']:.2f}"] for r in report["rows"]]
    from vggnet.classification.results import markdown_table

    return markdown_table(head, body)


def _markdown(report: dict[str, Any]) -> str:
    title = "protocol 1 (central crop, ground-truth class; Table 8)" if report["protocol"] == "central" else \
        "full protocol (dense boxes, top-5 classes, greedy merge; Table 9)"
    lines = [f"# Localisation error, {title}", "", f"- data: `{report['data']}`, {report['images']} images",
             "- localisation nets: " + "; ".join(f"{n['name']} {n['head'].upper()} ({n['checkpoint']})"
                                                 for n in report["nets"])]
    if report["protocol"] == "full":
        lines.append(f"- classifiers: {', '.join(report['classifiers'])} ({report['classification_method']}); "
                     f"classification top-5 error {report['classification_top5_error']:.2f}%; "
                     f"merge IoU >= {report['merge_iou']}, NMS IoU > {report['nms_iou']}")
    lines += ["", report_table(report), ""]
    if "mean_box" in report:
        lines.append("The mean training box is one fixed box (relative cx, cy, w, h = "
                     f"{report['mean_box']['box']}) for every image, class taken as right: the floor to beat.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- predict


def _image_files(items: Sequence[str]) -> list[str]:
    files: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in _IMAGE_SUFFIXES)
        else:  # the one rule of training and predict: a FIFO is named as one, not "no such file"
            from vggnet.data.datasets import image_file_problem

            problem = image_file_problem(p)
            if problem is not None:
                raise UserError(f"{item}: {'no such file or directory' if problem == 'no such file' else problem}")
            files.append(str(p))
    if not files:
        raise UserError(f"no image files in {', '.join(items)}")
    return files


def ground_truth(files: Sequence[str], annotations: str | None = None) -> list[list[tuple[str, list[float]]] | None]:
    """Each image's annotated boxes [(class, XYXY pixels)], None where it has none.

    `annotations`: a folder of PASCAL VOC XML files (found by the image's name) or a
    LOC_<split>_solution.csv. Without it, an image of a dataset laid out as `vgg synth`
    writes it (ROOT/<split>/<class>/<stem>.jpg) finds ROOT/annotations/<split>/[<class>/]<stem>.xml,
    or <stem>.xml beside the image."""
    from vggnet.data.annotations import read_loc_solution, read_voc_xml

    table: dict[str, Any] | None = None
    xmls: dict[str, Path] = {}
    if annotations is not None:
        source = Path(annotations)
        if source.is_file():
            table = read_loc_solution(source)
        elif source.is_dir():
            xmls = {f.stem: f for f in sorted(source.rglob("*.xml"))}
        else:
            raise UserError(f"--annotations {annotations}: no such folder of VOC XML files or LOC_*_solution.csv")
    out: list[list[tuple[str, list[float]]] | None] = []
    for f in files:
        p = Path(f).resolve()
        if table is not None:
            found = table.get(p.stem)
        else:
            near = [p.with_suffix(".xml")]
            if len(p.parents) > 2:  # ROOT/<split>/<class>/<stem>.jpg or ROOT/<split>/<stem>.jpg
                near = [p.parents[2] / "annotations" / p.parents[1].name / p.parent.name / f"{p.stem}.xml",
                        p.parents[1] / "annotations" / p.parent.name / f"{p.stem}.xml", *near]
            xml = xmls.get(p.stem) if annotations is not None else next((c for c in near if c.is_file()), None)
            found = read_voc_xml(xml) if xml is not None else None
        out.append(None if found is None else [(str(n), [float(v) for v in b]) for b, n in zip(found[0], found[1])])
    return out


def predict_localisation(checkpoints: Sequence[str], classifiers: Sequence[str], images: Sequence[str], out: str, *,
                         scales: Sequence[int] | Sequence[Sequence[int]] | None = None, cls_method: str = "dense",
                         cls_scales: Sequence[int] | None = None, merge_iou: float = 0.5,
                         device: str | torch.device = "auto", workers: int = 0, amp: str = "off",
                         channels_last: bool = False, annotations: str | None = None) -> list[dict[str, Any]]:
    """Five (class, box, score) per image (full protocol, greedy merge); writes OUT/<stem>.png with
    the boxes drawn (and the ground truth, green and dashed, where the image has an annotation:
    see `ground_truth`) and OUT/predictions.json. Returns the predictions."""
    from vggnet.localisation.task import load_classifier_checkpoint, load_localiser
    from vggnet.inference import resolve_device
    from vggnet.localisation.full_protocol import ImageFiles, localise_images, per_net_scales
    from vggnet.checkpoint import atomic_write

    if not classifiers:
        raise UserError("--classifier CLS is required: the classification net ranks the classes")
    for c in classifiers:
        load_classifier_checkpoint(c)
    files = _image_files(images)
    check_output_dir(out, flag="--out", inputs=[*checkpoints, *classifiers, *files, annotations])
    drawings = distinct_outputs(files, out, ".png")  # a/x.jpg and b/x.jpg: two drawings
    for png in drawings:  # --out D D/x.png: the drawing would replace its own image
        check_output(png, flag="--out", inputs=files)
    truths = ground_truth(files, annotations)
    locs = [load_localiser(c) for c in checkpoints]
    dev = resolve_device(device)
    per_net = per_net_scales(scales, [loc.default_scale() for loc in locs])
    qs = per_net[0] if all(p == per_net[0] for p in per_net) else per_net
    res = localise_images(locs, list(classifiers), ImageFiles(files, locs[0].classes), scales=per_net, cls_method=cls_method,
                          cls_scales=cls_scales, merge_iou=merge_iou, device=dev, workers=workers, amp=amp,
                          channels_last=channels_last)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, path in enumerate(files):
        preds = res.predictions["merge"][i]
        ph, pw = res.sizes[i]
        # a merged box may reach past the image (the regressor is unconstrained): clip it, in the drawing and the JSON
        preds = [(c, [min(max(b[0], 0.0), pw), min(max(b[1], 0.0), ph), min(max(b[2], 0.0), pw),
                      min(max(b[3], 0.0), ph)], sc) for c, b, sc in preds]
        drawn = _draw_predictions(path, preds, (ph, pw), res.classes, drawings[i], truth=truths[i])
        results.append({"image": path, "drawn": str(drawn),
                        "predictions": [{"rank": k + 1, "class": res.classes[c], "index": c,
                                         "box": [round(v, 2) for v in b], "score": s}
                                        for k, (c, b, s) in enumerate(preds)]})
        if truths[i] is not None:
            results[-1]["ground_truth"] = [{"class": n, "box": [round(v, 2) for v in b]} for n, b in truths[i]]
    text = json.dumps({"localisation_nets": list(checkpoints), "classifiers": list(classifiers), "test_scales": qs,
                       "merge_iou": merge_iou, "box_format": "XYXY pixels of the original image",
                       "images": results}, indent=2) + "\n"
    atomic_write(out_dir / "predictions.json", lambda f: f.write(text.encode("utf-8")))
    return results


DRAWING_MIN_SIDE = 384  # small images are upscaled for the drawing, so that labels stay legible


TRUTH_COLOUR = (40, 200, 60)  # the ground truth: green, dashed, labelled "truth"


def _draw_predictions(path: str, preds: Sequence[tuple[int, Sequence[float], float]], size: tuple[int, int],
                      classes: Sequence[str], png: Path,
                      truth: Sequence[tuple[str, Sequence[float]]] | None = None) -> Path:
    """`png` (OUT/<stem>.png; `vggnet.paths.distinct_outputs`): the rank-1 box thick and labelled with its
    class and score, ranks 2-5 thin, light and numbered only (they are listed in predictions.json); the image upscaled to a smallest side of
    DRAWING_MIN_SIDE when smaller, so that the label is legible whatever the image's size."""
    from PIL import Image, ImageDraw, ImageFont

    from vggnet.data.images import load_image

    img = load_image(path)
    h, w = size  # predictions are in the decoded image's pixels
    zoom = max(1.0, DRAWING_MIN_SIDE / min(img.size))
    img = img.resize((round(img.width * zoom), round(img.height * zoom)), Image.BILINEAR) if zoom > 1 else img.copy()
    sx, sy = img.width / w, img.height / h
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(14, img.height // 24))
    for name, b in truth or []:  # under the predictions: dashed, so a prediction on it still shows
        x0, y0, x1, y1 = b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy
        dash, width = max(6, img.height // 40), max(2, img.height // 160)
        for a, b_, fixed, horizontal in ((x0, x1, y0, True), (x0, x1, y1, True), (y0, y1, x0, False),
                                         (y0, y1, x1, False)):
            for start in range(int(a), int(b_), 2 * dash):
                end = min(start + dash, b_)
                draw.line([(start, fixed), (end, fixed)] if horizontal else [(fixed, start), (fixed, end)],
                          fill=TRUTH_COLOUR, width=width)
        text_h = draw.textbbox((0, 0), "truth", font=font)[3]
        draw.text((x0 + 3, max(0, y1 - text_h - 4)), f"truth: {name}", fill=TRUTH_COLOUR, font=font)
    for rank in range(len(preds), 0, -1):  # rank 1 drawn last, on top
        c, b, score = preds[rank - 1]
        box = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
        if rank > 1:
            draw.rectangle(box, outline=(255, 230, 140), width=1)
            draw.text((box[0] + 2, box[1] + 1), str(rank), fill=(255, 230, 140), font=font)
            continue
        width = max(3, img.height // 120)
        draw.rectangle(box, outline=(230, 20, 20), width=width)
        label = f"1. {classes[c]} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tx = min(max(box[0], 0), max(0, img.width - (right - left) - 4))
        ty = box[1] - (bottom - top) - 6 if box[1] >= (bottom - top) + 6 else box[1] + width
        draw.rectangle([tx, ty, tx + right - left + 4, ty + bottom + 4], fill=(230, 20, 20))
        draw.text((tx + 2, ty + 2), label, fill=(255, 255, 255), font=font)
    img.save(png)
    return png


# --------------------------------------------------------------------------- command line


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(p, multiple=True, required=True, metavar="LOC",
                            help="localisation checkpoint (the union of several nets' boxes)")
    p.add_argument("--test-scales", type=parse_test_scales, action="append", default=None, metavar="Q,Q,...",
                   help="test scales Q: once for every localisation net, or once per --checkpoint in the same "
                        "order (Table 9's fusion: 256 for the S=256 net, 352,384 for the S=384 net) "
                        "(default: each net's training S, the middle of [Smin, Smax])")
    p.add_argument("--classifier-method", dest="cls_method", choices=METHODS, default="dense",
                   help="how the classifier ranks the classes, as `vgg eval --method` (default: %(default)s)")
    p.add_argument("--classifier-scales", dest="cls_scales", type=parse_test_scales, default=None, metavar="Q,Q,...",
                   help="the classifiers' test scales, as `vgg eval --test-scales` (default: --test-scales); "
                        "the paper ranks with its best classification system (Table 6: D and E, Q = 256,384,512, "
                        "--classifier-method both)")
    p.add_argument("--merge-iou", type=float, default=0.5,
                   help="greedy merge: merge the closest pair while its IoU >= this (default: %(default)s)")
    add_execution_arguments(p)
    add_workers_argument(p)


def add_localize_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="train|eval|predict", required=True)
    t = sub.add_parser("train", help="fine-tune a classification net into a box regressor (Appendix A.1)",
                       description="Every flag of `vgg train`; lr defaults to 1e-3.")
    from vggnet.engine.config import add_train_arguments

    add_train_arguments(t, lr=1e-3, output_dir=output_dir_default("localize train"))
    _task_arguments(t)
    e = sub.add_parser("eval", help="localisation error: protocol 1 (central) or the full protocol")
    _eval_arguments(e)
    e.add_argument("--classifier", action="append", default=[], metavar="CLS",
                   help="classification checkpoint that ranks the classes (--protocol full); repeat it to fuse")
    add_data_argument(e, required=True, help="dataset root (DIR/val, boxes; DIR/train for the mean box)")
    e.add_argument("--protocol", choices=("central", "full"), default="central",
                   help="central: the central crop's box for the true class (Table 8); full: dense, top-5 classes, "
                        "greedy merge (Table 9) (default: %(default)s)")
    e.add_argument("--nms-iou", type=float, default=0.5, help="the NMS reference row's IoU (default: %(default)s)")
    add_batch_size_argument(e)
    e.add_argument("--mean-box-sample", type=non_negative_int, default=1000,
                   help="training images read for the mean-box baseline (default: %(default)s)")
    e.add_argument("--max-images", type=positive_int, default=None,
                   help="evaluate on this many validation images, evenly spaced (default: all)")
    add_json_argument(e, help="print the report as JSON")
    add_progress_argument(e)
    add_output_argument(e, help="also write the report: FILE.md or FILE.json")
    p = sub.add_parser("predict", help="five boxes per image, drawn, and one JSON")
    _eval_arguments(p)
    p.add_argument("--classifier", action="append", required=True, metavar="CLS",
                   help="classification checkpoint that ranks the classes; repeat it to fuse")
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR", help="image files or folders")
    add_output_dir_argument(p, "localize predict", old="--out", help="folder for the PNGs and predictions.json")
    p.add_argument("--annotations", default=None, metavar="DIR|CSV",
                   help="ground-truth boxes to draw (green, dashed): a folder of VOC XML files or a "
                        "LOC_*_solution.csv (default: a dataset's ROOT/annotations/<split>/ or XML beside the image)")


def _apply_config_file(args: argparse.Namespace, parser_defaults: dict[str, Any]) -> set[str]:
    """`--config-file` for `vgg localize train`: YAML values for the settings left at their defaults;
    returns the settings the file gives."""
    from vggnet.arguments import load_config_file

    values = load_config_file(args.config_file)
    given = set()
    for key, value in values.items():
        dest = key.replace("-", "_")
        if dest not in parser_defaults or dest == "config_file":
            raise UserError(f"{args.config_file}: unknown setting {key!r}")
        given.add(dest)
        if getattr(args, dest) == parser_defaults[dest]:
            setattr(args, dest, value)
    return given


def run_localize(args: argparse.Namespace) -> int:
    if args.action == "train":
        from vggnet.engine.config import TrainConfig

        if getattr(args, "config_file", None):
            probe = argparse.ArgumentParser()
            from vggnet.engine.config import add_train_arguments

            add_train_arguments(probe, lr=1e-3, output_dir=output_dir_default("localize train"))
            _task_arguments(probe)
            _apply_config_file(args, {a.dest: a.default for a in probe._actions})
        # the shape flags left out stay None: the engine takes the classification net's from --init from:CKPT
        config = TrainConfig.from_args(args)
        result = localize_train(config, head=args.head, finetune=args.finetune, box_mode=args.box_mode,
                                target=args.target)
        return 130 if result.get("signal") else 0
    if args.action == "eval" and args.output and Path(args.output).suffix.lower() not in (".md", ".json"):
        raise UserError(f"--output {args.output}: expected a .md or .json file name")
    # every flag is checked: now torch
    from vggnet.execution import choose_execution, set_threads
    from vggnet.inference import resolve_device

    set_threads(args.threads)
    scales = args.test_scales
    workers = resolve_workers(args.workers)
    try:
        chosen = choose_execution(args.amp, args.channels_last, resolve_device(args.device))
        print(f"vgg localize {args.action}: {chosen.reason}", file=sys.stderr)
        if args.action == "predict":
            results = predict_localisation(args.checkpoint, args.classifier, args.images, args.output_dir,
                                           scales=scales, cls_method=args.cls_method, cls_scales=args.cls_scales,
                                           merge_iou=args.merge_iou, device=args.device, workers=workers,
                                           amp=chosen.amp, channels_last=chosen.channels_last,
                                           annotations=args.annotations)
            for r in results:
                top = r["predictions"][0] if r["predictions"] else None
                print(f"{r['image']}: " + (f"{top['class']} {top['box']} -> {r['drawn']}" if top else "no box"))
            print(f"predictions: {Path(args.output_dir) / 'predictions.json'}")
            return 0
        report = evaluate_localisation(args.checkpoint, args.data, protocol=args.protocol, classifiers=args.classifier,
                                       scales=scales, cls_method=args.cls_method,
                                       cls_scales=args.cls_scales,
                                       merge_iou=args.merge_iou,
                                       nms_iou=args.nms_iou, device=args.device, batch_size=args.batch_size,
                                       workers=workers, mean_box_sample=args.mean_box_sample,
                                       max_images=args.max_images, progress=args.progress,  # drawn on a terminal only
                                       amp=chosen.amp, channels_last=chosen.channels_last)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report_table(report))
        print(f"\nlocalisation error ({'protocol 1' if report['protocol'] == 'central' else 'full protocol'}): "
              f"{report['localisation_error']:.2f}% on {report['images']} images")
    if args.output:
        from vggnet.checkpoint import atomic_write

        text = json.dumps(report, indent=2) + "\n" if args.output.lower().endswith(".json") else _markdown(report)
        atomic_write(args.output, lambda f: f.write(text.encode("utf-8")))
    return 0


# --------------------------------------------------------------------------- the demo's stage


def demo_localize(cls_ckpt: str | Path, data_dir: str | Path, workdir: str | Path, *, quick: bool = False,
                  epochs: int | None = None, workers: int = 1, device: str = "auto", seed: int = 0,
                  progress: bool = True, eval_images: int | None = None) -> dict[str, Any]:
    """`vgg demo`'s localisation stage: fine-tune the demo classifier `cls_ckpt` into a PCR
    localiser (lr 1e-3, all layers), report protocol-1 and full-protocol errors next to the
    mean-box baseline, and draw a few predictions. Writes WORKDIR/localize/ (the run),
    WORKDIR/localisation.md and WORKDIR/localisation_predictions/. Resumes a finished run."""
    import time

    from vggnet.checkpoint import load_checkpoint
    from vggnet.data.datasets import build_dataset
    from vggnet.engine import TrainConfig

    t0 = time.perf_counter()
    ckpt = load_checkpoint(cls_ckpt)
    build, meta = ckpt["build"], ckpt.get("meta") or {}
    data_dir, work = Path(data_dir), Path(workdir)
    run_dir = work / "localize"
    scale = meta.get("scale") or build["crop_size"]
    lo, hi = (scale, scale) if isinstance(scale, int) else tuple(scale)
    print(f"\n== localisation (Appendix A): fine-tuning {cls_ckpt} into a PCR box regressor -> {run_dir}",
          flush=True)
    stats = data_dir / "stats.json"
    cfg = TrainConfig(
        model=build["name"], width=build["width"], fc_width=build["fc_width"], crop_size=build["crop_size"],
        batch_norm=build["batch_norm"], dropout=build["dropout"], scale=[lo, hi], val_scale=(lo + hi) // 2,
        data=str(data_dir), stats=str(stats) if stats.is_file() else None, init=f"from:{cls_ckpt}", lr=1e-3,
        epochs=epochs or (1 if quick else 5), lr_patience=1, batch_size=16 if quick else 32, seed=seed,
        device=device, workers=workers, val_batch_size=32, output_dir=str(run_dir), resume="auto",
        progress=progress, channels_last="on", amp="off")  # fp32 on every CPU: the same numbers everywhere
    result = localize_train(cfg, head="pcr")
    if result.get("signal"):
        return {"interrupted": True}
    t_train = time.perf_counter() - t0
    best = str(run_dir / "best.pt")
    limit = eval_images or (8 if quick else 200)
    central = evaluate_localisation([best], str(data_dir), protocol="central", device=device, workers=workers,
                                    max_images=limit, mean_box_sample=200)
    full = evaluate_localisation([best], str(data_dir), protocol="full", classifiers=[str(cls_ckpt)],
                                 scales=[lo, hi], device=device, workers=workers, max_images=limit,
                                 mean_box_sample=200)
    (work / "localisation.md").write_text(_markdown(central) + "\n" + _markdown(full), encoding="utf-8")
    val = build_dataset(data_dir, split="val")
    picks = [val.samples[i][0] for i in range(0, len(val), max(1, len(val) // 4))][:4]
    drawn = predict_localisation([best], [str(cls_ckpt)], picks, str(work / "localisation_predictions"),
                                 scales=[lo, hi], device=device, workers=0)
    out = {"protocol1_error": central["localisation_error"], "full_error": full["localisation_error"],
           "mean_box_error": central.get("mean_box", {}).get("localisation_error"),
           "full_rows": full["rows"], "images": central["images"], "train_seconds": t_train,
           "seconds": time.perf_counter() - t0, "checkpoint": best,
           "predictions": [d["drawn"] for d in drawn]}
    print(report_table(central))
    print(report_table(full))
    print(f"localisation error on {central['images']} validation images: protocol 1 {out['protocol1_error']:.2f}%, "
          f"full protocol (top-5, greedy merge) {out['full_error']:.2f}%; a fixed mean box: "
          f"{out['mean_box_error']:.2f}%; drawn predictions in {work / 'localisation_predictions'}/")
    return out
