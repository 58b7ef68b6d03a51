"""`vgg synth` and `vgg stats`: the synthetic shapes dataset on disk, and a training set's mean RGB and PCA."""

from __future__ import annotations

import argparse
from pathlib import Path

from vggnet.arguments import add_output_argument, add_seed_argument, add_workers_argument, resolve_workers
from vggnet.errors import UserError

MAX_SHAPE_CLASSES = 16  # len(vggnet.data.synthetic.SHAPES), kept here so that `--help` imports no torch (a test checks)


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output directory (OUT/train, OUT/val, OUT/annotations)")
    parser.add_argument("--classes", type=int, default=10, help=f"number of shape classes, 2-{MAX_SHAPE_CLASSES} "
                                                                 "(default: %(default)s)")
    parser.add_argument("--train", type=int, default=2000, help="training images in total (default: %(default)s)")
    parser.add_argument("--val", type=int, default=500, help="validation images in total (default: %(default)s)")
    add_seed_argument(parser, help="generator seed")
    parser.add_argument("--min-size", type=int, default=160, help="smallest image side in pixels (default: %(default)s)")
    parser.add_argument("--max-size", type=int, default=400, help="largest image side in pixels (default: %(default)s)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default: %(default)s)")
    add_workers_argument(parser, help="writer processes")
    parser.add_argument("--force", action="store_true", help="overwrite an existing dataset in OUT")
    parser.add_argument("--multi-label", action="store_true",
                        help="write multi-label scenes (one to three shapes each) in the PASCAL VOC devkit layout "
                             "instead: --train images for trainval, --val images for test (Appendix B)")
    parser.add_argument("--action", action="store_true",
                        help="write stick persons doing one of four actions in the VOC-2012 action layout instead "
                             "(Table 12): --train and --val images, --min-size their height")


def run_synth(args: argparse.Namespace) -> int:
    from vggnet.data.synthetic import write_multilabel, write_synthetic

    if args.min_size > args.max_size:
        raise UserError(f"--min-size {args.min_size} is larger than --max-size {args.max_size}")
    if args.multi_label and args.action:
        raise UserError("--multi-label and --action: choose one layout")
    if args.action:
        from vggnet.data.synthetic_action import write_actions

        params = write_actions(args.out, train=args.train, val=args.val, seed=args.seed, force=args.force,
                               image_size=args.min_size, quality=args.quality)
        print(f"wrote {params['train']} train and {params['val']} val images of persons doing "
              f"{', '.join(params['actions'])} in the VOC-2012 action layout to {args.out}")
        return 0
    if args.multi_label:
        params = write_multilabel(args.out, classes=args.classes, trainval=args.train, test=args.val, seed=args.seed,
                                  force=args.force, image_size=(args.min_size, args.max_size), quality=args.quality)
        print(f"wrote {params['trainval']} trainval and {params['test']} test scenes of "
              f"{len(params['classes'])} classes ({', '.join(params['classes'])}) in the VOC devkit layout "
              f"to {args.out}")
        return 0
    params = write_synthetic(args.out, classes=args.classes, train=args.train, val=args.val, seed=args.seed,
                             force=args.force, image_size=(args.min_size, args.max_size), quality=args.quality,
                             workers=resolve_workers(args.workers))
    print(f"wrote {params['train']} train and {params['val']} val images of {len(params['classes'])} classes "
          f"({', '.join(params['classes'])}) with VOC boxes to {args.out}")
    return 0


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA", help="dataset folder (DATA/train) or a training folder")
    parser.add_argument("--split", default="train", help="split folder to read (default: %(default)s)")
    parser.add_argument("--sample", type=int, default=1000, metavar="N",
                        help="images sampled at random (default: %(default)s)")
    parser.add_argument("--all", action="store_true", help="use every image instead of a sample")
    add_seed_argument(parser, help="sampling seed")
    add_workers_argument(parser, help="decoding processes")
    add_output_argument(parser, old=["-o"], help="JSON file to write (default: DATA/stats.json)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run_stats(args: argparse.Namespace) -> int:
    from vggnet.data.datasets import build_dataset
    from vggnet.data.stats import compute_stats, save_stats

    if not args.all and args.sample < 1:
        raise UserError(f"--sample: expected a number of images >= 1, got {args.sample}")
    output = Path(args.output) if args.output else Path(args.data) / "stats.json"
    if output.exists() and not args.force:
        raise UserError(f"{output}: exists; pass --force to overwrite it or --output to write elsewhere")
    dataset = build_dataset(args.data, split=args.split, strict=False)
    stats = compute_stats(dataset, None if args.all else args.sample, seed=args.seed, workers=resolve_workers(args.workers))
    stats["source"] = str(Path(args.data).resolve())
    save_stats(output, stats)
    print(f"{stats['images']} images ({stats['pixels']:,} pixels) of {dataset.root}"
          + (f", {stats['bad_images']} unreadable" if stats["bad_images"] else ""))
    print(f"mean RGB (0-255):   {' '.join(f'{v:8.3f}' for v in stats['mean'])}")
    print(f"std RGB (0-255):    {' '.join(f'{v:8.3f}' for v in stats['std'])}")
    print(f"PCA eigval (sd):    {' '.join(f'{v:8.3f}' for v in stats['eigval'])}")
    for i, row in enumerate(stats["eigvec"]):
        print(f"PCA eigvec {i}:       {' '.join(f'{v:8.4f}' for v in row)}")
    print(f"wrote {output}")
    return 0
