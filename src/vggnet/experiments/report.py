"""A grid's report: the paper's table with our numbers beside the paper's, and its plots.

Written to `RUN/reports/<grid>/`: `report.md` (the table as printed), `report.json`
(every number, unrounded, with each cell's status, directory and log),
`report.csv` (one line per row of the table), and the plots the grid asks for:
`depth.png` (top-1 error against weight layers, A/B/D/E, one line per training
scale), `test_scale.png` (error against test scale Q, from the per-Q numbers of
each evaluation) and `methods.png` (dense / multi-crop / both bars). Every file is
stamped with the environment: torch and torchvision versions, device, date, git
commit.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from vggnet.experiments.grid import PAPER_CROP, Row
from vggnet.experiments.runner import Plan, PlannedCell, cell_status, grid_px, read_json, write_json

__all__ = ["environment", "build_report", "write_report", "format_table", "METRIC_LABELS", "PIXEL_COLUMNS",
           "ran_labels", "label", "row_stds", "std_metrics"]

METRIC_LABELS = {"top1_error": "top-1 err (%)", "top5_error": "top-5 err (%)",
                 "localisation_error": "loc. err (%)", "mAP": "mAP (%)",
                 "mean_class_accuracy": "mean class acc (%)", "accuracy": "acc (%)"}

#: table columns whose labels hold pixel sizes (S, Q) written at the paper's 224 crop: the report shows
#: the sizes that ran (every 3-digit number x crop / 224, as the runner scales them) with the paper's beside
PIXEL_COLUMNS = ("train S", "test Q", "combined ConvNet models")

#: initialisation schemes by the names a reader of the paper knows (§3.1)
INIT_LABELS = {"gaussian": "scratch, Gaussian", "glorot": "scratch, Glorot", "kaiming": "scratch, Kaiming"}

#: weight layers of each configuration (Table 1), the x axis of the depth plot
DEPTH = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19, "B-5x5": 8}


def environment() -> dict[str, Any]:
    """What produced the numbers: versions, device, date, git commit."""
    import torch
    import torchvision

    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    else:
        device = f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    commit = None
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            commit = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(), "device": device,
            "platform": platform.platform(), "git_commit": commit}


# --------------------------------------------------------------------------- numbers


def _cell_result(plan: Plan, name: str) -> dict[str, Any] | None:
    pc = plan.cells.get(name)
    if pc is None:
        return None
    return read_json(pc.result_file) if pc.cell.kind not in ("train", "localize-train") else None


def _find(obj: Any, key: str) -> Any:
    """The first value under `key`, searching the top level first, then nested objects."""
    if isinstance(obj, Mapping):
        if key in obj and isinstance(obj[key], (int, float)):
            return obj[key]
        for v in obj.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def row_numbers(plan: Plan, row: Row) -> dict[str, float | None]:
    """Our numbers for one row, from the cell's own result file."""
    result = _cell_result(plan, row.cell)
    if result is None:
        return {m: None for m in plan.grid.metrics}
    kind = plan.cells[row.cell].cell.kind
    if kind in ("eval", "fuse"):
        if row.method:
            if result.get("fusion"):
                source = result["fusion"].get(row.method)
            else:
                source = (result["nets"][0]["results"].get(row.method) or {}).get("all")
        else:
            source = result.get("overall")
        # a metric may be null: top-5 error with 5 classes or fewer is "n/a"
        return {m: (float(source[m]) if source and source.get(m) is not None else None) for m in plan.grid.metrics}
    out: dict[str, float | None] = {}
    for m in plan.grid.metrics:
        value = _find(result, m)
        if value is not None and m in ("mAP", "mean_class_accuracy", "accuracy") and value <= 1.0:
            value = 100.0 * value  # fractions to percent, the paper's unit
        out[m] = None if value is None else float(value)
    return out


def row_stds(plan: Plan, row: Row) -> dict[str, float]:
    """The standard deviation over random splits of each metric that has one (`<metric>_std`
    in the cell's result: `vgg transfer --splits N`), in the unit of `row_numbers`."""
    result = _cell_result(plan, row.cell) if row.cell in plan.cells else None
    if result is None or plan.cells[row.cell].cell.kind in ("eval", "fuse"):
        return {}
    out = {}
    for m in plan.grid.metrics:
        std, value = _find(result, f"{m}_std"), _find(result, m)
        if std is None:
            continue
        fraction = value is not None and m in ("mAP", "mean_class_accuracy", "accuracy") and value <= 1.0
        out[m] = float(std) * (100.0 if fraction else 1.0)  # the mean's unit (a fraction's std is one too)
    return out


