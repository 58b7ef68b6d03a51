"""Running a grid: each cell is one `vgg` command line, cached under the hash of its settings.

A cell is resolved into the exact argument list of `vgg train` / `vgg eval` /
`vgg localize` / `vgg transfer` and run in this process through
`vggnet.cli.main(argv)` — the same code path as typing the command, so there is
no second implementation of anything. `--dry-run` prints the same argument lists
as `torchrun ... -m vggnet.cli ARGV` lines instead.

The cache: every cell has a directory `RUN/cells/<kind>-<hash>` where the hash
covers everything that decides the cell's result (the fully resolved settings,
the data, and the hashes of the cells it starts from or evaluates), and nothing
that does not (device, workers, progress bars). So

- an interrupted grid resumes: finished cells are found done and skipped, and an
  interrupted training run continues from its last checkpoint (`--resume auto`);
- a changed cell gets a new hash, and so do the cells that depend on it, and
  only those rerun;
- two grids that share a cell (Tables 3 and 4 share their training runs) find
  the same directory and train it once;
- a command from `--dry-run` run by hand writes the very files the grid looks
  for, so a cluster can run the cells and `vgg experiment` reports them.

A cell is done when the command's own output says so: a training run's
`last.pt` records `finished`, an evaluation's `eval.json` exists (written
atomically, last). `cell.json` beside them records the cell's status and time.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from vggnet.errors import UserError
from vggnet.paths import folder_fingerprint
from vggnet.experiments.grid import (EXECUTION_SETTINGS, PAPER_CROP, Cell, Grid, digest, needs_command)

__all__ = ["Plan", "PlannedCell", "plan_grid", "run_plan", "dry_run_lines", "cell_status", "Overrides", "grid_px"]

# The training settings a grid may be shrunk by, alike in every cell (vgg experiment's flags)
SHRINK_SETTINGS = ("width", "fc_width", "crop_size", "epochs", "batch_size", "micro_batch_size", "batch_norm",
                   "dropout", "lr_patience", "lr_drops", "seed", "stats_sample", "pca_std")


@dataclass
class Overrides:
    """What `vgg experiment` changes in every cell alike."""

    train: dict[str, Any] = field(default_factory=dict)        # training settings (hashed: they change results)
    execution: dict[str, Any] = field(default_factory=dict)    # device, workers, amp, ... (not hashed, except amp)
    eval_batch_size: int | None = None
    transfer_data: str | None = None
    init_scheme: str | None = None    # replaces the random initialisation of every cell (not the from:CELL chain)


@dataclass
class PlannedCell:
    cell: Cell
    hash: str
    dir: Path
    argv: list[str]                  # the `vgg` argument list (argv[0] is the command)
    stdout_file: Path | None = None  # a command whose result is its --json output: where it goes
    settings: dict[str, Any] = field(default_factory=dict)    # what the hash covers

    @property
    def name(self) -> str:
        return self.cell.name

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def result_file(self) -> Path:
        if self.cell.kind in ("train", "localize-train"):
            return self.run_dir / "last.pt"
        if self.cell.kind in ("eval", "fuse"):
            return self.dir / "eval.json"
        return self.dir / "result.json"


@dataclass
class Plan:
    grid: Grid
    root: Path
    data: str
    cells: dict[str, PlannedCell]     # in dependency order
    factor: float                     # pixel sizes are multiplied by this (crop / 224)
    overrides: Overrides

    def summary(self) -> dict[str, Any]:
        return {"grid": self.grid.name, "data": self.data, "factor": self.factor,
                "overrides": {"train": self.overrides.train, "execution": self.overrides.execution},
                "cells": {n: {"hash": c.hash, "dir": str(c.dir), "kind": c.cell.kind} for n, c in self.cells.items()}}


# --------------------------------------------------------------------------- planning


def grid_px(value: int | float, factor: float) -> int:
    """A pixel size written for the paper's 224 crop, at this grid's crop."""
    return max(1, int(round(float(value) * factor)))


def _scale_px(value: Any, factor: float, where: str) -> int | list[int]:
    from vggnet.data.transforms import parse_scale

    try:
        lo, hi = parse_scale(value)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    lo, hi = grid_px(lo, factor), grid_px(hi, factor)
    return lo if lo == hi else [lo, hi]


def _scales_list(value: Any, factor: float, where: str) -> list[int]:
    values = [value] if isinstance(value, (int, str)) and not (isinstance(value, str) and "," in value) else value
    if isinstance(values, str):
        values = values.split(",")
    try:
        ints = [int(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"{where}: test_scales must be integers such as [256, 384, 512], got {value!r}") from None
    if not ints or min(ints) < 1:  # scaled, 0 and -5 would have become Q = 1
        raise UserError(f"{where}: test_scales must be positive integers such as [256, 384, 512], got {value!r}")
    return sorted({grid_px(q, factor) for q in ints})


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _train_argv(settings: Mapping[str, Any]) -> list[str]:
    """Settings -> `vgg train` flags, in the order given (what a person would type)."""
    argv: list[str] = []
    for key, value in settings.items():
        if value is None:
            continue
        if key == "progress":
            if not value:
                argv.append("--no-progress")
            continue
        if isinstance(value, bool):
            if value:
                argv.append(_flag(key))
            continue
        if isinstance(value, (list, tuple)):
            value = ":".join(str(v) for v in value)
        argv += [_flag(key), str(value)]
    return argv


_FINGERPRINTS: dict[str, str] = {}


def _data_files(folder: str) -> str:
    """The dataset's files as they are now (`vggnet.paths.folder_fingerprint`), part of every cell's
    hash: a cell is not "done (cached)" after its data changed. Computed once per plan."""
    if folder not in _FINGERPRINTS:
        _FINGERPRINTS[folder] = folder_fingerprint(folder)
    return _FINGERPRINTS[folder]


def plan_grid(grid: Grid, *, data: str | Path, root: str | Path, overrides: Overrides | None = None,
              only: Sequence[str] | None = None) -> Plan:
    """Resolve every cell of `grid` (or of `only` and what they need) into its command and cache directory."""
    from vggnet.engine.config import TrainConfig

    _FINGERPRINTS.clear()  # the files as they are for this plan

    overrides = overrides or Overrides()
    data = str(Path(data).resolve())
    root = Path(root).resolve()
    crop = int(overrides.train.get("crop_size") or grid.defaults.get("crop_size") or PAPER_CROP)
    factor = crop / PAPER_CROP
    names = grid.order()
    if only:
        unknown = [n for n in only if n not in grid.cells]
        if unknown:
            raise UserError(f"--cells: {', '.join(unknown)} not in grid {grid.name} (cells: {', '.join(names)})")
        keep: set[str] = set()

        def add(n: str) -> None:
            if n not in keep:
                keep.add(n)
                for d in grid.cells[n].needs():
                    add(d)
        for n in only:
            add(n)
        names = [n for n in names if n in keep]
    planned: dict[str, PlannedCell] = {}
    for name in names:
        cell = grid.cells[name]
        where = f"{grid.path}: cell {name!r}"
        if cell.kind in ("train", "localize-train"):
            planned[name] = _plan_train(cell, grid, planned, data=data, root=root, factor=factor,
                                        overrides=overrides, where=where, TrainConfig=TrainConfig)
        elif cell.kind == "eval":
            planned[name] = _plan_eval(cell, planned, data=data, root=root, factor=factor, overrides=overrides,
                                       where=where)
        elif cell.kind == "fuse":
            planned[name] = _plan_fuse(cell, planned, root=root)
        elif cell.kind == "localize-eval":
            planned[name] = _plan_localize_eval(cell, planned, data=data, root=root, factor=factor,
                                                overrides=overrides, where=where)
        else:
            planned[name] = _plan_transfer(cell, planned, root=root, factor=factor, overrides=overrides,
                                           where=where)
    return Plan(grid=grid, root=root, data=data, cells=planned, factor=factor, overrides=overrides)


def _plan_train(cell: Cell, grid: Grid, planned: Mapping[str, PlannedCell], *, data: str, root: Path,
                factor: float, overrides: Overrides, where: str, TrainConfig: type) -> PlannedCell:
    extra = {k: cell.settings[k] for k in ("head", "finetune") if k in cell.settings}
    settings = {**grid.defaults, **{k: v for k, v in cell.settings.items() if k not in extra}, **overrides.train}
    for key in ("scale", "val_scale"):
        if settings.get(key) is not None:
            settings[key] = _scale_px(settings[key], factor, f"{where}: {key}")
    if overrides.init_scheme:
        # the layers no other cell provides: a from-scratch cell's init and a pre-initialised cell's init_rest
        settings["init_rest"] = overrides.init_scheme
        if not str(settings.get("init", "")).startswith("from:"):
            settings["init"] = overrides.init_scheme
    init = settings.get("init")
    dep = None
    if cell.kind == "localize-train":
        dep = planned[cell.source]
        init = f"from:{dep.run_dir / 'best.pt'}"
    elif isinstance(init, str) and init.startswith("from:") and init[5:] in planned:
        dep = planned[init[5:]]
        init = f"from:{dep.run_dir / 'best.pt'}"
    # every setting checked now, before any cell runs (the initial checkpoint does not exist yet)
    probe = {k: v for k, v in settings.items() if k not in EXECUTION_SETTINGS}
    # (a dry run plans for another machine's data: a folder missing here is not checked)
    probe.update(data=data if Path(data).is_dir() else None,
                 init="glorot" if dep is not None else settings.get("init", "glorot"))
    try:
        config = TrainConfig.from_dict(probe).validate()
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    resolved = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_SETTINGS}
    resolved["init"] = f"from:cell:{dep.hash}" if dep is not None else resolved["init"]
    resolved.pop("data")
    hashed = {"kind": cell.kind, "data": data, "data_files": _data_files(data), "train": resolved, **extra}
    h = digest(hashed)
    model = str(config.model)
    cdir = root / "cells" / f"{cell.kind}-{model}-{h[:12]}"
    flags = dict(settings)
    flags.pop("init", None)
    if cell.kind == "localize-train":
        flags.pop("init_rest", None)
    execution = {**{"progress": False}, **{k: v for k, v in overrides.execution.items()
                                          if k in {f.name for f in fields(TrainConfig)}}}
    head = ["localize", "train"] if cell.kind == "localize-train" else ["train"]
    argv = head + ["--data", data] + _train_argv({k: v for k, v in flags.items()
                                                  if k not in ("output_dir", "resume", "progress", "data")})
    if init is not None:
        argv += ["--init", str(init)]
    argv += _train_argv(extra) + _train_argv({k: v for k, v in execution.items() if k not in flags})
    argv += ["--output-dir", str(cdir / "run"), "--resume", "auto"]
    return PlannedCell(cell=cell, hash=h, dir=cdir, argv=argv, settings=hashed)


def _eval_common(cell: Cell, overrides: Overrides) -> list[str]:
    argv: list[str] = []
    ex = overrides.execution
    for key in ("workers", "device", "threads", "channels_last"):  # every inference command takes these
        value = cell.settings.get(key, ex.get(key))
        if value is not None:
            argv += [_flag(key), str(value)]
    return argv


def _plan_eval(cell: Cell, planned: Mapping[str, PlannedCell], *, data: str, root: Path, factor: float,
               overrides: Overrides, where: str) -> PlannedCell:
    s = cell.settings
    if "test_scales" not in s:
        raise UserError(f"{where}: an eval cell needs settings.test_scales (pixels at the paper's 224 crop)")
    scales = _scales_list(s["test_scales"], factor, where)
    method = s.get("method", "dense")
    if method not in ("dense", "multi-crop", "both", "center"):
        raise UserError(f"{where}: method must be dense, multi-crop, both or center, got {method!r}")
    nets = [planned[n] for n in cell.nets]
    hashed = {"kind": "eval", "data": data, "data_files": _data_files(data), "nets": [n.hash for n in nets], "test_scales": scales, "method": method,
              "flip": bool(s.get("flip", True)), "grid": int(s.get("grid", 5)), "amp": s.get("amp", "off")}
    h = digest(hashed)
    cdir = root / "cells" / f"eval-{h[:12]}"
    argv = ["eval"]
    for n in nets:
        argv += ["--checkpoint", str(n.run_dir / "best.pt")]
    argv += ["--data", data, "--test-scales", ",".join(map(str, scales)), "--method", method]
    if not hashed["flip"]:
        argv.append("--no-flip")
    if hashed["grid"] != 5:
        argv += ["--grid", str(hashed["grid"])]
    if hashed["amp"] != "off":
        argv += ["--amp", str(hashed["amp"])]
    batch = s.get("batch_size", overrides.eval_batch_size)
    if batch:
        argv += ["--batch-size", str(batch)]
    argv += _eval_common(cell, overrides)
    argv += ["--output", str(cdir / "eval.json"), "--save-posteriors", str(cdir / "posteriors.pt")]
    return PlannedCell(cell=cell, hash=h, dir=cdir, argv=argv, settings=hashed)


def _plan_fuse(cell: Cell, planned: Mapping[str, PlannedCell], *, root: Path) -> PlannedCell:
    evals = [planned[n] for n in cell.evals]
    method = cell.settings.get("method", "dense")
    hashed = {"kind": "fuse", "evals": [e.hash for e in evals], "method": method}
    h = digest(hashed)
    cdir = root / "cells" / f"fuse-{h[:12]}"
    argv = ["eval", "--posteriors", *[str(e.dir / "posteriors.pt") for e in evals], "--method", method,
            "--output", str(cdir / "eval.json")]
    return PlannedCell(cell=cell, hash=h, dir=cdir, argv=argv, settings=hashed)


def _localize_scales(value: Any, nets: int, factor: float, where: str) -> list[int] | list[list[int]]:
    """A localize-eval cell's `test_scales`: one list for every net ([256, 384]), or one list per
    net of `nets:`, in the same order ([[256], [352, 384]]: Table 9's fusion)."""
    if not (isinstance(value, list) and value and all(isinstance(v, list) for v in value)):
        return _scales_list(value, factor, where)
    if len(value) != nets:
        raise UserError(f"{where}: test_scales has {len(value)} lists for {nets} nets; give one list for every "
                        f"net or one per net of `nets:`, in the same order")
    return [_scales_list(v, factor, where) for v in value]


def _plan_localize_eval(cell: Cell, planned: Mapping[str, PlannedCell], *, data: str, root: Path, factor: float,
                        overrides: Overrides, where: str) -> PlannedCell:
    s = cell.settings
    protocol = s.get("protocol", "central")
    if protocol not in ("central", "full"):
        raise UserError(f"{where}: protocol must be central or full, got {protocol!r}")
    if protocol == "full" and not cell.classifiers:
        raise UserError(f"{where}: the full protocol needs `classifiers:` (the classification cells that rank "
                        f"the classes)")
    nets, cls = [planned[n] for n in cell.nets], [planned[n] for n in cell.classifiers]
    scales = _localize_scales(s["test_scales"], len(nets), factor, where) if "test_scales" in s else None
    cls_method = s.get("classifier_method", "dense")
    if cls_method not in ("dense", "multi-crop", "both", "center"):
        raise UserError(f"{where}: classifier_method must be dense, multi-crop, both or center, got {cls_method!r}")
    cls_scales = _scales_list(s["classifier_scales"], factor, where) if "classifier_scales" in s else None
    hashed = {"kind": "localize-eval", "data": data, "data_files": _data_files(data), "nets": [n.hash for n in nets],
              "classifiers": [c.hash for c in cls], "protocol": protocol, "test_scales": scales}
    if cls and (cls_method != "dense" or cls_scales):  # (absent when default: earlier cells keep their hash)
        hashed.update({"classifier_method": cls_method, "classifier_scales": cls_scales})
    h = digest(hashed)
    cdir = root / "cells" / f"localize-eval-{h[:12]}"
    argv = ["localize", "eval"]
    per_net = scales is not None and isinstance(scales[0], list)
    for k, n in enumerate(nets):   # one list per net: `--test-scales` right after its `--checkpoint`
        argv += ["--checkpoint", str(n.run_dir / "best.pt")]
        if per_net:
            argv += ["--test-scales", ",".join(map(str, scales[k]))]
    for c in cls:
        argv += ["--classifier", str(c.run_dir / "best.pt")]
    argv += ["--data", data, "--protocol", protocol]
    if scales and not per_net:
        argv += ["--test-scales", ",".join(map(str, scales))]
    if cls and cls_method != "dense":
        argv += ["--classifier-method", cls_method]
    if cls and cls_scales:
        argv += ["--classifier-scales", ",".join(map(str, cls_scales))]
    argv += _eval_common(cell, overrides) + ["--output", str(cdir / "result.json")]
    return PlannedCell(cell=cell, hash=h, dir=cdir, argv=argv, settings=hashed)


def _plan_transfer(cell: Cell, planned: Mapping[str, PlannedCell], *, root: Path, factor: float,
                   overrides: Overrides, where: str) -> PlannedCell:
    s = cell.settings
    if not overrides.transfer_data:
        raise UserError(f"{where}: a transfer cell needs the target dataset: --transfer-data DIR (a VOC devkit "
                        f"folder, Caltech-style class folders, or `vgg synth --multi-label` output)")
    tdata = str(Path(overrides.transfer_data).resolve())
    scales = _scales_list(s.get("test_scales", [256, 384, 512]), factor, where)
    aggregate = s.get("aggregate", "average")
    nets = [planned[n] for n in cell.nets]
    extra = [str(x) for x in s.get("extra") or []]
    hashed = {"kind": "transfer", "data": tdata, "data_files": _data_files(tdata), "nets": [n.hash for n in nets], "test_scales": scales,
              "aggregate": aggregate, "extra": extra}
    h = digest(hashed)
    cdir = root / "cells" / f"transfer-{h[:12]}"
    argv = ["transfer", *[str(n.run_dir / "best.pt") for n in nets], "--data", tdata,
            "--test-scales", ",".join(map(str, scales)), "--aggregate", str(aggregate), *extra]
    argv += _eval_common(cell, overrides) + ["--output-dir", str(cdir / "out"), "--json"]
    return PlannedCell(cell=cell, hash=h, dir=cdir, argv=argv, stdout_file=cdir / "result.json", settings=hashed)


# --------------------------------------------------------------------------- status


def cell_status(pc: PlannedCell) -> str:
    """done | failed | partial | pending, from the command's own outputs (not from a log line)."""
    if _outputs_done(pc):
        return "done"
    record = read_json(pc.dir / "cell.json")
    if record and record.get("status") == "failed":
        return "failed"
    if pc.dir.exists():
        return "partial"
    return "pending"


def _outputs_done(pc: PlannedCell) -> bool:
    if pc.cell.kind in ("train", "localize-train"):
        last = pc.run_dir / "last.pt"
        if not last.exists():
            return False
        record = read_json(pc.dir / "cell.json")
        if record and record.get("status") == "done" and record.get("last_mtime_ns") == last.stat().st_mtime_ns:
            return True  # already checked against this very file
        try:
            import torch

            ckpt = torch.load(last, map_location="cpu", weights_only=True)
            return bool((ckpt.get("train") or {}).get("finished"))
        except Exception:  # a damaged last.pt: not done (the run resumes from an older checkpoint)
            return False
    if pc.cell.kind == "eval":
        return pc.result_file.exists() and (pc.dir / "posteriors.pt").exists() and read_json(pc.result_file) is not None
    return read_json(pc.result_file) is not None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: Any) -> None:
    from vggnet.checkpoint import atomic_write

    text = json.dumps(value, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# --------------------------------------------------------------------------- dry run


def command_line(pc: PlannedCell, *, nproc_per_node: int = 1) -> str:
    """The shell line that runs one cell: `torchrun ... -m vggnet.cli ARGV` (the same ARGV the grid runs)."""
    line = shlex.join(["torchrun", "--standalone", f"--nproc-per-node={nproc_per_node}", "-m", "vggnet.cli",
                       *pc.argv])
    if pc.stdout_file is not None:
        line += f" > {shlex.quote(str(pc.stdout_file))}"
    return line


def dry_run_lines(plan: Plan, *, nproc_per_node: int = 1) -> list[str]:
    lines = [f"# grid {plan.grid.name}: {plan.grid.title}",
             f"# {len(plan.cells)} cells in dependency order; data {plan.data}; pixel sizes x {plan.factor:g} "
             f"(crop {round(PAPER_CROP * plan.factor)})"]
    for name, pc in plan.cells.items():
        status = cell_status(pc)
        lines.append(f"# {name} ({pc.cell.kind}, {status})" + (f": {pc.cell.note}" if pc.cell.note else ""))
        lines.append(f"mkdir -p {shlex.quote(str(pc.dir))} && {command_line(pc, nproc_per_node=nproc_per_node)}")
    return lines


# --------------------------------------------------------------------------- running


class _Tee(io.TextIOBase):
    """Writes to several streams (the console and the cell's log)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return False


def run_cell(pc: PlannedCell, *, quiet: bool = False) -> dict[str, Any]:
    """Run one cell through `vggnet.cli.main`; returns its record (also written to cell.json)."""
    from vggnet import cli

    pc.dir.mkdir(parents=True, exist_ok=True)
    log_path = pc.dir / "log.txt"
    record: dict[str, Any] = {"cell": pc.name, "kind": pc.cell.kind, "hash": pc.hash, "argv": pc.argv,
                              "settings": pc.settings, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    start = time.perf_counter()
    captured = io.StringIO()
    rc: int | None = None
    error: str | None = None
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ vgg {shlex.join(pc.argv)}\n")
        log.flush()
        out = _Tee(log) if quiet else _Tee(sys.stdout, log)
        err = _Tee(log) if quiet else _Tee(sys.stderr, log)
        stdout = _Tee(captured, log) if pc.stdout_file is not None else out
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
                rc = int(cli.main(list(pc.argv)) or 0)
        except KeyboardInterrupt:
            raise  # the grid is being stopped: the cell stays unfinished and resumes next time
        except SystemExit as exc:  # argparse's way of refusing a flag
            rc = exc.code if isinstance(exc.code, int) else 2
        except Exception as exc:  # a bug or an unexpected failure in this cell: record it, go on with the others
            error = f"{type(exc).__name__}: {exc}"
            log.write(traceback.format_exc())
            rc = 1
    record["seconds"] = round(time.perf_counter() - start, 2)
    if rc is not None and rc >= 128:
        # the command was stopped by SIGINT/SIGTERM (the engine checkpoints and returns 128 + signal):
        # the grid stops too, and the cell resumes from its checkpoint next time
        record.update(status="interrupted", returncode=rc, log=str(log_path))
        write_json(pc.dir / "cell.json", record)
        raise KeyboardInterrupt
    if rc == 0 and pc.stdout_file is not None:
        text = captured.getvalue()
        try:
            json.loads(text)
            from vggnet.checkpoint import atomic_write

            atomic_write(pc.stdout_file, lambda f: f.write(text.encode("utf-8")))
        except ValueError:
            rc, error = 1, f"`vgg {pc.cell.command}` did not print JSON"
    ok = rc == 0 and _outputs_done(pc)
    if rc == 0 and not ok:
        error = error or ("the run stopped before it finished (a signal or --max-steps?)"
                          if pc.cell.kind in ("train", "localize-train") else "its result file was not written")
    record.update(status="done" if ok else "failed", returncode=rc, error=None if ok else (error or
                  _last_error(log_path)), log=str(log_path),
                  finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if ok and pc.cell.kind in ("train", "localize-train"):
        record["last_mtime_ns"] = (pc.run_dir / "last.pt").stat().st_mtime_ns
    write_json(pc.dir / "cell.json", record)
    return record


def _last_error(log_path: Path) -> str:
    try:
        lines = [ln for ln in log_path.read_text(encoding="utf-8").splitlines() if "error" in ln.lower()]
    except OSError:
        return "failed (no log)"
    return lines[-1].strip() if lines else f"failed (see {log_path})"


def run_plan(plan: Plan, *, quiet: bool = False, say=print) -> dict[str, dict[str, Any]]:
    """Run every cell not yet done, in dependency order. A failed cell is recorded and the cells that
    need it are skipped; the others go on. Returns name -> record."""
    missing = {c: needs_command(c) for c in {pc.cell.command for pc in plan.cells.values()} - {"train", "eval"}}
    missing = {c: why for c, why in missing.items() if why}
    if missing:
        raise UserError(f"grid {plan.grid.name} needs " + "; ".join(
            f"`vgg {c}` ({why})" for c, why in sorted(missing.items())) + ": merge the branch that adds it, or run "
            "`--dry-run` to see the commands")
    plan.root.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    bad: set[str] = set()
    total = len(plan.cells)
    for i, (name, pc) in enumerate(plan.cells.items(), 1):
        blocked = [d for d in pc.cell.needs() if d in bad]
        if blocked:
            bad.add(name)
            records[name] = {"cell": name, "status": "skipped", "error": f"needs {', '.join(blocked)}, which failed",
                             "hash": pc.hash}
            say(f"[{i}/{total}] {name}: skipped (needs {', '.join(blocked)}, which failed)")
            continue
        if _outputs_done(pc):
            record = read_json(pc.dir / "cell.json") or {}
            if record.get("status") != "done":  # finished by hand (a --dry-run command): adopt it
                record = {"cell": name, "kind": pc.cell.kind, "hash": pc.hash, "argv": pc.argv,
                          "settings": pc.settings, "status": "done", "adopted": True}
                if pc.cell.kind in ("train", "localize-train"):
                    record["last_mtime_ns"] = (pc.run_dir / "last.pt").stat().st_mtime_ns
                write_json(pc.dir / "cell.json", record)
            records[name] = record
            say(f"[{i}/{total}] {name}: done (cached in {pc.dir.name})")
            continue
        say(f"[{i}/{total}] {name}: running `vgg {shlex.join(pc.argv[:2])} ...` in {pc.dir}")
        record = run_cell(pc, quiet=quiet)
        records[name] = record
        if record["status"] != "done":
            bad.add(name)
            say(f"[{i}/{total}] {name}: FAILED ({record['error']}); log {record['log']}")
        else:
            say(f"[{i}/{total}] {name}: done in {record['seconds']:.0f} s")
    return records
