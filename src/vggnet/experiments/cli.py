"""`vgg experiment`: list, plan, run and report the paper's tables as grids (see `vggnet.experiments`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vggnet.arguments import (add_batch_size_argument, add_data_argument, add_execution_arguments,
                              add_output_dir_argument, add_seed_argument, add_workers_argument, positive_int)
from vggnet.errors import UserError
from vggnet.paths import check_output_dir

__all__ = ["add_experiment_arguments", "run_experiment"]


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="a grid (table3, table4, table5, table6, b_vs_b5x5, table8, "
                                                     "table9, appendix_b), a grid YAML file, or `list`")
    add_data_argument(parser, help="dataset with DIR/train and DIR/val (ImageNet layout; `vgg synth DIR` writes "
                                   "the synthetic one); not checked by a dry run")
    parser.add_argument("--transfer-data", metavar="DIR", help="Appendix B grids: the target dataset (VOC devkit "
                                                               "or class folders)")
    add_output_dir_argument(parser, "experiment", help="cells (cached by their settings) and reports")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the torchrun command of every cell in dependency order; run nothing")
    parser.add_argument("--nproc-per-node", type=positive_int, default=1, metavar="N",
                        help="with --dry-run: processes (GPUs) per torchrun command (default: %(default)s)")
    parser.add_argument("--cells", metavar="NAME,...", help="run only these cells (and the cells they need)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report what the cache holds")
    parser.add_argument("--quiet", action="store_true", help="send the cells' output only to their log files")
    g = parser.add_argument_group("the same experiment at another scale (every cell alike)")
    g.add_argument("--width", type=float, help="conv channel multiplier")
    g.add_argument("--fc-width", type=int, help="hidden FC width")
    g.add_argument("--crop-size", type=int, help="training crop; every pixel size (S, Q) is scaled by CROP/224")
    g.add_argument("--epochs", type=positive_int, help="at most this many epochs per training run")
    add_batch_size_argument(g, default=None, help="global batch of every training run (default: each grid's)")
    g.add_argument("--micro-batch-size", type=positive_int, help="images per forward pass")
    g.add_argument("--batch-norm", action="store_true", default=None, help="BatchNorm after every conv (beyond "
                                                                           "the paper)")
    g.add_argument("--dropout", type=float, help="dropout after FC1 and FC2")
    g.add_argument("--lr-patience", type=int, help="epochs without improvement before the lr drops")
    add_seed_argument(g, default=None, help="seed of every training run (a second seed = a second grid; "
                                            "default: each grid's)")
    g.add_argument("--init-scheme", metavar="SCHEME",
                   help="gaussian | glorot | kaiming for every layer not copied from another cell (the grid's "
                        "from-scratch cells and init_rest); the from:CELL chain is kept")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other `vgg train` setting, in every training cell (repeatable)")
    # passed to every cell; unset: each command's own default (--amp changes the numbers: it is hashed)
    add_execution_arguments(parser, passthrough=True)
    g = parser.add_argument_group("execution (not part of a cell's identity)")
    add_workers_argument(g, help="data-loading processes of every cell")
    g.add_argument("--eval-batch-size", type=positive_int, help="images per dense evaluation pass")


def _overrides(args: argparse.Namespace):
    import yaml

    from vggnet.experiments.runner import Overrides

    train: dict[str, Any] = {}
    for key in ("width", "fc_width", "crop_size", "epochs", "batch_size", "micro_batch_size", "batch_norm",
                "dropout", "lr_patience", "seed"):
        value = getattr(args, key)
        if value is not None:
            train[key] = value
    for item in args.set:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set pca_std=0")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in ("init", "output_dir", "resume", "data", "model", "scale", "lr", "val_scale"):
            raise UserError(f"--set {key}: this setting differs between cells (it is the grid's design), "
                            f"it cannot be overridden alike")
        train[key] = yaml.safe_load(value) if ":" not in value else value
    execution = {k: getattr(args, k) for k in ("device", "workers", "amp", "channels_last", "threads")
                 if getattr(args, k) is not None}
    if "amp" in execution:
        train["amp"] = execution.pop("amp")  # precision changes the numbers: part of the cell's identity
    return Overrides(train=train, execution=execution, eval_batch_size=args.eval_batch_size,
                     transfer_data=args.transfer_data, init_scheme=args.init_scheme)


def _list(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vggnet.experiments.grid import known_grids, load_grid, needs_command
    from vggnet.experiments.runner import read_json

    print("grids (configs/experiments/):")
    grids = known_grids()
    width = max((len(name) for name in grids), default=0)
    for name, path in grids.items():
        grid = load_grid(path)
        missing = [c for c in grid.needs if needs_command(c)]
        need = f"  [needs `vgg {'`, `vgg '.join(missing)}`, not in this version]" if missing else ""
        trains = sum(c.kind in ("train", "localize-train") for c in grid.cells.values())
        print(f"  {name:<{width}}  {grid.title}  ({len(grid.cells)} cells, {trains} training runs){need}")
    plans = sorted(Path(args.output_dir).glob("reports/*/plan.json"))
    if plans:
        print(f"\nin {args.output_dir}:")
    for plan_file in plans:
        plan = read_json(plan_file) or {}
        cells = plan.get("cells") or {}
        states = {cell: _status_from_dir(Path(info["dir"]), info["kind"]) for cell, info in cells.items()}
        done = sum(s == "done" for s in states.values())
        print(f"  {plan.get('grid', plan_file.parent.name)}: {done}/{len(states)} cells done "
              f"(data {plan.get('data')})")
        for cell, state in states.items():
            print(f"    {cell:<24} {state:<8} {cells[cell]['dir']}")
    return 0


def _status_from_dir(directory, kind: str) -> str:
    from vggnet.experiments.grid import Cell
    from vggnet.experiments.runner import PlannedCell, cell_status

    return cell_status(PlannedCell(cell=Cell(name="?", kind=kind), hash="", dir=directory, argv=[]))


def run_experiment(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.name == "list":
        return _list(args)
    from vggnet.experiments.grid import load_grid
    from vggnet.experiments.report import format_table, write_report
    from vggnet.experiments.runner import write_json, dry_run_lines, plan_grid, run_plan

    grid = load_grid(args.name)
    if not args.data:
        raise UserError("--data DIR is required (DIR/train and DIR/val; `vgg synth DIR` writes the synthetic "
                        "shapes dataset)")
    if args.dry_run:
        if not Path(args.data).is_dir():  # the commands are for the machine that has the data
            print(f"vgg experiment: --data {args.data}: not checked (--dry-run; not a directory here)",
                  file=sys.stderr)
    elif not Path(args.data).is_dir():
        raise UserError(f"--data {args.data}: no such directory")
    check_output_dir(args.output_dir, flag="--output-dir", inputs=[args.data, grid.path])
    only = [c.strip() for c in args.cells.split(",") if c.strip()] if args.cells else None
    plan = plan_grid(grid, data=args.data, root=args.output_dir, overrides=_overrides(args), only=only)
    if args.dry_run:
        print("\n".join(dry_run_lines(plan, nproc_per_node=args.nproc_per_node)))
        return 0
    plan.root.mkdir(parents=True, exist_ok=True)
    write_json(plan.root / "reports" / grid.name / "plan.json", plan.summary())
    records = {} if args.report_only else run_plan(plan, quiet=args.quiet)
    report, out = write_report(plan, records)
    print()
    print(f"{report['title']} — ours ({Path(report['data']).name}) beside the paper's ({report['paper_source']})")
    print(format_table(report))
    print(f"\nreport: {out / 'report.md'} (.json, .csv)" + (f"; plots: {', '.join(report['plots'])}"
                                                           if report["plots"] else ""))
    failed = [n for n, c in report["cells"].items() if c["status"] in ("failed", "skipped")]
    if failed:
        print(f"vgg experiment: {len(failed)} cell(s) failed or were skipped: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