def per_scale_numbers(plan: Plan, name: str) -> dict[str, dict[int, float]]:
    """For an eval cell: method -> {Q: top-1 error} (each test scale alone)."""
    result = _cell_result(plan, name)
    if not result or plan.cells[name].cell.kind != "eval" or len(result.get("nets", [])) != 1:
        return {}
    out: dict[str, dict[int, float]] = {}
    for method, by_q in result["nets"][0]["results"].items():
        out[method] = {int(q): float(v["top1_error"]) for q, v in by_q.items() if q != "all"}
    return out


def _sources(plan: Plan, pc: PlannedCell) -> list[PlannedCell]:
    """The training cells whose nets a cell evaluates (through fusions and evaluations)."""
    by_hash = {c.hash: c for c in plan.cells.values()}
    if pc.cell.kind in ("train", "localize-train"):
        return [pc]
    out: list[PlannedCell] = []
    for h in [*pc.settings.get("nets", []), *pc.settings.get("evals", [])]:
        if h in by_hash:
            out += [c for c in _sources(plan, by_hash[h]) if c not in out]
    return out


def _init_label(plan: Plan, pc: PlannedCell) -> str:
    """How a training cell's net was initialised, as it ran: a scheme, or the cell it started from."""
    train = pc.settings.get("train", {})
    init = str(train.get("init", ""))
    if init.startswith("from:cell:"):
        source = next((c for c in plan.cells.values() if c.hash == init[len("from:cell:"):]), None)
        net = source.settings.get("train", {}).get("model", source.name) if source is not None else "a cell"
        rest = str(train.get("init_rest", "gaussian"))  # the layers the source net does not give
        return f"from {net}" + (f", rest {rest.capitalize()}" if rest != "gaussian" else "")
    return INIT_LABELS.get(init, init)


def ran_labels(plan: Plan, row: Row) -> dict[str, str]:
    """A row's labels as they ran: pixel columns at this grid's crop, the init column from the training
    cells' settings. Columns that say nothing the run changes are returned as written."""
    import re

    labels = {c: str(v) for c, v in row.labels.items()}
    pc = plan.cells.get(row.cell)
    for column in PIXEL_COLUMNS:
        if column in labels:
            labels[column] = re.sub(r"\d{3,}", lambda m: str(grid_px(int(m.group()), plan.factor)), labels[column])
    if pc is None:
        return labels
    scales = pc.settings.get("test_scales")
    if "test Q" in labels and scales and re.fullmatch(r"[\d,/\s]+", labels["test Q"]):
        # what the evaluation ran (sizes that met are one); one list per net: each net's, joined by " / "
        per_net = scales if isinstance(scales[0], list) else [scales]
        labels["test Q"] = " / ".join(",".join(map(str, qs)) for qs in per_net)
    if "init" in labels:
        inits = list(dict.fromkeys(_init_label(plan, c) for c in _sources(plan, pc)))
        if inits and not _words(" / ".join(inits)) <= _words(labels["init"]):  # the grid's says less: ours
            labels["init"] = " / ".join(inits)
    return labels


def _words(text: str) -> set[str]:
    import re

    return set(re.findall(r"[\w-]+", text.lower()))


