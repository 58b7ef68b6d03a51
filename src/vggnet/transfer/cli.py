"""The commands of Appendix B: `vgg features` (descriptor files) and `vgg transfer` (linear SVMs).

Their flags, what they print and how they run under torchrun (every process
computes its shard of the descriptors; rank 0 alone writes the files, fits the
SVMs and prints). The descriptors are computed by `vggnet.transfer.descriptors`, the SVMs
and metrics by `vggnet.transfer.pipeline`. Only `vggnet.cli` imports this module (through
its table of commands).

    vgg features --checkpoint run/best.pt --data DIR --split train --test-scales 256,384,512 --output train.safetensors
    vgg transfer --checkpoint D.pt --checkpoint E.pt --data VOCdevkit/VOC2007 --aggregate average --output-dir voc07 --json
    vgg transfer predict voc07 photo.jpg more_photos/
"""

from __future__ import annotations

import argparse
import json

from vggnet.arguments import (AGGREGATIONS, C_GRID, add_batch_size_argument, add_checkpoint_argument, add_data_argument,
                              add_execution_arguments, add_json_argument, add_output_argument, add_output_dir_argument,
                              add_progress_argument, add_workers_argument, check_required_output, parse_test_scales,
                              positive_int, resolve_workers, take_positional_checkpoints)
from vggnet.errors import UserError
from vggnet.paths import check_output, check_output_dir
# (descriptors, SVMs and torch are imported by run_<command>, after every flag is checked)

__all__ = ["add_features_arguments", "run_features", "add_transfer_arguments", "run_transfer",
           "add_transfer_predict_arguments", "run_transfer_predict"]


# --------------------------------------------------------------------------- command line


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--test-scales", type=parse_test_scales, default=None, metavar="Q,Q,...",
                        help="scales Q (smallest image side) of the dense descriptors (default: the paper's "
                             "256,384,512, scaled by crop_size/224)")
    parser.add_argument("--aggregate", choices=AGGREGATIONS, default="average",
                        help="combine the scales' descriptors by averaging (the paper for VOC) or stacking "
                             "(the paper for Caltech) (default: %(default)s)")
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="do not average with the horizontally flipped image's descriptor")
    parser.add_argument("--exclude-class", action="append", default=[], metavar="NAME",
                        help="leave a class folder out (repeatable), e.g. Caltech-101's BACKGROUND_Google")
    add_batch_size_argument(parser)
    add_workers_argument(parser)
    add_progress_argument(parser)
    add_execution_arguments(parser)  # --amp is part of the descriptor cache's key


def add_features_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser, multiple=True, help="checkpoint; several nets' descriptors are stacked (late fusion)")
    parser.add_argument("old_checkpoints", nargs="*", metavar="CKPT", help=argparse.SUPPRESS)  # the old form
    add_data_argument(parser, required=True,
                      help="a folder of class folders, a dataset root with --split, or a VOC devkit folder")
    parser.add_argument("--split", default=None, metavar="NAME",
                        help="DIR/NAME (class folders) or the VOC image set ImageSets/Main/NAME.txt")
    add_output_argument(parser, required=True, old=["--out"], help="output descriptor file (.safetensors)")
    parser.add_argument("--chunk-size", type=positive_int, default=512,
                        help="images per resumable chunk (default: %(default)s)")
    _common(parser)


def run_features(args: argparse.Namespace) -> int:
    """`vgg features`. Under torchrun every process computes its shard of every chunk (gathered on
    all of them); rank 0 alone writes the chunks and the file and prints."""
    take_positional_checkpoints(args, "old_checkpoints")
    check_required_output(args)
    from vggnet.distributed import process_group
    from vggnet.execution import set_threads
    from vggnet.transfer.descriptors import DescriptorExtractor, list_images

    set_threads(args.threads)
    check_output(args.output, flag="--output", inputs=[*args.checkpoint, args.data])
    with process_group(args.device) as info:
        images = list_images(args.data, args.split, exclude=args.exclude_class)
        extractor = DescriptorExtractor(args.checkpoint, scales=args.test_scales, flip=args.flip,
                                        aggregation=args.aggregate, device=info.device, amp=args.amp, channels_last=args.channels_last,
                                        batch_size=args.batch_size,
                                        workers=resolve_workers(args.workers))
        feats = extractor.extract(images, args.output, chunk_size=args.chunk_size,
                                  progress=info.is_main and args.progress)
    if not info.is_main:
        return 0
    where = f" ({info.world_size} processes)" if info.distributed else ""
    print(f"{args.output}: {feats.descriptors.shape[0]} descriptors of {feats.descriptors.shape[1]} dimensions "
          f"({', '.join(c['name'] for c in extractor.checkpoints)} at Q = {', '.join(map(str, extractor.scales))}, "
          f"{extractor.aggregation}, flip {'on' if extractor.flip else 'off'}; key {extractor.key[:16]}){where}")
    return 0


