"""`vgg info`: Table 1 (configurations) and Table 2 (parameters), computed from the built models."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vggnet.errors import UserError

__all__ = ["add_info_arguments", "run_info", "describe", "table1_lines"]


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="one configuration (default: all of Table 1)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes (default: %(default)s)")
    parser.add_argument("--crop-size", type=int, default=224, help="input size (default: %(default)s)")
    parser.add_argument("--width", type=float, default=1.0, help="conv channel multiplier (default: %(default)s)")
    parser.add_argument("--fc-width", type=int, default=4096, help="hidden FC width (default: %(default)s)")
    parser.add_argument("--batch-norm", action="store_true", help="count the BatchNorm variant")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def describe(name: str, **build: Any) -> dict[str, Any]:
    """Table 1 column and Table 2 row of one configuration, computed from the built model."""
    import torch

    from vggnet.models import CONFIGS, count_macs, count_parameters, vgg, weight_layers

    with torch.device("meta"):  # no memory, no initialisation cost: only shapes are needed
        model = vgg(name, **build)
    layers = list(CONFIGS[model.name])
    fc = [f"FC-{build.get('fc_width', 4096)}", f"FC-{build.get('fc_width', 4096)}",
          f"FC-{model.num_classes}", "soft-max"]
    return {
        "name": model.name,
        "layers": layers + fc,
        "weight_layers": weight_layers(model),
        "parameters": count_parameters(model),
        "macs": count_macs(model),
        "gmacs": round(count_macs(model) / 1e9, 2),
        "build": model.build_args,
    }


def table1_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Table 1 as the paper prints it: one column per net, rows aligned by stage.

    Each stage (the layers up to a maxpool) takes as many rows as its longest
    column, so a layer one net has and another lacks (A-LRN's LRN, C's 1x1
    convs) leaves a gap in the others instead of shifting every row below it.
    """
    def stages(layers: list[str]) -> list[list[str]]:
        blocks: list[list[str]] = [[]]
        for layer in layers:
            blocks[-1].append(layer)
            if layer == "maxpool":
                blocks.append([])
        return blocks  # the last block is the FC head

    columns = [stages(r["layers"]) for r in rows]
    count = max(len(c) for c in columns)
    columns = [c[:-1] + [[]] * (count - len(c)) + c[-1:] for c in columns]  # heads line up too
    cells: list[list[str]] = [[r["name"], f"{r['weight_layers']} weight layers"] for r in rows]
    for block in range(count):
        height = max(len(c[block]) for c in columns)
        for cell, column in zip(cells, columns):
            layers = column[block]
            if layers and layers[-1] == "maxpool" and len(layers) < height:
                layers = layers[:-1] + [""] * (height - len(layers)) + ["maxpool"]  # pools on one row
            cell.extend(layers + [""] * (height - len(layers)))
    widths = [max(len(s) for s in c) for c in cells]
    return ["  ".join(f"{c[i]:<{w}}" for c, w in zip(cells, widths)).rstrip()
            for i in range(len(cells[0]))]


def run_info(args: argparse.Namespace) -> int:
    from vggnet.models import CONFIGS, resolve_name

    try:
        names = [resolve_name(args.name)] if args.name else list(CONFIGS)
        build = dict(num_classes=args.num_classes, crop_size=args.crop_size, width=args.width,
                     fc_width=args.fc_width, batch_norm=args.batch_norm)
        rows = [describe(n, **build) for n in names]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps({r["name"]: r for r in rows}, indent=2))
        return 0
    print(f"Table 1: ConvNet configurations (input {args.crop_size}x{args.crop_size} RGB image)")
    for line in table1_lines(rows):
        print(line)
    print()
    print("Table 2: number of parameters" + (" (with BatchNorm)" if args.batch_norm else ""))
    print(f"{'net':<6} {'weight layers':>13} {'parameters':>14} {'GMACs':>8}")
    for r in rows:
        print(f"{r['name']:<6} {r['weight_layers']:>13} {r['parameters']:>14,} {r['gmacs']:>8.2f}")
    return 0