def build_report(plan: Plan, records: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    grid = plan.grid
    records = dict(records or {})
    cells: dict[str, Any] = {}
    for name, pc in plan.cells.items():
        record = records.get(name) or read_json(pc.dir / "cell.json") or {}
        status = record.get("status") if record.get("status") in ("failed", "skipped") else cell_status(pc)
        cells[name] = {"kind": pc.cell.kind, "status": status, "hash": pc.hash, "dir": str(pc.dir),
                       "seconds": record.get("seconds"), "command": "vgg " + " ".join(pc.argv)}
        if status in ("failed", "skipped"):
            cells[name]["error"] = record.get("error")
            cells[name]["log"] = record.get("log") or str(pc.dir / "log.txt")
        if pc.cell.kind in ("train", "localize-train") and status == "done":
            cells[name]["training"] = _training_summary(pc.run_dir)
    rows = []
    for row in grid.rows:
        status = cells[row.cell]["status"] if row.cell in cells else "not run"
        ran = ran_labels(plan, row)
        rows.append({**ran, "cell": row.cell, "method": row.method, "status": status,
                     "paper_labels": {c: str(v) for c, v in row.labels.items() if str(v) != ran.get(c)},
                     "ours": row_numbers(plan, row) if row.cell in plan.cells else {m: None for m in grid.metrics},
                     "ours_std": row_stds(plan, row),
                     "paper": row.paper, "note": row.note})
    return {"grid": grid.name, "title": grid.title, "paper_source": grid.paper_source,
            "description": grid.description, "columns": grid.columns, "metrics": grid.metrics,
            "data": plan.data, "scale_factor": plan.factor,
            "overrides": {"train": {**plan.overrides.train, **({"init_scheme": plan.overrides.init_scheme}
                                                             if plan.overrides.init_scheme else {})},
                          "execution": plan.overrides.execution},
            "environment": environment(), "rows": rows, "cells": cells}


def _training_summary(run_dir: Path) -> dict[str, Any]:
    """Epochs and best validation numbers from metrics.csv (one-scale dense validation, no flip)."""
    path = run_dir / "metrics.csv"
    try:
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
    except OSError:
        return {}
    if not rows:
        return {}
    errs = [float(r["val_top1_error"]) for r in rows if r.get("val_top1_error") not in (None, "")]
    secs = [float(r["epoch_time_s"]) for r in rows if r.get("epoch_time_s") not in (None, "")]
    return {"epochs": len(rows), "best_val_top1_error": min(errs) if errs else None,
            "train_seconds": round(sum(secs), 1) if secs else None}


# --------------------------------------------------------------------------- table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:.2f}"
    return str(value)


def label(row: Mapping[str, Any], column: str) -> str:
    """A row's label as it ran, with the grid's (the paper's) beside it where they differ:
    `37 (paper 256)`, `Glorot (grid: scratch)`."""
    ran, paper = str(row.get(column, "")), row.get("paper_labels", {}).get(column)
    if paper is None or len(paper) > 40:  # a long label (Table 6's combinations): the paper's is in the CSV
        return ran
    if column not in PIXEL_COLUMNS and _words(paper) <= _words(ran):
        return ran  # the grid's label said less ("scratch"), not something else
    return f"{ran} (paper {paper})" if column in PIXEL_COLUMNS else f"{ran} (grid: {paper})"


def _with_std(text: str, std: Any, *, paper: bool = False) -> str:
    """`91.23 ± 0.45` (ours, two decimals), `91.8 ± 1.0` (the paper's, as it prints it)."""
    if std is None or text == "-":
        return text
    return f"{text} ± {std}" if paper else f"{text} ± {std:.2f}"


def std_metrics(report: Mapping[str, Any]) -> list[str]:
    """The metrics some row gives as mean ± std over splits (ours, or the paper's `<metric>_std`)."""
    return [m for m in report["metrics"]
            if any(r.get("ours_std", {}).get(m) is not None or r["paper"].get(f"{m}_std") is not None
                   for r in report["rows"])]


def format_table(report: Mapping[str, Any]) -> str:
    """The paper's layout: its columns, then for each metric ours and the paper's side by side
    (`mean ± std` where the number is a mean over random splits, as the paper's Caltech rows)."""
    head = list(report["columns"])
    for m in report["metrics"]:
        name = METRIC_LABELS.get(m, m)
        head += [f"ours {name}", f"paper {name}"]
    head.append("status")
    body = []
    for r in report["rows"]:
        line = [label(r, c) for c in report["columns"]]
        for m in report["metrics"]:
            paper = r["paper"].get(m)
            line += [_with_std(_fmt(r["ours"].get(m)), r.get("ours_std", {}).get(m)),   # as the paper prints it
                     "-" if paper is None else _with_std(str(paper), r["paper"].get(f"{m}_std"), paper=True)]
        line.append(r["status"])
        body.append(line)
    from vggnet.classification.results import markdown_table

    return markdown_table(head, body)


def to_markdown(report: Mapping[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# {report['title']}", ""]
    if report.get("description"):
        lines += [report["description"].strip(), ""]
    lines += [f"Ours: `{report['data']}`, pixel sizes x {report['scale_factor']:g} of the paper's; training "
              f"overrides {json.dumps(report['overrides']['train']) or '{}'}. "
              f"Paper: {report['paper_source']} — the paper's numbers, not ours.", "",
              format_table(report), ""]
    if std_metrics(report):
        lines += ["`mean ± std`: the mean and the standard deviation over the random splits.", ""]
    notes = [f"- {r['cell']}: {r['note']}" for r in report["rows"] if r.get("note")]
    if notes:
        lines += ["Notes:", *notes, ""]
    failed = {n: c for n, c in report["cells"].items() if c["status"] in ("failed", "skipped")}
    if failed:
        lines += ["Failed cells:", *[f"- {n} ({c['status']}): {c.get('error')} — log `{c.get('log')}`"
                                     for n, c in failed.items()], ""]
    trained = {n: c["training"] for n, c in report["cells"].items() if c.get("training")}
    if trained:
        lines += ["Training runs:", "", "| cell | epochs | best val top-1 err (%, one scale, no flip) | time (s) |",
                  "|---|---|---|---|"]
        lines += [f"| {n} | {t.get('epochs')} | {_fmt(t.get('best_val_top1_error'))} | {_fmt(t.get('train_seconds'))} |"
                  for n, t in trained.items()]
        lines.append("")
    lines += [f"Environment: torch {env['torch']}, torchvision {env['torchvision']}, Python {env['python']}, "
              f"{env['device']}; {env['date']}; git {env['git_commit'] or 'unknown'}."]
    return "\n".join(lines) + "\n"


def to_csv(report: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    metrics = report["metrics"]
    pixels = [c for c in report["columns"] if c in PIXEL_COLUMNS]
    stds = std_metrics(report)  # a mean over splits: its std in a column of its own
    w.writerow(list(report["columns"]) + [f"paper {c}" for c in pixels] + ["cell", "method", "status"]
               + [f"ours_{m}" for m in metrics] + [f"paper_{m}" for m in metrics]
               + [f"ours_{m}_std" for m in stds] + [f"paper_{m}_std" for m in stds])
    for r in report["rows"]:
        w.writerow([r.get(c, "") for c in report["columns"]]
                   + [r.get("paper_labels", {}).get(c, r.get(c, "")) for c in pixels]
                   + [r["cell"], r["method"] or "", r["status"]]
                   + ["" if r["ours"].get(m) is None else r["ours"][m] for m in metrics]
                   + ["" if r["paper"].get(m) is None else r["paper"][m] for m in metrics]
                   + ["" if r.get("ours_std", {}).get(m) is None else r["ours_std"][m] for m in stds]
                   + ["" if r["paper"].get(f"{m}_std") is None else r["paper"][f"{m}_std"] for m in stds])
    env = report["environment"]
    w.writerow([f"# torch {env['torch']} torchvision {env['torchvision']} {env['device']} {env['date']} "
                f"git {env['git_commit']}"])
    return buf.getvalue()


# --------------------------------------------------------------------------- plots


def _plots(plan: Plan, report: Mapping[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    written: list[str] = []
    rows = report["rows"]
    stamp = (f"{report['grid']}; ours: {Path(report['data']).name}, x{report['scale_factor']:g} pixels; "
             f"{report['environment']['date'][:10]}")

    def save(fig: Any, name: str) -> None:
        """Stamp the figure with the grid, data and date, write `out/name` and record it."""
        fig.text(0.01, 0.01, stamp, fontsize=6, color="gray")
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)

    if "depth" in plan.grid.plots:
        fig, ax = plt.subplots(figsize=(6, 4))
        series: dict[str, list[tuple[int, float, float | None]]] = {}
        for r in rows:
            net = r.get("net")
            if net not in ("A", "B", "D", "E") or r["ours"].get("top1_error") is None:
                continue
            series.setdefault(label(r, "train S"), []).append(
                (DEPTH[net], r["ours"]["top1_error"], r["paper"].get("top1_error")))
        for i, (s, pts) in enumerate(sorted(series.items())):
            pts.sort(key=lambda p: (p[0], p[1]))  # the paper's value may be None
            color = f"C{i}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=f"ours, train S={s}")
            paper = [(p[0], p[2]) for p in pts if p[2] is not None]
            if paper:
                ax.plot([p[0] for p in paper], [p[1] for p in paper], "x--", color=color, alpha=0.6,
                        label=f"paper, train S={s}")
        ax.set_xlabel("weight layers (A=11, B=13, D=16, E=19)")
        ax.set_ylabel("top-1 error (%)")
        ax.set_title("Top-1 error against depth", fontsize=10)
        ax.legend(fontsize=7)
        save(fig, "depth.png")
    if "test_scale" in plan.grid.plots:
        fig, ax = plt.subplots(figsize=(6, 4))
        seen = set()
        for i, r in enumerate(rows):
            if r["cell"] in seen:
                continue
            seen.add(r["cell"])
            per_q = per_scale_numbers(plan, r["cell"]).get("dense")
            if not per_q:
                continue
            qs = sorted(per_q)
            name = f"{r.get('net', r['cell'])}, S={label(r, 'train S') if 'train S' in r else '?'}"
            line, = ax.plot(qs, [per_q[q] for q in qs], "o-", label=name)
            all_q = r["ours"].get("top1_error")
            if all_q is not None and len(qs) > 1:
                ax.axhline(all_q, color=line.get_color(), ls=":", lw=1)
        ax.set_xlabel(f"test scale Q (pixels, as run: crop {round(PAPER_CROP * plan.factor)})")
        if plan.factor != 1:  # the paper's sizes beside ours: the same axis at the 224 crop
            top = ax.secondary_xaxis("top", functions=(lambda q: q / plan.factor, lambda q: q * plan.factor))
            top.set_xlabel(f"the paper's Q (crop {PAPER_CROP})", fontsize=8)
        ax.set_ylabel("top-1 error (%), dense")
        ax.set_title("Error against test scale (dotted: the scales averaged)", fontsize=10)
        ax.legend(fontsize=7)
        save(fig, "test_scale.png")
    if "methods" in plan.grid.plots:
        groups: dict[str, dict[str, tuple[float | None, float | None]]] = {}
        for r in rows:
            if r["ours"].get("top1_error") is None and r["paper"].get("top1_error") is None:
                continue
            groups.setdefault(str(r.get("net", r["cell"])), {})[str(r.get("method") or r.get("test method", ""))] = (
                r["ours"].get("top1_error"), r["paper"].get("top1_error"))
        methods = ["dense", "multi-crop", "both"]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.5), sharey=False)
        for ax, which, title in ((axes[0], 0, "ours"), (axes[1], 1, "paper (ILSVRC-2012 val)")):
            for j, m in enumerate(methods):
                xs = [i + (j - 1) * 0.27 for i in range(len(groups))]
                vals = [g.get(m, (None, None))[which] for g in groups.values()]
                ax.bar([x for x, v in zip(xs, vals) if v is not None], [v for v in vals if v is not None],
                       width=0.25, label=m)
            ax.set_xticks(range(len(groups)), list(groups))
            ax.set_title(title, fontsize=10)
            ax.set_ylabel("top-1 error (%)")
            vals = [v[which] for g in groups.values() for v in g.values() if v[which] is not None]
            if vals:
                lo, hi = min(vals), max(vals)
                ax.set_ylim(max(0.0, lo - max(1.0, hi - lo)), hi + max(0.5, (hi - lo) / 2))
        axes[0].legend(fontsize=7)
        save(fig, "methods.png")
    return written


def write_report(plan: Plan, records: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[dict[str, Any], Path]:
    """Write report.md / .json / .csv and the plots; returns the report and its folder."""
    from vggnet.checkpoint import atomic_write

    report = build_report(plan, records)
    out = plan.root / "reports" / plan.grid.name
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = _plots(plan, report, out)
    write_json(out / "report.json", report)
    md = to_markdown(report)
    atomic_write(out / "report.md", lambda f: f.write(md.encode("utf-8")))
    text = to_csv(report)
    atomic_write(out / "report.csv", lambda f: f.write(text.encode("utf-8")))
    return report, out