def add_transfer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "`vgg transfer predict --help`: apply a trained classifier to images."
    add_checkpoint_argument(parser, multiple=True, help="checkpoint; several nets' descriptors are stacked")
    parser.add_argument("items", nargs="*", metavar="CKPT", help=argparse.SUPPRESS)  # the old form: positional CKPTs
    add_data_argument(parser, help="VOC devkit folder, dataset root with train/ and test/ (or val/), or with "
                                   "--train-per-class a folder of classes")
    add_output_dir_argument(parser, "transfer", help="descriptor cache, classifier and results")
    parser.add_argument("--train-split", default=None, metavar="NAME",
                        help="training image set (default: VOC trainval if test exists, else train)")
    parser.add_argument("--test-split", default=None, metavar="NAME", help="test image set (default: test, else val)")
    parser.add_argument("--train-per-class", type=int, default=None, metavar="N",
                        help="Caltech protocol: N random training images per class (Caltech-101: 30, -256: 60)")
    parser.add_argument("--test-per-class", type=int, default=None, metavar="M",
                        help="at most M test images per class (Caltech-101: 50; default: all the others)")
    parser.add_argument("--splits", type=positive_int, default=1, help="random splits (seeds 0..N-1), mean and std reported")
    parser.add_argument("--C-grid", dest="c_grid", default=",".join(f"{c:g}" for c in C_GRID), metavar="C,C,...",
                        help="SVM C values tried (default: %(default)s)")
    parser.add_argument("--C-selection", dest="c_selection", choices=("holdout", "cv"), default="holdout",
                        help="choose C on a hold-out of the training images (the paper's; one SVM fit per C) or by "
                             "--folds cross-validation (folds x more fits) (default: %(default)s)")
    parser.add_argument("--holdout", type=float, default=0.2, metavar="FRACTION",
                        help="the hold-out's share of the training images (default: %(default)s)")
    parser.add_argument("--folds", type=positive_int, default=3,
                        help="cross-validation folds, with --C-selection cv (default: %(default)s)")
    parser.add_argument("--train-features", metavar="FILE", help="training descriptors from `vgg features`")
    parser.add_argument("--test-features", metavar="FILE", help="test descriptors from `vgg features`")
    parser.add_argument("--task", choices=("images", "action"), default="images",
                        help="images: classify whole images (VOC, Caltech, class folders); action: VOC-2012 action "
                             "classification of person boxes (ImageSets/Action, Table 12) (default: %(default)s)")
    parser.add_argument("--action-setting", choices=("image", "image+box"), default="image+box",
                        help="with --task action: the whole image's descriptor only, or stacked with the person "
                             "box's (default: %(default)s)")
    add_json_argument(parser)
    _common(parser)


def _run_action(args: argparse.Namespace, grid: list[float]) -> int:
    """`vgg transfer --task action`: Table 12 (train on --train-split, default train; test on
    --test-split, default val)."""
    from vggnet.distributed import process_group
    from vggnet.transfer.action import action_descriptors, fit_action

    caltech = [f for f, v in (("--train-per-class", args.train_per_class), ("--test-per-class", args.test_per_class),
                              ("--train-features", args.train_features), ("--test-features", args.test_features))
               if v is not None]
    if caltech or args.splits != 1:
        raise UserError(f"--task action: {(caltech or ['--splits'])[0]} does not apply (the action lists say "
                        f"which person is trained on and which is tested)")
    with process_group(args.device) as info:
        work = action_descriptors(
            args.checkpoint, args.data, output_dir=args.output_dir, setting=args.action_setting,
            train_split=args.train_split, test_split=args.test_split, scales=args.test_scales, flip=args.flip,
            aggregation=args.aggregate, device=info.device, amp=args.amp, channels_last=args.channels_last,
            batch_size=args.batch_size, workers=resolve_workers(args.workers), progress=info.is_main and args.progress)
    if work is None:
        return 0
    report = fit_action(work, c_grid=grid, folds=args.folds, c_selection=args.c_selection, holdout=args.holdout)
    return _print_report(
        args, report,
        f"action classification ({report['setting']}): mAP {report['mAP']:.2f}% (VOC-2007 11-point AP); "
        f"{report['mAP_area']:.2f}% (area under PR, VOC-2012's measure) over {len(report['actions'])} actions",
        f"{report['protocol']}: {report['train_instances']} / {report['test_instances']} persons; "
        f"C = {report['C']:g} (chosen on a {report['C_selection']})")


def _print_report(args: argparse.Namespace, report: dict, headline: str, protocol: str) -> int:
    """`--json`, or the headline, the per-class numbers and the protocol line."""
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(headline)
    for line in per_class_lines(report):
        print(line)
    print(f"{protocol}; results in {args.output_dir}/results.json")
    return 0


