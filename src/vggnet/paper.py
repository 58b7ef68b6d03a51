"""The paper's numbers, transcribed once (arXiv 1409.1556v6, Tables 3-12).

Every number the experiment grids (`configs/experiments/*.yaml`, their rows'
`paper:`) and the docs quote from the paper is one of these; `tests/test_paper.py`
checks both against this module. Errors and mAP / mean class recall in percent.
Torch-free, so reading it costs nothing.

Row labels use the grids' column names (`net`, `train S`, `test Q`, ...), so a grid
row is matched to its paper row by its labels.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["TABLES", "find", "numbers", "TRANSFER_PROTOCOLS", "VOC_SCALES", "VOC_SCALES_THREE"]


def _rows(columns: tuple[str, ...], *values: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [dict(zip(columns, v)) for v in values]


_T3 = ("net", "train S", "test Q", "top1_error", "top5_error")
_T4 = _T3
_T5 = ("net", "evaluation method", "top1_error", "top5_error")

TABLES: dict[str, list[dict[str, Any]]] = {
    # Table 3: single test scale, dense evaluation (ILSVRC-2012 validation)
    "table3": _rows(_T3,
                    ("A", "256", "256", 29.6, 10.4), ("A-LRN", "256", "256", 29.7, 10.5),
                    ("B", "256", "256", 28.7, 9.9),
                    ("C", "256", "256", 28.1, 9.4), ("C", "384", "384", 28.1, 9.3),
                    ("C", "[256;512]", "384", 27.3, 8.8),
                    ("D", "256", "256", 27.0, 8.8), ("D", "384", "384", 26.8, 8.7),
                    ("D", "[256;512]", "384", 25.6, 8.1),
                    ("E", "256", "256", 27.3, 9.0), ("E", "384", "384", 26.9, 8.7),
                    ("E", "[256;512]", "384", 25.5, 8.0)),
    # Table 4: multiple test scales, dense evaluation
    "table4": _rows(_T4,
                    ("B", "256", "224,256,288", 28.2, 9.6),
                    ("C", "256", "224,256,288", 27.7, 9.2), ("C", "384", "352,384,416", 27.8, 9.2),
                    ("C", "[256;512]", "256,384,512", 26.3, 8.2),
                    ("D", "256", "224,256,288", 26.6, 8.6), ("D", "384", "352,384,416", 26.5, 8.6),
                    ("D", "[256;512]", "256,384,512", 24.8, 7.5),
                    ("E", "256", "224,256,288", 26.9, 8.7), ("E", "384", "352,384,416", 26.7, 8.6),
                    ("E", "[256;512]", "256,384,512", 24.8, 7.5)),
    # Table 5: dense vs multi-crop (train S = [256;512], Q = {256, 384, 512})
    "table5": _rows(_T5,
                    ("D", "dense", 24.8, 7.5), ("D", "multi-crop", 24.6, 7.5),
                    ("D", "multi-crop & dense", 24.4, 7.2),
                    ("E", "dense", 24.8, 7.5), ("E", "multi-crop", 24.6, 7.4),
                    ("E", "multi-crop & dense", 24.4, 7.1)),
    # Table 6: multiple ConvNet fusion (val top-1, val top-5, test top-5; None: not given)
    "table6": _rows(("fusion", "top1_error", "top5_error", "test_top5_error"),
                    ("ILSVRC submission (7 nets)", 24.7, 7.5, 7.3),
                    ("D & E, dense", 24.0, 7.1, 7.0),
                    ("D & E, multi-crop", 23.9, 7.2, None),
                    ("D & E, multi-crop & dense", 23.7, 6.8, 6.8)),
    # Table 7: comparison with the state of the art, the paper's own rows
    "table7": _rows(("method", "top1_error", "top5_error", "test_top5_error"),
                    ("VGG (2 nets, multi-crop & dense eval.)", 23.7, 6.8, 6.8),
                    ("VGG (1 net, multi-crop & dense eval.)", 24.4, 7.1, 7.0),
                    ("VGG (ILSVRC submission, 7 nets, dense eval.)", 24.7, 7.5, 7.3)),
    # Table 8: protocol 1 (centre crop, ground-truth class), S = 384 ("the results with S = 256
    # exhibit the same behaviour"); the paper gives no SCR number with all layers fine-tuned
    "table8": _rows(("fine-tuned layers", "regression type", "localisation_error"),
                    ("1st and 2nd FC", "SCR", 36.4), ("1st and 2nd FC", "PCR", 34.3),
                    ("all", "PCR", 33.1)),
    # Table 9: full protocol, top-5 localisation error, validation (test in `test_error`); the
    # paper's last row reads "fusion: 256/256 and 384/352,384" (each net at its own Q)
    "table9": _rows(("train S", "test Q", "localisation_error", "test_error"),
                    ("256", "256", 29.5, None), ("384", "384", 28.2, 26.7),
                    ("384", "352,384", 27.5, None), ("256 / 384", "256 / 352,384", 26.9, 25.3)),
    # Table 10: localisation, comparison with the state of the art (ILSVRC test, top-5)
    "table10": _rows(("method", "localisation_error"), ("VGG", 25.3), ("GoogLeNet", 26.7),
                     ("OverFeat", 29.9), ("Krizhevsky et al.", 34.2)),
    # Table 11: transfer; VOC mAP, Caltech mean class recall (± std over 3 splits)
    "table11": _rows(("net", "dataset", "value", "std"),
                     ("D", "VOC-2007", 89.3, None), ("D", "VOC-2012", 89.0, None),
                     ("D", "Caltech-101", 91.8, 1.0), ("D", "Caltech-256", 85.0, 0.2),
                     ("E", "VOC-2007", 89.3, None), ("E", "VOC-2012", 89.0, None),
                     ("E", "Caltech-101", 92.3, 0.5), ("E", "Caltech-256", 85.1, 0.3),
                     ("D & E", "VOC-2007", 89.7, None), ("D & E", "VOC-2012", 89.3, None),
                     ("D & E", "Caltech-101", 92.7, 0.5), ("D & E", "Caltech-256", 86.2, 0.3)),
    # Table 12: VOC-2012 action classification, mAP (D & E descriptors stacked)
    "table12": _rows(("net", "setting", "mAP"),
                     ("D & E", "image only", 79.2), ("D & E", "image and bounding box", 84.0)),
}

#: Appendix B's VOC scales: "averaged over Q in {256, 384, 512, 640, 768}"; the paper
#: notes that {256, 384, 512} was 0.3 lower.
VOC_SCALES = (256, 384, 512, 640, 768)
VOC_SCALES_THREE = (256, 384, 512)

#: Appendix B's protocols (split sizes per class; 3 random splits for Caltech).
TRANSFER_PROTOCOLS: dict[str, dict[str, Any]] = {
    "Caltech-101": {"train_per_class": 30, "test_per_class": 50, "splits": 3, "aggregate": "stack",
                    "metric": "mean_class_accuracy"},
    "Caltech-256": {"train_per_class": 60, "test_per_class": None, "splits": 3, "aggregate": "stack",
                    "metric": "mean_class_accuracy"},
    "VOC-2007": {"train": "trainval", "test": "test", "aggregate": "average", "scales": VOC_SCALES,
                 "metric": "mAP"},
    "VOC-2012 action": {"train": "train", "test": "val", "aggregate": "average", "metric": "mAP"},
}


def find(table: str, **labels: Any) -> dict[str, Any]:
    """The one row of `table` whose labels are `labels` (a KeyError naming them otherwise)."""
    rows = [r for r in TABLES[table] if all(str(r.get(k)) == str(v) for k, v in labels.items())]
    if len(rows) != 1:
        raise KeyError(f"{table}: {len(rows)} rows match {labels}")
    return rows[0]


def numbers(tables: Mapping[str, Any] | None = None) -> set[float]:
    """Every number transcribed (of the named tables, or all), for checking quotations."""
    out: set[float] = set()
    for name, rows in TABLES.items():
        if tables is not None and name not in tables:
            continue
        for r in rows:
            out.update(float(v) for v in r.values() if isinstance(v, (int, float)) and not isinstance(v, bool))
    return out
