"""Experiment grids: the paper's tables (3-6, §4.1, 8-9, 11-12 of Appendix B) as data.

A grid is a YAML file in `configs/experiments/`. Its *cells* are the runs that
produce the table: training runs (`vgg train`), evaluations (`vgg eval`), fusions
of evaluations (`vgg eval --posteriors`), localisation runs (`vgg localize`) and
transfer runs (`vgg transfer`). Its *rows* are the table's lines, each naming the
cell (and, for an evaluation of both methods, the method) that gives its number,
with the paper's own number beside it.

    name: table3
    title: "Table 3: ConvNet performance at a single test scale"
    paper_source: "ILSVRC-2012 validation set (the paper's Table 3)"
    defaults: {batch_size: 256, lr: 0.01, ...}       # every training cell (vgg train settings)
    cells:
      A-256:    {kind: train, settings: {model: A, scale: 256, init: gaussian}}
      B-256:    {kind: train, settings: {model: B, scale: 256, init: "from:A-256"}}   # §3.1: deeper nets from A
      B-256-Q:  {kind: eval, nets: [B-256], settings: {test_scales: [256], method: dense}}
    columns: [net, train S, test Q]
    rows:
      - {cell: B-256-Q, net: B, train S: "256", test Q: "256", paper: {top1_error: 28.7, top5_error: 9.9}}

`init: from:CELL` makes a training cell start from another cell's `best.pt`: the
paper's chain (A first, deeper nets from A, S = 384 from S = 256, jittered S from
S = 384). Pixel sizes (S, Q) are written at the paper's 224-pixel crop; a grid run
at another `--crop-size C` multiplies every one of them by C / 224, so the grid is
the same experiment at another scale.

This module reads, checks and resolves grids; it runs nothing (see `runner`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from vggnet.errors import UserError
from vggnet.paths import inside

__all__ = ["GRID_DIR", "KINDS", "Cell", "Grid", "Row", "known_grids", "load_grid", "grid_path", "PAPER_CROP",
           "EXECUTION_SETTINGS", "needs_command", "digest"]

#: where the grids live (the repository's configs/experiments/)
GRID_DIR = Path(__file__).resolve().parents[3] / "configs" / "experiments"

#: the crop size the paper's pixel numbers (S, Q) are written for
PAPER_CROP = 224

#: cell kind -> the `vgg` command it runs
KINDS = {
    "train": "train",               # vgg train (§3.1)
    "eval": "eval",                 # vgg eval (§3.2): dense / multi-crop / both, one or several scales
    "fuse": "eval",                 # vgg eval --posteriors: several evaluations fused (§4.4)
    "localize-train": "localize",   # vgg localize train (Appendix A)
    "localize-eval": "localize",    # vgg localize eval --protocol central|full
    "transfer": "transfer",         # vgg transfer (Appendix B)
}

_GRID_KEYS = {"name", "title", "description", "paper_source", "needs", "defaults", "cells", "columns", "rows",
              "metrics", "plots"}
_CELL_KEYS = {
    "train": {"kind", "settings", "note"},
    "localize-train": {"kind", "settings", "note", "from"},
    "eval": {"kind", "nets", "settings", "note"},
    "fuse": {"kind", "evals", "settings", "note"},
    "localize-eval": {"kind", "nets", "classifiers", "settings", "note"},
    "transfer": {"kind", "nets", "settings", "note"},
}
_EVAL_SETTINGS = {"test_scales", "method", "flip", "grid", "batch_size", "workers", "device", "amp"}
_FUSE_SETTINGS = {"method"}
_LOCALIZE_EVAL_SETTINGS = {"protocol", "test_scales", "classifier_method", "classifier_scales", "workers",
                           "device"}
_TRANSFER_SETTINGS = {"test_scales", "aggregate", "device", "workers", "extra"}
_ROW_KEYS_FIXED = {"cell", "method", "paper", "note"}
_METRICS = {"top1_error", "top5_error", "localisation_error", "mAP", "mean_class_accuracy", "accuracy"}
_PLOTS = {"depth", "test_scale", "methods"}

#: settings that say how a run is executed, not what it computes: left out of the
#: cell's hash, so a cell is not rerun because it moved to another device or more workers
EXECUTION_SETTINGS = {"output_dir", "resume", "progress", "workers", "device", "log_every", "keep",
                      "checkpoint_every", "checkpoint_minutes", "val_batch_size", "batch_size_eval", "compile",
                      "channels_last", "micro_batch_size", "max_steps"}


@dataclass
class Cell:
    """One run of a grid: a training run or an evaluation, and the cells it needs."""

    name: str
    kind: str
    settings: dict[str, Any] = field(default_factory=dict)
    nets: list[str] = field(default_factory=list)          # eval / localize-eval / transfer: the trained cells
    evals: list[str] = field(default_factory=list)         # fuse: the evaluation cells whose posteriors it fuses
    classifiers: list[str] = field(default_factory=list)   # localize-eval (full protocol): classification cells
    source: str | None = None                              # localize-train: the classification cell it starts from
    note: str | None = None

    @property
    def command(self) -> str:
        return KINDS[self.kind]

    def needs(self) -> list[str]:
        """The cells this one needs, in the order they are named."""
        deps: list[str] = []
        init = self.settings.get("init")
        if isinstance(init, str) and init.startswith("from:") and not _looks_like_path(init[5:]):
            deps.append(init[5:])
        if self.source:
            deps.append(self.source)
        for name in self.nets + self.evals + self.classifiers:
            if name not in deps:
                deps.append(name)
        return deps


@dataclass
class Row:
    """A line of the table: labels for the grid's columns, the cell (and method) giving our number, the paper's."""

    cell: str
    labels: dict[str, str]
    method: str | None = None
    paper: dict[str, Any] = field(default_factory=dict)
    note: str | None = None


@dataclass
class Grid:
    name: str
    title: str
    path: Path
    cells: dict[str, Cell]
    rows: list[Row]
    columns: list[str]
    defaults: dict[str, Any] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: ["top1_error", "top5_error"])
    plots: list[str] = field(default_factory=list)
    paper_source: str = ""
    description: str = ""
    needs: list[str] = field(default_factory=list)       # vgg commands beyond train/eval (localize, transfer)

    def order(self) -> list[str]:
        """The cells in dependency order (a cell after everything it needs), stable in file order."""
        done: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                cycle = path[path.index(name):] + [name]
                raise UserError(f"{self.path}: cell {name!r} depends on itself through "
                                f"{' -> '.join(cycle)}; a grid must be acyclic")
            state[name] = "visiting"
            for dep in self.cells[name].needs():
                visit(dep, path + [name])
            state[name] = "done"
            done.append(name)

        for name in self.cells:
            visit(name, [])
        return done

    def dependants(self, name: str) -> list[str]:
        """Every cell that needs `name`, directly or not."""
        out: list[str] = []
        for other in self.order():
            if any(d == name or d in out for d in self.cells[other].needs()):
                out.append(other)
        return out


def _looks_like_path(text: str) -> bool:
    return "/" in text or text.endswith(".pt")


def known_grids(directory: Path | None = None) -> dict[str, Path]:
    """Grid name -> YAML file, from `configs/experiments/`."""
    if directory is None:
        # the repository's grids (an editable or source install), else ./configs/experiments
        directory = GRID_DIR if GRID_DIR.is_dir() else Path.cwd() / "configs" / "experiments"
    return {p.stem: p for p in sorted(directory.glob("*.yaml"))}


def grid_path(name: str) -> Path:
    """A grid by name (`table3`) or by file path; an unknown name lists the known ones."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    grids = known_grids()
    if name not in grids:
        raise UserError(f"unknown experiment grid {name!r}; known grids: {', '.join(grids) or '(none)'} "
                        f"(in {GRID_DIR}), or give the path of a grid YAML file")
    return grids[name]


