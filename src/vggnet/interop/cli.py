"""`vgg import` and `vgg export`: the command line of `vggnet.interop`.
"""

from __future__ import annotations

import argparse
import sys

from vggnet.checkpoint import save_checkpoint
from vggnet.errors import UserError
from vggnet.interop import (
    EXPORT_FORMATS,
    IMPORT_FORMATS,
    check_onnx,
    export_onnx,
    export_safetensors,
    export_torchvision,
    import_safetensors,
    import_weights,
    load_weights,
    torchvision_name,
)
from vggnet.interop._common import describe_build
from vggnet.models import NAMES

__all__ = ["add_import_arguments", "run_import", "add_export_arguments", "run_export"]


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert foreign VGG weights into a vggnet checkpoint. The configuration, width, crop "
                          "and class count are read off the weights' shapes; every layer is checked.")
    parser.add_argument("format", choices=IMPORT_FORMATS,
                        help="torchvision .pth state dict, Keras .h5 (VGG16/19), Caffe .caffemodel, or a "
                             "vggnet safetensors export (with its .json sidecar)")
    parser.add_argument("file", help="the weights file")
    parser.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write (.pt)")
    parser.add_argument("--classes", metavar="FILE", help="class names, one per line (default: 0 .. N-1)")
    g = parser.add_argument_group("model (default: detected from the weights)")
    g.add_argument("--model", metavar="NAME", help=f"configuration: {', '.join(NAMES)} (A-LRN has A's weights: "
                                                   f"name it to get it)")
    g.add_argument("--width", type=float, help="conv channel multiplier")
    g.add_argument("--fc-width", type=int, help="hidden FC width")
    g.add_argument("--crop-size", type=int, help="training crop, a multiple of 32")
    g.add_argument("--dropout", type=float, help="dropout after FC1 and FC2 (default: 0.5)")


def run_import(args: argparse.Namespace) -> int:
    build = {"width": args.width, "fc_width": args.fc_width, "crop_size": args.crop_size, "dropout": args.dropout}
    if args.format == "safetensors":
        given = [f"--{k.replace('_', '-')}" for k, v in build.items() if v is not None] + (
            ["--model"] if args.model else [])
        if given:
            raise UserError(f"{', '.join(given)}: a safetensors export carries its build arguments; drop them")
        ckpt = import_safetensors(args.file, classes=args.classes)
    else:
        ckpt = import_weights(args.format, args.file, name=args.model, classes=args.classes, **build)
    out = save_checkpoint(args.out, ckpt)
    b, p = ckpt["build"], ckpt["preprocessing"]
    print(f"imported {args.format} {args.file}: {describe_build(b)}")
    print(f"preprocessing: pixel_scale={p['pixel_scale']:g} mean={p['mean']} std={p['std']} (RGB)")
    print(f"wrote {out}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Export a checkpoint: safetensors + JSON sidecar (released weights), a torchvision "
                          "state dict, or ONNX (crop classifier, or with --dense the fully-convolutional net).")
    parser.add_argument("format", choices=EXPORT_FORMATS, help="what to write")
    parser.add_argument("checkpoint", help="a vggnet checkpoint (or any weights file `vgg import` reads)")
    parser.add_argument("--out", required=True, metavar="PATH", help="file to write")
    g = parser.add_argument_group("ONNX")
    g.add_argument("--dense", action="store_true",
                   help="export model.dense: whole images of any size >= crop_size -> class-score map")
    g.add_argument("--opset", type=int, default=18, help="ONNX opset (default: %(default)s)")
    g.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter (slower here)")
    g.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with PyTorch")


def run_export(args: argparse.Namespace) -> int:
    ckpt = load_weights(args.checkpoint)
    if args.format != "onnx" and (args.dense or args.dynamo):
        raise UserError(f"--dense and --dynamo apply to ONNX exports only, not {args.format}")
    if args.format == "safetensors":
        weights, sidecar = export_safetensors(ckpt, args.out)
        print(f"wrote {weights} and {sidecar}")
        return 0
    if args.format == "torchvision":
        out = export_torchvision(ckpt, args.out)
        p = ckpt["preprocessing"]
        print(f"wrote {out}: loads into torchvision.models.{torchvision_name(ckpt['build'])}"
              f"(num_classes={ckpt['build']['num_classes']}); the model expects inputs "
              f"(rgb01 * {p['pixel_scale']:g} - {p['mean']}) / {p['std']}")
        return 0
    out = export_onnx(ckpt, args.out, dense=args.dense, opset=args.opset, dynamo=args.dynamo)
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
