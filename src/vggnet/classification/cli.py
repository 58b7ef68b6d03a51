"""The `vgg train`, `vgg eval` and `vgg predict` commands (§3.1, §3.2 of the paper; the experiments of §4).

Their flags, and what they print and write. The work is done by
`vggnet.classification.train` (the engine with `ClassificationTask`),
`vggnet.classification.evaluate` (`evaluate`), `vggnet.classification.predict`
(`predict`) and the reports by `vggnet.classification.results` (`EvalResult`,
`load_posteriors`); `vggnet.cli` imports this module on demand.

    vgg train                                   # synthetic shapes, configuration D
    vgg train --config-file configs/quickstart.yaml
    torchrun --standalone --nproc-per-node=8 -m vggnet.cli train --config-file configs/s256.yaml

Single process:
    vgg eval --checkpoint run/best.pt --data DIR --method both --test-scales 224,256,288
    vgg eval --checkpoint run/best.pt --data DIR --method center   # torchvision's single crop
    vgg predict --checkpoint run/best.pt cat.jpg dog.png photos/
Several processes (each evaluates the images rank, rank+W, ... and the
posteriors are gathered, so the numbers equal the single-process ones):
    torchrun --nproc_per_node=8 -m vggnet.cli eval --checkpoint run/best.pt --data DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence


from vggnet.errors import UserError
from vggnet.arguments import (CROP_PCT, METHODS, add_batch_size_argument, add_checkpoint_argument, add_data_argument,
                              add_execution_arguments, add_json_argument, add_output_argument, add_progress_argument,
                              add_workers_argument, parse_test_scales, positive_int, resolve_workers)
# (the work's modules, and torch with them, are imported by run_<command>: a wrong flag is answered first)
from vggnet.paths import check_output

__all__ = [
    "add_train_arguments",
    "run_train",
    "add_eval_arguments",
    "run_eval",
    "add_predict_arguments",
    "run_predict",
]


# --------------------------------------------------------------------------- command line


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from vggnet.engine import add_train_arguments as add

    add(parser)


def run_train(args: argparse.Namespace) -> int:
    from vggnet.classification.task import ClassificationTask
    from vggnet import TrainConfig, train

    # (a model flag left out stays None: the engine takes it from --init from:CKPT, else the paper's)
    result = train(TrainConfig.from_args(args), ClassificationTask())
    if result.get("signal"):
        return 128 + int(result["signal"])  # the shell's convention for "stopped by a signal"
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--test-scales", type=parse_test_scales, default=None, metavar="Q,Q,...",
                        help="test scales Q, e.g. 256,384,512 (default: from the checkpoint's training scale S: "
                             "{S-32, S, S+32}, or {Smin, (Smin+Smax)/2, Smax} for jittered S)")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="dense (whole image), multi-crop (5x5 grid x 2 flips per scale), both "
                             "(their posteriors averaged), or center (torchvision's single centre crop, no flip: "
                             "beyond the paper, to compare with published torchvision/timm numbers) "
                             "(default: dense)")
    parser.add_argument("--crop-pct", type=float, default=CROP_PCT,
                        help="with --method center: resize the smallest side to crop_size / crop_pct, then take "
                             "the central crop (default: %(default)s: 256 -> 224)")
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="do not average with the horizontally flipped image / crops")
    parser.add_argument("--grid", type=positive_int, default=5, help="multi-crop grid size per side (default: %(default)s)")
    add_execution_arguments(parser)
    add_json_argument(parser, help="print JSON instead of the table")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser, multiple=True, help="checkpoint to evaluate; several are fused (§4.4)")
    parser.add_argument("--posteriors", nargs="+", default=None, metavar="FILE",
                        help="recompute results and fusions from --save-posteriors files instead of running nets "
                             "(--method then defaults to the files' method)")
    add_data_argument(parser, help="dataset root (DIR/val is used) or the validation folder")
    parser.add_argument("--val-dir", metavar="DIR", help="validation folder (overrides --data)")
    parser.add_argument("--labels-file", metavar="FILE",
                        help="labels for a flat validation folder (CSV image,label; ILSVRC devkit; LOC_val_solution)")
    _add_common(parser)
    add_batch_size_argument(parser, help="images per dense forward pass / crops per multi-crop pass")
    add_workers_argument(parser)
    add_progress_argument(parser)
    add_output_argument(parser, help="also write the report: FILE.md (Markdown) or FILE.json")
    parser.add_argument("--save-posteriors", metavar="FILE",
                        help="write the per-image posteriors (.pt) so fusions can be recomputed with --posteriors")
    parser.add_argument("--per-class", action="store_true",
                        help="print per-class accuracy too: each class's recall (correct top-1 / its images)")
    parser.add_argument("--confusion-matrix", metavar="FILE.csv",
                        help="write the confusion matrix (rows: true class, columns: predicted) as CSV, and drawn "
                             "as FILE.png when there are at most 50 classes")
    parser.add_argument("--config-file", metavar="YAML", help="settings from a YAML file (flags override)")


def run_eval(args: argparse.Namespace) -> int:
    scales = parse_test_scales(args.test_scales) if args.test_scales is not None else None
    if args.output and Path(args.output).suffix.lower() not in (".md", ".json"):
        raise UserError(f"--output {args.output}: expected a .md or .json file name")
    if args.posteriors and args.checkpoint:
        raise UserError("give either --checkpoint (run the nets) or --posteriors (reuse saved posteriors), not both")
    if not args.posteriors:
        if not args.checkpoint:
            raise UserError("--checkpoint is required (repeat it to fuse nets), or --posteriors FILE")
        data = args.val_dir or args.data
        if not data:
            raise UserError("--data DIR (or --val-dir DIR) is required")
        if not Path(data).exists():
            raise UserError(f"--{'val-dir' if args.val_dir else 'data'} {data}: no such directory")
    _check_eval_outputs(args)
    # every flag is checked: now the work (and torch)
    from vggnet.classification.results import METHOD_LABELS, load_posteriors
    from vggnet.execution import set_threads

    set_threads(args.threads)
    if args.posteriors:
        result = load_posteriors(args.posteriors, method=args.method)
    else:
        from vggnet.classification.evaluate import evaluate
        from vggnet.distributed import process_group
        from vggnet.execution import choose_execution

        from vggnet.progress import stderr_is_terminal

        tty = stderr_is_terminal() and args.progress  # a file or a CI log gets one line per pass, not progress-bar fragments
        # under torchrun: joins the process group, one GPU per process
        with process_group(args.device) as info:
            try:
                chosen = choose_execution(args.amp, args.channels_last, info.device)
                if info.is_main:
                    print(f"vgg eval: {chosen.reason}", file=sys.stderr)
                result = evaluate(args.checkpoint, data, scales=scales, method=args.method or "dense",
                                  flip=args.flip, grid=args.grid, batch_size=args.batch_size,
                                  workers=resolve_workers(args.workers),
                                  device=info.device, amp=chosen.amp, channels_last=chosen.channels_last,
                                  labels_file=args.labels_file, progress=tty, crop_pct=args.crop_pct,
                                  log=None if tty else (lambda line: print(line, file=sys.stderr, flush=True)))
            except ValueError as exc:
                raise UserError(str(exc)) from None
        if not info.is_main:
            return 0
    report = result.to_dict()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(result.table())
        o = result.overall
        top5 = (f"top-5 accuracy {o['top5_accuracy']:.2f}% (error {o['top5_error']:.2f}%)"
                if result.top5_applicable else f"top-5 n/a ({len(result.classes)} classes: every label is in the top 5)")
        print(f"\noverall ({METHOD_LABELS[result.method]}): top-1 accuracy {o['top1_accuracy']:.2f}% "
              f"(error {o['top1_error']:.2f}%), {top5} on {o['images']} images")
        if args.per_class:
            print(f"per-class accuracy (recall: correct top-1 / images of the class); "
                  f"mean class accuracy {o['mean_class_accuracy']:.2f}%")
            for name, acc in o["per_class_accuracy"].items():
                print(f"  {name:<24} {'-' if acc is None else f'{acc:6.2f}%'}")
    if args.output:
        from vggnet.checkpoint import atomic_write

        text = (json.dumps(report, indent=2) + "\n") if args.output.lower().endswith(".json") else result.to_markdown()
        atomic_write(args.output, lambda f: f.write(text.encode("utf-8")))
    if args.save_posteriors:
        result.save_posteriors(args.save_posteriors)
    if args.confusion_matrix:
        written = result.write_confusion_matrix(args.confusion_matrix)
        if not args.json:
            print("confusion matrix: " + ", ".join(map(str, written)))
    return 0


def _check_eval_outputs(args: argparse.Namespace) -> None:
    """Every file `vgg eval` writes: checked before any work (see `vggnet.paths`)."""
    inputs = [*(args.checkpoint or []), *(args.posteriors or []), args.val_dir or args.data, args.labels_file]
    for flag, value in (("--output", args.output), ("--save-posteriors", args.save_posteriors),
                        ("--confusion-matrix", args.confusion_matrix)):
        if value:
            check_output(value, flag=flag, inputs=inputs)
    if args.confusion_matrix:
        check_output(Path(args.confusion_matrix).with_suffix(".png"), flag="--confusion-matrix (its drawing)",
                     inputs=inputs)


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser, help="vggnet checkpoint (.pt), as in vgg eval")
    parser.add_argument("images", nargs="+", metavar="IMAGE|DIR",
                        help="image files (any format Pillow reads) or folders (every image in them, sorted). "
                             "Without --checkpoint the first one is taken as the checkpoint (deprecated form "
                             "`vgg predict CKPT IMAGE...`)")
    _add_common(parser)
    parser.add_argument("--topk", type=positive_int, default=5, help="classes to show per image (default: %(default)s)")


def image_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """`paths` with every folder replaced by the image files in it (recursively, sorted by path).

    Folders are listed by the rule training uses (`vggnet.data.image_file_problem`:
    regular files with an image suffix, links followed but no directory twice);
    what a folder holds but cannot be used (a FIFO, a link loop, a HEIC without
    its plugin) is named in one `LeftOutWarning`. A folder without images is a
    `UserError`; a file is kept as given (whether it can be read is decided when
    it is read)."""
    from vggnet.data.datasets import IMAGE_EXTENSIONS, list_image_files, warn_left_out

    out: list[str] = []
    for path in paths:
        folder = Path(path)
        if not folder.is_dir():
            out.append(str(path))
            continue
        left_out: list[tuple[str, str]] = []
        found = sorted(str(p) for p in list_image_files(folder, left_out=left_out))
        warn_left_out(folder, left_out)
        if not found:
            raise UserError(f"{folder}: a folder with no image files ({', '.join(IMAGE_EXTENSIONS)})")
        out += found
    return out


def run_predict(args: argparse.Namespace) -> int:
    scales = parse_test_scales(args.test_scales) if args.test_scales is not None else None
    checkpoint, inputs = args.checkpoint, list(args.images)
    if checkpoint is None:
        if len(inputs) < 2:
            raise UserError("--checkpoint CKPT is required: vgg predict --checkpoint CKPT IMAGE|DIR ...")
        checkpoint, inputs = inputs[0], inputs[1:]
        print(f"vgg predict: `vgg predict CKPT IMAGE...` is deprecated; use "
              f"`vgg predict --checkpoint {checkpoint} IMAGE|DIR ...`", file=sys.stderr)
    from vggnet.classification.predict import predict
    from vggnet.execution import choose_execution, set_threads
    from vggnet.inference import resolve_device

    set_threads(args.threads)
    images = image_files(inputs)
    dev = resolve_device(args.device)
    try:
        chosen = choose_execution(args.amp, args.channels_last, dev)
        print(f"vgg predict: {chosen.reason}", file=sys.stderr)
        results = predict(checkpoint, images, scales=scales, method=args.method or "dense", flip=args.flip,
                          grid=args.grid, topk=args.topk, device=dev, amp=chosen.amp,
                          channels_last=chosen.channels_last, crop_pct=args.crop_pct)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                continue
            print(r["image"])
            for i, t in enumerate(r["top"], 1):
                name = f"{t['class']} {t['description']}" if t.get("description") else t["class"]
                print(f"  {i}. {name:<24} {t['probability']:.4f}")
    for r in failed:
        print(f"vgg predict: error: {r['error']}", file=sys.stderr)
    if failed:
        print(f"vgg predict: {len(failed)} of {len(results)} images could not be read", file=sys.stderr)
        return 1
    return 0
