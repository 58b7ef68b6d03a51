"""Metrics and results of an evaluation (§3.2 of the paper; the measures and tables of §4.1-4.4).

Metrics: top-1 / top-5 error (§4: the proportion of images whose label is not
the top, or not among the top 5, predicted classes), top-1 / top-5 accuracy and
per-class top-1 accuracy, from posteriors and labels.

Results: `EvalResult` holds the posteriors of one evaluation per net, method
(dense / multi-crop) and test scale Q, and combines them: multi-scale
(averaged over Q), "both" (dense and multi-crop averaged, Table 5) and the
fusion of several nets (their posteriors averaged, §4.4, Table 7); it writes the
paper-style table (`markdown_table`), the JSON and Markdown reports, the
confusion matrix and the posteriors file that `load_posteriors` reads back to
re-fuse nets without running any of them.

Nothing here runs a net: `vggnet.classification.evaluate` computes the posteriors (and
re-exports these names), `vggnet.classification.cli` (`vgg eval`) shows and saves the
reports. This module imports neither.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from vggnet.inference import distinct_names
from vggnet.errors import UserError

__all__ = [
    "csv_text",
    "topk_correct",
    "topk_errors",
    "per_class_accuracy",
    "compute_metrics",
    "markdown_table",
    "EvalResult",
    "load_posteriors",
]

# How each evaluation method (`vggnet.classification.evaluate.METHODS`) is named in tables and reports.
METHOD_LABELS = {"dense": "dense", "multi-crop": "multi-crop", "both": "dense & multi-crop",
                 "center": "centre crop"}
POSTERIORS_FORMAT = "vggnet.posteriors"


# --------------------------------------------------------------------------- metrics


def topk_correct(posteriors: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, torch.Tensor]:
    """For each k, a bool `(N,)`: is the label among the k highest posteriors.

    With fewer than k classes every image counts as correct at k (k is clipped).
    """
    if posteriors.dim() != 2 or labels.shape != posteriors.shape[:1]:
        raise ValueError(f"expected posteriors (N, classes) and labels (N,), got {tuple(posteriors.shape)} "
                         f"and {tuple(labels.shape)}")
    classes = posteriors.shape[1]
    kmax = min(max(ks), classes)
    top = posteriors.topk(kmax, dim=1).indices          # (N, kmax), best first
    hit = top == labels.to(top.device).view(-1, 1)      # (N, kmax)
    return {k: hit[:, :min(k, classes)].any(dim=1) for k in ks}


def topk_errors(posteriors: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k error in percent for each k: `{"top1_error": .., "top5_error": ..}`."""
    n = int(labels.numel())
    if n == 0:
        raise ValueError("topk_errors: no images")
    return {f"top{k}_error": 100.0 * (n - int(c.sum())) / n for k, c in topk_correct(posteriors, labels, ks).items()}


def per_class_accuracy(posteriors: torch.Tensor, labels: torch.Tensor) -> list[float | None]:
    """Top-1 accuracy in percent of each class (None for a class with no images)."""
    classes = posteriors.shape[1]
    correct = topk_correct(posteriors, labels, (1,))[1]
    labels = labels.to(correct.device)
    images = torch.bincount(labels, minlength=classes)
    hits = torch.bincount(labels[correct], minlength=classes)
    return [100.0 * int(h) / int(m) if int(m) else None for h, m in zip(hits, images)]


def compute_metrics(posteriors: torch.Tensor, labels: torch.Tensor, *, per_class: bool = False,
                    classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Top-1/top-5 error and accuracy (percent) and the number of images; with
    `per_class`, per-class top-1 accuracy (by class name) and their mean."""
    errors = topk_errors(posteriors, labels)
    out: dict[str, Any] = {
        "top1_error": errors["top1_error"], "top5_error": errors["top5_error"],
        "top1_accuracy": 100.0 - errors["top1_error"], "top5_accuracy": 100.0 - errors["top5_error"],
        "images": int(labels.numel()),
    }
    if per_class:
        accs = per_class_accuracy(posteriors, labels)
        names = list(classes) if classes is not None else [str(i) for i in range(len(accs))]
        out["per_class_accuracy"] = dict(zip(names, accs))
        present = [a for a in accs if a is not None]
        out["mean_class_accuracy"] = sum(present) / len(present)
    return out


# --------------------------------------------------------------------------- results


def _format_scale(scale: int | Sequence[int] | None) -> str:
    if scale is None:
        return "?"
    if isinstance(scale, int):
        return str(scale)
    lo, hi = scale
    return str(lo) if lo == hi else f"[{lo};{hi}]"  # the paper's notation for jittered S


def markdown_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table whose columns are padded to their widest cell (readable as plain text too)."""
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in body]
    return "\n".join(lines)