def load_grid(name_or_path: str | Path) -> Grid:
    """Read and check a grid: unknown keys, unknown kinds, missing or cyclic dependencies are
    refused with an error naming the file and the cell."""
    from vggnet.arguments import load_config_file

    path = grid_path(str(name_or_path))
    try:
        raw = load_config_file(path)
    except UserError as exc:
        raise UserError(str(exc).replace("--config-file ", "grid ")) from None
    where = str(path)
    unknown = sorted(set(raw) - _GRID_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} at the top of the grid; "
                        f"known keys: {', '.join(sorted(_GRID_KEYS))}")
    cells_raw = raw.get("cells")
    if not isinstance(cells_raw, Mapping) or not cells_raw:
        raise UserError(f"{where}: a grid needs `cells:`, a mapping of cell names to cells")
    defaults = dict(raw.get("defaults") or {})
    _check_train_settings(defaults, f"{where}: defaults")
    cells: dict[str, Cell] = {}
    for name, spec in cells_raw.items():
        name = str(name)
        cells[name] = _parse_cell(name, spec, where)
    for cell in cells.values():
        for dep in cell.needs():
            if dep not in cells:
                raise UserError(f"{where}: cell {cell.name!r} needs {dep!r}, which is not a cell of this grid "
                                f"(cells: {', '.join(cells)})")
        _check_dependency_kinds(cell, cells, where)
    columns = [str(c) for c in raw.get("columns") or []]
    rows = [_parse_row(i, r, cells, columns, where) for i, r in enumerate(raw.get("rows") or [])]
    metrics = [str(m) for m in raw.get("metrics") or ["top1_error", "top5_error"]]
    bad = [m for m in metrics if m not in _METRICS]
    if bad:
        raise UserError(f"{where}: unknown metric(s) {', '.join(bad)}; known: {', '.join(sorted(_METRICS))}")
    plots = [str(p) for p in raw.get("plots") or []]
    bad = [p for p in plots if p not in _PLOTS]
    if bad:
        raise UserError(f"{where}: unknown plot(s) {', '.join(bad)}; known: {', '.join(sorted(_PLOTS))}")
    name = str(raw.get("name") or path.stem)
    inside(Path("reports"), name, what=f"{where}: name")  # the reports go to OUTPUT_DIR/reports/<name>/
    if len(Path(name).parts) != 1:
        raise UserError(f"{where}: name {name!r}: expected one folder name (letters, digits, - and _), not a path")
    grid = Grid(name=name, title=str(raw.get("title") or path.stem), path=path,
                cells=cells, rows=rows, columns=columns, defaults=defaults, metrics=metrics, plots=plots,
                paper_source=str(raw.get("paper_source") or ""), description=str(raw.get("description") or ""),
                needs=sorted({c.command for c in cells.values()} - {"train", "eval"}))
    grid.order()  # refuses a cycle, naming a cell on it
    return grid


