"""`vgg import` and `vgg export`: the command line of `vggnet.interop`.
"""

from __future__ import annotations

import argparse
import sys

from vggnet.arguments import (EXPORT_FORMATS, IMPORT_FORMATS, MODEL_NAMES_HELP, add_checkpoint_argument,
                              add_output_argument, check_required_output, positive_int, take_positional_checkpoints)
from vggnet.errors import UserError
from vggnet.paths import check_output
# (the format modules, and torch, are imported by run_<command> after every flag is checked)

__all__ = ["add_import_arguments", "run_import", "add_export_arguments", "run_export"]


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert foreign VGG weights into a vggnet checkpoint. The configuration, width, crop "
                          "and class count are read off the weights' shapes; every layer is checked.")
    parser.add_argument("format", nargs="?", choices=IMPORT_FORMATS,
                        help="torchvision .pth state dict, timm VGG state dict, Keras .h5 (VGG16/19; Keras 2 h5 or "
                             "Keras 3 .weights.h5), Caffe .caffemodel, or a vggnet safetensors export "
                             "(default: detected from the file's content)")
    parser.add_argument("file", help="the weights file")
    add_output_argument(parser, required=True, old=["--out"], metavar="CKPT", help="checkpoint to write (.pt)")
    parser.add_argument("--classes", metavar="FILE",
                        help="class names, one per line, or ILSVRC synset lines ('n01440764 tench, Tinca tinca': "
                             "the WordNet ids become the classes, the words are shown by vgg predict), or Keras' "
                             "imagenet_class_index.json (default: 0 .. N-1)")
    g = parser.add_argument_group("model (default: detected from the weights)")
    g.add_argument("--model", metavar="NAME", help=f"configuration: {MODEL_NAMES_HELP} (A-LRN has A's weights: "
                                                   f"name it to get it)")
    g.add_argument("--width", type=float, help="conv channel multiplier")
    g.add_argument("--fc-width", type=int, help="hidden FC width")
    g.add_argument("--crop-size", type=int, help="training crop, a multiple of 32")
    g.add_argument("--dropout", type=float, help="dropout after FC1 and FC2 (default: 0.5)")


def run_import(args: argparse.Namespace) -> int:
    check_required_output(args)
    from vggnet.checkpoint import save_checkpoint
    from vggnet.interop import detect_format, import_safetensors, import_weights
    from vggnet.interop.common import describe_build, read_class_file

    build = {"width": args.width, "fc_width": args.fc_width, "crop_size": args.crop_size, "dropout": args.dropout}
    check_output(args.output, flag="--output", inputs=[args.file, args.classes])
    if args.format is None:
        args.format = detect_format(args.file)
        print(f"detected format: {args.format}")
    if args.format == "safetensors":
        given = [f"--{k.replace('_', '-')}" for k, v in build.items() if v is not None] + (
            ["--model"] if args.model else [])
        if given:
            raise UserError(f"{', '.join(given)}: a safetensors export carries its build arguments; drop them")
        ckpt = import_safetensors(args.file, classes=args.classes)
        if args.classes:
            descriptions = read_class_file(args.classes)[1]
            if descriptions is not None:
                ckpt["meta"]["class_descriptions"] = descriptions
    else:
        ckpt = import_weights(args.format, args.file, name=args.model, classes=args.classes, **build)
    from vggnet.checkpoint import check_finite

    check_finite(ckpt["state_dict"], f"{args.file}", advice="a net with them answers nothing; import the "
                                                              "weights of a run that had not diverged")
    out = save_checkpoint(args.output, ckpt)
    b, p = ckpt["build"], ckpt["preprocessing"]
    print(f"imported {args.format} {args.file}: {describe_build(b)}")
    print(f"preprocessing: pixel_scale={p['pixel_scale']:g} mean={p['mean']} std={p['std']} (RGB)")
    print(f"wrote {out}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Export a checkpoint: safetensors with build arguments, preprocessing and classes in its "
                          "header (released weights; a JSON sidecar too), a torchvision "
                          "state dict, or ONNX (crop classifier, or with --dense the fully-convolutional net).")
    parser.add_argument("format", choices=EXPORT_FORMATS, help="what to write")
    parser.add_argument("old_checkpoint", nargs="?", metavar="CKPT", help=argparse.SUPPRESS)  # the old form
    add_checkpoint_argument(parser, help="a vggnet checkpoint (or any weights file `vgg import` reads)")
    add_output_argument(parser, required=True, old=["--out"], metavar="PATH", help="file to write")
    g = parser.add_argument_group("ONNX")
    g.add_argument("--dense", action="store_true",
                   help="export model.dense: whole images of any size >= crop_size -> class-score map")
    g.add_argument("--opset", type=positive_int, default=18, help="ONNX opset (default: %(default)s)")
    g.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter (slower here)")
    g.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with PyTorch")
    g = parser.add_argument_group("int8 ONNX (onnxruntime static quantisation of the crop classifier)")
    g.add_argument("--int8", action="store_true",
                   help="write a statically quantised int8 model (QDQ, per-channel weights), after checking its "
                        "accuracy and speed against fp32")
    g.add_argument("--calibration", metavar="DIR", help="images whose activation ranges calibrate the int8 model")
    g.add_argument("--calibration-images", type=positive_int, default=300,
                   help="images taken evenly from --calibration (default: %(default)s)")
    g.add_argument("--val", metavar="DIR",
                   help="labelled folder (class folders) for the accuracy check (default: --calibration)")
    g.add_argument("--val-images", type=positive_int, default=None, help="at most this many of --val (default: all)")
    g.add_argument("--max-drop", type=float, default=1.0,
                   help="refuse to write the file if int8 top-1 accuracy is lower than fp32's by more than this "
                        "many percentage points (default: %(default)s)")


