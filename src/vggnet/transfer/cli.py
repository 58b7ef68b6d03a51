"""The commands of Appendix B: `vgg features` (descriptor files) and `vgg transfer` (linear SVMs).

Their flags, what they print and how they run under torchrun (every process
computes its shard of the descriptors; rank 0 alone writes the files, fits the
SVMs and prints). The descriptors are computed by `vggnet.transfer.descriptors`, the SVMs
and metrics by `vggnet.transfer.pipeline`. Only `vggnet.cli` imports this module (through
its table of commands).

    vgg features run/best.pt --data DIR --split train --test-scales 256,384,512 --out train.safetensors
    vgg transfer D.pt E.pt --data VOCdevkit/VOC2007 --aggregate average --output-dir voc07 --json
    vgg transfer predict voc07 photo.jpg more_photos/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vggnet.transfer.descriptors import AGGREGATIONS, DescriptorExtractor, list_images
from vggnet.distributed import process_group
from vggnet.errors import UserError
from vggnet.paths import check_output, check_output_dir
from vggnet.inference import parse_test_scales
from vggnet.execution import add_threads_argument, set_threads
from vggnet.transfer.pipeline import C_GRID, fit_transfer, transfer_descriptors, predict_transfer

__all__ = ["add_features_arguments", "run_features", "add_transfer_arguments", "run_transfer"]


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
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                        help="mixed precision as in vgg eval; auto = bf16 on CUDA and on CPUs that compute bf16 "
                             "natively (AVX512-BF16/AMX), off elsewhere; part of the descriptor cache's key "
                             "(default: %(default)s)")
    add_threads_argument(parser)


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
    set_threads(args.threads)
    check_output(args.out, flag="--out", inputs=[*args.checkpoints, args.data])
    with process_group(args.device) as info:
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
    set_threads(args.threads)
    if args.items[0] == "predict" and not Path("predict").is_file():
        if len(args.items) < 3:
            raise UserError("usage: vgg transfer predict OUT IMAGE|DIR... (OUT: a `vgg transfer` --output-dir)")
        with process_group(args.device) as info:
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
    check_output_dir(args.output_dir, flag="--output-dir",
                     inputs=[*args.items, args.data, args.train_features, args.test_features])
    try:
        grid = [float(c) for c in args.c_grid.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--C-grid: expected comma-separated numbers such as 0.1,1,10, got {args.c_grid!r}") from None
    with process_group(args.device) as info:
        work = transfer_descriptors(
            args.items, args.data, output_dir=args.output_dir, scales=args.test_scales, flip=args.flip,
            aggregation=args.aggregate, train_split=args.train_split, test_split=args.test_split,
            train_per_class=args.train_per_class, test_per_class=args.test_per_class, splits=args.splits,
            exclude=args.exclude_class, c_grid=grid, folds=args.folds, train_features=args.train_features,
            test_features=args.test_features, device=info.device, amp=args.amp, batch_size=args.batch_size,
            workers=args.workers, progress=info.is_main and sys.stderr.isatty())
    if work is None:  # a rank > 0: its share of the descriptors is done
        return 0
    report = fit_transfer(work, c_grid=grid, folds=args.folds)
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