def _parse_cell(name: str, spec: Any, where: str) -> Cell:
    if not isinstance(spec, Mapping):
        raise UserError(f"{where}: cell {name!r} must be a mapping (kind, settings, ...), got {spec!r}")
    kind = spec.get("kind", "train")
    if kind not in KINDS:
        raise UserError(f"{where}: cell {name!r}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    unknown = sorted(set(spec) - _CELL_KEYS[kind])
    if unknown:
        raise UserError(f"{where}: cell {name!r}: unknown key(s) {', '.join(map(repr, unknown))} for a {kind} cell; "
                        f"known keys: {', '.join(sorted(_CELL_KEYS[kind]))}")
    settings = dict(spec.get("settings") or {})
    context = f"{where}: cell {name!r}"
    if kind in ("train", "localize-train"):
        extra = {"head", "finetune"} if kind == "localize-train" else set()
        _check_train_settings({k: v for k, v in settings.items() if k not in extra}, context)
    else:
        allowed = {"eval": _EVAL_SETTINGS, "fuse": _FUSE_SETTINGS, "localize-eval": _LOCALIZE_EVAL_SETTINGS,
                   "transfer": _TRANSFER_SETTINGS}[kind]
        unknown = sorted(set(settings) - allowed)
        if unknown:
            raise UserError(f"{context}: unknown setting(s) {', '.join(map(repr, unknown))} for a {kind} cell; "
                            f"known: {', '.join(sorted(allowed))}")
    lists = {}
    for key in ("nets", "evals", "classifiers"):
        value = spec.get(key) or []
        if isinstance(value, str):
            value = [value]
        lists[key] = [str(v) for v in value]
    if kind in ("eval", "localize-eval", "transfer") and not lists["nets"]:
        raise UserError(f"{context}: a {kind} cell needs `nets:` (the cells whose nets it runs)")
    if kind == "fuse" and len(lists["evals"]) < 2:
        raise UserError(f"{context}: a fuse cell needs `evals:` naming at least two eval cells")
    source = spec.get("from")
    if kind == "localize-train" and not source:
        raise UserError(f"{context}: a localize-train cell needs `from:` (the classification cell it starts from)")
    return Cell(name=name, kind=kind, settings=settings, nets=lists["nets"], evals=lists["evals"],
                classifiers=lists["classifiers"], source=str(source) if source else None, note=spec.get("note"))


def _check_train_settings(settings: Mapping[str, Any], context: str) -> None:
    from dataclasses import fields

    from vggnet.engine.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"{context}: unknown training setting(s) {', '.join(map(repr, unknown))}; a training cell "
                        f"takes the settings of `vgg train` (e.g. model, scale, lr, init)")