def run_transfer(args: argparse.Namespace) -> int:
    """`vgg transfer` and `vgg transfer predict`. Under torchrun every process computes its shard of
    the descriptors; the process group is then left, and rank 0 alone fits the SVMs (which can take
    longer than a collective's timeout), writes the files and prints; the other ranks exit with 0."""
    take_positional_checkpoints(args, "items")
    if not args.data:
        raise UserError("--data DIR is required")
    check_output_dir(args.output_dir, flag="--output-dir",
                     inputs=[*args.checkpoint, args.data, args.train_features, args.test_features])
    try:
        grid = [float(c) for c in args.c_grid.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--C-grid: expected comma-separated numbers such as 0.1,1,10, got {args.c_grid!r}") from None
    from vggnet.distributed import process_group
    from vggnet.execution import set_threads
    from vggnet.transfer.pipeline import fit_transfer, transfer_descriptors

    set_threads(args.threads)
    if args.task == "action":
        return _run_action(args, grid)
    with process_group(args.device) as info:
        work = transfer_descriptors(
            args.checkpoint, args.data, output_dir=args.output_dir, scales=args.test_scales, flip=args.flip,
            aggregation=args.aggregate, train_split=args.train_split, test_split=args.test_split,
            train_per_class=args.train_per_class, test_per_class=args.test_per_class, splits=args.splits,
            exclude=args.exclude_class, c_grid=grid, folds=args.folds, train_features=args.train_features,
            test_features=args.test_features, device=info.device, amp=args.amp, channels_last=args.channels_last,
            batch_size=args.batch_size, workers=resolve_workers(args.workers), progress=info.is_main and args.progress)
    if work is None:  # a rank > 0: its share of the descriptors is done
        return 0
    report = fit_transfer(work, c_grid=grid, folds=args.folds, c_selection=args.c_selection, holdout=args.holdout)
    pm = (lambda k: f" ± {report[k + '_std']:.2f}" if k + "_std" in report else "")
    headline = (f"mAP {report['mAP']:.2f}%{pm('mAP')} (VOC-2007 11-point AP); {report['mAP_area']:.2f}%"
                f"{pm('mAP_area')} (area under PR, VOC-2010+)" if "mAP" in report else
                f"accuracy {report['accuracy']:.2f}%{pm('accuracy')}; mean class accuracy "
                f"{report['mean_class_accuracy']:.2f}%{pm('mean_class_accuracy')}")
    return _print_report(args, report, headline,
                         f"{report['protocol']}; C = {report['C']} (chosen on a {report['C_selection']})")


def per_class_lines(report: dict, per_line: int = 5) -> list[str]:
    """The report's per-class numbers (VOC AP, or a class folder's accuracy), a few classes a line."""
    if report.get("ap"):
        title, values = "per-class AP (%, 11-point)", report["ap"]
    elif report.get("per_class_accuracy"):
        title, values = "per-class accuracy (%)", report["per_class_accuracy"]
    else:
        return []  # several splits: per split in results.json
    cells = [f"{name} {'n/a' if v is None else f'{v:.1f}'}" for name, v in values.items()]
    width = max(len(c) for c in cells)
    return [f"{title}:"] + ["  " + "  ".join(f"{c:<{width}}" for c in cells[i:i + per_line]).rstrip()
                            for i in range(0, len(cells), per_line)]


def add_transfer_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("classifier", metavar="OUT",
                        help="what `vgg transfer` wrote: its --output-dir, or the classifier.safetensors in it")
    parser.add_argument("images", nargs="+", metavar="IMAGE|DIR", help="image files and folders of images")
    parser.add_argument("--top", type=positive_int, default=5, metavar="K",
                        help="SVM scores printed per image, highest first (default: %(default)s; --json has all)")
    add_batch_size_argument(parser)
    add_execution_arguments(parser)
    add_json_argument(parser, help="print every image's scores and labels as JSON")


def run_transfer_predict(args: argparse.Namespace) -> int:
    """apply a `vgg transfer` classifier to images: each image's classes and SVM scores (Appendix B)"""
    from vggnet.distributed import process_group
    from vggnet.execution import set_threads
    from vggnet.transfer.pipeline import predict_transfer

    set_threads(args.threads)
    with process_group(args.device) as info:
        results = predict_transfer(args.classifier, args.images, device=info.device, batch_size=args.batch_size,
                                   amp=args.amp, channels_last=args.channels_last)
    if not info.is_main:
        return 0
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        ranked = sorted(r["scores"].items(), key=lambda kv: -kv[1])
        labels = ", ".join(r["labels"]) or "(no class: every SVM score is negative)"
        print(f"{r['image']}: {labels}")
        print("  " + "  ".join(f"{name} {score:+.3f}" for name, score in ranked[:args.top]))
    return 0