def csv_text(text: str) -> str:
    """A text cell a spreadsheet will not run: a leading = + - @ (or tab / carriage return) makes
    Excel, LibreOffice and Google Sheets read a formula (`=1+2`, `=HYPERLINK(...)`); a leading
    apostrophe keeps it text (OWASP's advice for CSV injection)."""
    text = str(text)
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@dataclass
class EvalResult:
    """Posteriors and metrics of one evaluation.

    `posteriors[(net, method, Q)]` is `(images, classes)` for net index `net`,
    method "dense" or "multi-crop" and test scale Q. Everything else (multi-scale,
    "both", fusion, the table) is computed from them, so a saved result can be
    re-fused without running any net (`save_posteriors` / `load_posteriors`).
    """

    classes: list[str]
    labels: torch.Tensor
    paths: list[str]
    nets: list[dict[str, Any]]
    methods: list[str]
    method: str
    flip: bool
    posteriors: dict[tuple[int, str, int], torch.Tensor]
    data: str | None = None

    def __post_init__(self) -> None:
        self._summarise()

    # -- combination

    def net_posterior(self, net: int, method: str) -> torch.Tensor:
        """Multi-scale posterior of one net (average over its test scales); "both" averages the methods."""
        if method == "both":
            return (self.net_posterior(net, "dense") + self.net_posterior(net, "multi-crop")) / 2
        scales = self.nets[net]["test_scales"]
        return torch.stack([self.posteriors[(net, method, q)] for q in scales]).mean(dim=0)

    def fused_posterior(self, method: str) -> torch.Tensor:
        """ConvNet fusion (§4.4): the average of the nets' posteriors."""
        return torch.stack([self.net_posterior(k, method) for k in range(len(self.nets))]).mean(dim=0)

    def final_posterior(self) -> torch.Tensor:
        """The posterior the overall result is computed from: requested method, all scales, all nets."""
        return self.fused_posterior(self.method)

    def _final_methods(self) -> list[str]:
        return self.methods + (["both"] if len(self.methods) == 2 else [])

    def _summarise(self) -> None:
        def pair(p: torch.Tensor) -> dict[str, float]:
            return topk_errors(p, self.labels)

        self.rows: list[dict[str, Any]] = []
        self.results: list[dict[str, dict[str, dict[str, float]]]] = []
        for k, net in enumerate(self.nets):
            res: dict[str, dict[str, dict[str, float]]] = {}
            s_text = _format_scale(net["train_scale"])
            all_q = ",".join(map(str, net["test_scales"]))
            for m in self.methods:
                res[m] = {}
                for q in net["test_scales"]:
                    res[m][str(q)] = pair(self.posteriors[(k, m, q)])
                    self.rows.append({"net": net["name"], "train_scale": s_text, "test_scale": str(q),
                                      "method": METHOD_LABELS[m], **res[m][str(q)]})
                res[m]["all"] = pair(self.net_posterior(k, m))
                if len(net["test_scales"]) > 1:
                    self.rows.append({"net": net["name"], "train_scale": s_text, "test_scale": all_q,
                                      "method": METHOD_LABELS[m], **res[m]["all"]})
            if "both" in self._final_methods():
                res["both"] = {"all": pair(self.net_posterior(k, "both"))}
                self.rows.append({"net": net["name"], "train_scale": s_text, "test_scale": all_q,
                                  "method": METHOD_LABELS["both"], **res["both"]["all"]})
            self.results.append(res)
        self.fusion: dict[str, dict[str, float]] | None = None
        if len(self.nets) > 1:
            self.fusion = {}
            name = "fusion " + " + ".join(n["name"] for n in self.nets)
            s_text = " / ".join(_format_scale(n["train_scale"]) for n in self.nets)
            q_text = " / ".join(",".join(map(str, n["test_scales"])) for n in self.nets)
            for m in self._final_methods():
                self.fusion[m] = pair(self.fused_posterior(m))
                self.rows.append({"net": name, "train_scale": s_text, "test_scale": q_text,
                                  "method": METHOD_LABELS[m], **self.fusion[m]})
        self.overall = {"method": self.method, "nets": len(self.nets),
                        **compute_metrics(self.final_posterior(), self.labels, per_class=True, classes=self.classes)}

    # -- reports

    @property
    def top5_applicable(self) -> bool:
        """With 5 classes or fewer every label is among the top 5: top-5 error is 0 by construction."""
        return len(self.classes) > 5

    def _top5(self, value: float) -> str:
        return f"{value:.2f}" if self.top5_applicable else "n/a"

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: top-1/top-5 error (percent) per net, method and scale
        ("all" = averaged over the net's scales), the fusion, and the overall result,
        each with its accuracy (100 - error). With 5 classes or fewer the top-5
        numbers are null (`top5_applicable` false): every label is in the top 5."""
        def shown(metrics: Any) -> Any:
            if isinstance(metrics, dict):
                out = {k: shown(v) for k, v in metrics.items()}
                if "top1_error" in out:
                    out.setdefault("top1_accuracy", 100.0 - out["top1_error"])
                    out.setdefault("top5_accuracy", None if out["top5_error"] is None else 100.0 - out["top5_error"])
                if not self.top5_applicable:
                    out.update({k: None for k in ("top5_error", "top5_accuracy") if k in out})
                return out
            return metrics

        return {
            "data": self.data,
            "images": int(self.labels.numel()),
            "classes": list(self.classes),
            "method": self.method,
            "flip": self.flip,
            "top5_applicable": self.top5_applicable,
            "nets": [{**net, "results": shown(res)} for net, res in zip(self.nets, self.results)],
            "fusion": shown(self.fusion),
            "overall": shown(self.overall),
            "rows": [shown(r) for r in self.rows],
        }

    def confusion_matrix(self) -> Any:
        """`(classes, classes)` counts of the overall posterior's top-1 (scikit-learn's
        `confusion_matrix`): row = true class, column = predicted class."""
        from sklearn.metrics import confusion_matrix

        predicted = self.final_posterior().argmax(dim=1)
        return confusion_matrix(self.labels.numpy(), predicted.numpy(), labels=list(range(len(self.classes))))

    def write_confusion_matrix(self, path: str | os.PathLike, *, max_plot_classes: int = 50) -> list[Path]:
        """Write the confusion matrix as CSV (`path`) and, with at most `max_plot_classes`
        classes, drawn as a PNG beside it (same name, .png). Returns the files written."""
        import csv
        import io

        from vggnet.checkpoint import atomic_write

        path = Path(path)
        matrix = self.confusion_matrix()
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["true \\ predicted", *map(csv_text, self.classes)])
        for name, row in zip(self.classes, matrix.tolist()):
            writer.writerow([csv_text(name), *row])
        written = [atomic_write(path, lambda f: f.write(buf.getvalue().encode("utf-8")))]
        if len(self.classes) <= max_plot_classes:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            from sklearn.metrics import ConfusionMatrixDisplay

            side = 3 + 0.35 * len(self.classes)
            fig = Figure(figsize=(side + 1, side), layout="constrained")
            FigureCanvasAgg(fig)  # no display needed
            ax = fig.subplots()
            ConfusionMatrixDisplay(matrix, display_labels=self.classes).plot(
                ax=ax, include_values=len(self.classes) <= 20, xticks_rotation="vertical", colorbar=True)
            ax.set_title(f"confusion matrix ({METHOD_LABELS[self.method]}, {int(self.labels.numel())} images)")
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=100)
            written.append(atomic_write(path.with_suffix(".png"), lambda f: f.write(png.getvalue())))
        return written

    def table(self) -> str:
        """The paper-style table (Markdown): net / train S / test Q / method / top-1 / top-5 error,
        and top-1 accuracy (100 - top-1 error). Top-5 is n/a with 5 classes or fewer."""
        head = ["net", "train S", "test Q", "method", "top-1 err (%)", "top-5 err (%)", "top-1 acc (%)"]
        body = [[r["net"], r["train_scale"], r["test_scale"], r["method"],
                 f"{r['top1_error']:.2f}", self._top5(r["top5_error"]), f"{100.0 - r['top1_error']:.2f}"]
                for r in self.rows]
        return markdown_table(head, body)

    def to_markdown(self, *, per_class: bool = True) -> str:
        o = self.overall
        lines = ["# Evaluation (§3.2)", ""]
        if self.data:
            lines.append(f"- data: `{self.data}`")
        lines += [f"- images: {o['images']}, classes: {len(self.classes)}",
                  f"- method: {self.method}; flip: {'on' if self.flip else 'off'}",
                  "- nets: " + "; ".join(f"{n['name']} ({n['checkpoint'] or 'in memory'})" for n in self.nets),
                  "", self.table(), "",
                  f"Overall ({METHOD_LABELS[self.method]}, {'fusion of ' if len(self.nets) > 1 else ''}"
                  f"{len(self.nets)} net{'s' if len(self.nets) > 1 else ''}): top-1 error {o['top1_error']:.2f}%, "
                  f"top-5 error {self._top5(o['top5_error'])}{'%' if self.top5_applicable else ''} "
                  f"(top-1 accuracy {o['top1_accuracy']:.2f}%, "
                  f"mean class accuracy {o['mean_class_accuracy']:.2f}%)."]
        if per_class:
            lines += ["", "## Per-class top-1 accuracy (recall: correct top-1 / images of the class)", "",
                      "| class | images | top-1 acc (%) |", "|---|---|---|"]
            counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
            for name, count in zip(self.classes, counts):
                acc = o["per_class_accuracy"][name]
                lines.append(f"| {name} | {count} | {'-' if acc is None else f'{acc:.2f}'} |")
        return "\n".join(lines) + "\n"

    def save_posteriors(self, path: str | os.PathLike) -> Path:
        """Write the per-image posteriors (plain tensors, `torch.load(weights_only=True)`-safe), atomically."""
        from vggnet.checkpoint import atomic_write

        blob = {
            "format": POSTERIORS_FORMAT, "version": 1,
            "classes": list(self.classes), "labels": self.labels.clone(), "paths": list(self.paths),
            "nets": [dict(n) for n in self.nets], "methods": list(self.methods), "method": self.method,
            "flip": self.flip, "data": self.data,
            "posteriors": {f"{k}/{m}/{q}": p.clone() for (k, m, q), p in self.posteriors.items()},
        }
        return atomic_write(path, lambda f: torch.save(blob, f))


def load_posteriors(paths: Sequence[str | os.PathLike], *, method: str | None = None) -> EvalResult:
    """Read one or more `save_posteriors` files and fuse their nets (no net is run).

    Every file must hold the same images in the same order with the same labels.
    """
    if not paths:
        raise UserError("--posteriors: give at least one file")
    nets: list[dict[str, Any]] = []
    posts: dict[tuple[int, str, int], torch.Tensor] = {}
    methods: list[str] | None = None
    first: dict[str, Any] = {}
    for path in paths:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"--posteriors {path}: no such file") from None
        except Exception as exc:  # damaged or foreign files raise many types
            raise UserError(f"--posteriors {path}: cannot be read ({type(exc).__name__}: {exc})") from None
        if not isinstance(blob, dict) or blob.get("format") != POSTERIORS_FORMAT:
            raise UserError(f"--posteriors {path}: not a posteriors file written by `vgg eval --save-posteriors`")
        if not first:
            first = blob
        elif (blob["classes"] != first["classes"] or blob["paths"] != first["paths"]
              or not torch.equal(blob["labels"], first["labels"])):
            raise UserError(f"--posteriors {path}: different images, labels or classes from {paths[0]}; "
                            f"fusion needs the same evaluation set")
        offset = len(nets)
        nets += [dict(n) for n in blob["nets"]]
        methods = [m for m in (methods if methods is not None else blob["methods"]) if m in blob["methods"]]
        for key, p in blob["posteriors"].items():
            k, m, q = key.split("/")
            posts[(int(k) + offset, m, int(q))] = p.float()
    assert methods is not None
    for net, name in zip(nets, distinct_names([n["name"].split("#")[0] for n in nets])):
        net["name"] = name
    if not methods:
        raise UserError("--posteriors: the files have no method in common (dense / multi-crop)")
    method = method or first["method"]
    available = methods + (["both"] if len(methods) == 2 else [])
    if method not in available:
        raise UserError(f"--method {method}: the posteriors files hold only {', '.join(methods)}")
    return EvalResult(classes=list(first["classes"]), labels=first["labels"], paths=list(first["paths"]),
                      nets=nets, methods=methods, method=method, flip=bool(first["flip"]), posteriors=posts,
                      data=first.get("data"))