def run_export(args: argparse.Namespace) -> int:
    take_positional_checkpoints(args, "old_checkpoint", multiple=False)
    check_required_output(args)
    if args.format != "onnx" and (args.dense or args.dynamo):
        raise UserError(f"--dense and --dynamo apply to ONNX exports only, not {args.format}")
    if args.format == "onnx" and (args.int8 or args.calibration):
        _check_int8_flags(args)
    from vggnet.interop.safetensors import sidecar_path

    inputs = [args.checkpoint, args.calibration, args.val]
    check_output(args.output, flag="--output", inputs=inputs)
    if args.format == "safetensors":  # and its JSON sidecar
        check_output(sidecar_path(args.output), flag="--output (its JSON sidecar)", inputs=inputs)
    from vggnet.interop import check_onnx, export_onnx, export_safetensors, export_torchvision, load_weights
    from vggnet.interop import torchvision_name

    ckpt = load_weights(args.checkpoint)
    if args.format == "safetensors":
        weights, sidecar = export_safetensors(ckpt, args.output)
        print(f"wrote {weights} and {sidecar}")
        return 0
    if args.format == "torchvision":
        out = export_torchvision(ckpt, args.output)
        p = ckpt["preprocessing"]
        print(f"wrote {out}: loads into torchvision.models.{torchvision_name(ckpt['build'])}"
              f"(num_classes={ckpt['build']['num_classes']}); the model expects inputs "
              f"(rgb01 * {p['pixel_scale']:g} - {p['mean']}) / {p['std']}")
        return 0
    if args.int8 or args.calibration:
        return _run_int8(args, ckpt)
    out = export_onnx(ckpt, args.output, dense=args.dense, opset=args.opset, dynamo=args.dynamo)
    print(f"wrote {out} ({'dense, dynamic height and width' if args.dense else 'crop classifier'})")
    if args.no_check:
        return 0
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime is not installed: not checked (pip install 'vggnet[export]')")
        return 0
    try:
        report = check_onnx(out, ckpt)
    except RuntimeError as exc:
        print(f"vgg export: check failed: {exc}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{h}x{w}: {d:.2g}" for (h, w), d in report.items())
    print(f"onnxruntime matches PyTorch (max |difference| {sizes})")
    return 0


def _check_int8_flags(args: argparse.Namespace) -> None:
    if not (args.int8 and args.calibration):
        raise UserError("--int8 needs --calibration DIR (images to calibrate on), and --calibration needs --int8")
    if args.dense or args.dynamo:
        raise UserError("--int8 quantises the crop classifier: drop --dense and --dynamo")


def _run_int8(args: argparse.Namespace, ckpt: dict) -> int:
    _check_int8_flags(args)
    from vggnet.checkpoint import require_kind

    require_kind(ckpt, args.checkpoint, ("classifier",), use="--int8 (a crop classifier checked by its top-1 "
                                                             "accuracy)")
    try:
        from vggnet.interop.quantize import quantize_onnx
    except ImportError as exc:
        raise UserError(f"--int8 needs onnx and onnxruntime ({exc}); pip install 'vggnet[export]'") from None
    report = quantize_onnx(ckpt, args.output, args.calibration, val=args.val, calibration_images=args.calibration_images,
                           val_images=args.val_images, max_drop=args.max_drop)
    for line in report.lines():
        print(line)
    print(f"wrote {report.written} (int8 crop classifier)")
    return 0