def _check_dependency_kinds(cell: Cell, cells: Mapping[str, Cell], where: str) -> None:
    trained = ("train",)
    wants = {"eval": trained, "transfer": trained, "localize-eval": ("localize-train",)}
    for dep in cell.nets:
        ok = wants.get(cell.kind, trained)
        if cells[dep].kind not in ok:
            raise UserError(f"{where}: cell {cell.name!r}: `nets:` names {dep!r}, a {cells[dep].kind} cell; "
                            f"expected a {' or '.join(ok)} cell")
    for dep in cell.evals:
        if cells[dep].kind != "eval":
            raise UserError(f"{where}: cell {cell.name!r}: `evals:` names {dep!r}, a {cells[dep].kind} cell; "
                            f"expected an eval cell")
    for dep in cell.classifiers + ([cell.source] if cell.source else []):
        if cells[dep].kind != "train":
            raise UserError(f"{where}: cell {cell.name!r} names {dep!r} as a classification net, but it is a "
                            f"{cells[dep].kind} cell")


def _parse_row(i: int, spec: Any, cells: Mapping[str, Cell], columns: Sequence[str], where: str) -> Row:
    if not isinstance(spec, Mapping) or "cell" not in spec:
        raise UserError(f"{where}: row {i + 1} must be a mapping with `cell:` and the columns "
                        f"{', '.join(columns)}")
    cell = str(spec["cell"])
    if cell not in cells:
        raise UserError(f"{where}: row {i + 1} names cell {cell!r}, which is not in the grid")
    unknown = sorted(set(spec) - _ROW_KEYS_FIXED - set(columns))
    if unknown:
        raise UserError(f"{where}: row {i + 1} (cell {cell!r}): unknown key(s) {', '.join(map(repr, unknown))}; "
                        f"a row has cell, method, paper, note and the columns {', '.join(columns)}")
    paper = dict(spec.get("paper") or {})
    return Row(cell=cell, labels={c: str(spec.get(c, "")) for c in columns}, method=spec.get("method"),
               paper=paper, note=spec.get("note"))


def needs_command(command: str) -> str | None:
    """Why `vgg COMMAND` cannot run here, or None when it can."""
    from vggnet.cli import COMMANDS, load_command

    if command not in COMMANDS:
        return f"`vgg {command}` is not part of this version of vggnet"
    try:
        load_command(command)
    except UserError as exc:
        return str(exc)
    return None


def digest(payload: Any) -> str:
    """A stable hash of plain data (sorted keys): names a cell's cache directory."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
