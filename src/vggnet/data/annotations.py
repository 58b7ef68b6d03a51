"""Annotation files: ILSVRC synsets and devkit ground truth, PASCAL VOC XML boxes, Kaggle LOC_*_solution.csv, labels CSV.

Each reader names the file and the line or element that is wrong.
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vggnet.errors import DataError

__all__ = ["read_synsets", "read_voc_xml", "read_loc_solution", "read_labels_file", "read_text_file"]


def read_text_file(path: str | Path, what: str = "list file", encoding: str = "utf-8") -> str:
    """A text file the user gives (an image list, a class list, a labels file): a `DataError` naming
    the file and the byte when it is not UTF-8 or cannot be read."""
    path = Path(path)
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: this {what} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read this {what}: {exc.strerror or exc}") from None

_HEADER_WORDS = {"image", "images", "filename", "file", "path", "name", "imageid", "image_id", "id"}


def read_synsets(path: str | Path) -> list[str]:
    """The ILSVRC2012 devkit's synsets in ILSVRC2012_ID order (index 0 = ID 1).

    `path` is the devkit's `meta.mat` (or the devkit folder holding `data/meta.mat`),
    or a text file with one wnid per line, optionally followed by words
    (`n01440764 tench, Tinca tinca`). Note that Kaggle's `LOC_synset_mapping.txt`
    is in sorted-wnid order, not devkit order: use it with `LOC_*` files, not with
    the devkit's 1-based ground truth.
    """
    path = Path(path)
    if path.is_dir():
        for cand in (path / "data" / "meta.mat", path / "meta.mat"):
            if cand.is_file():
                path = cand
                break
        else:
            raise DataError(f"{path}: no data/meta.mat in this ILSVRC2012 devkit folder")
    if not path.is_file():
        raise DataError(f"{path}: synset list not found")
    if path.suffix == ".mat":
        try:
            from scipy.io import loadmat

            synsets = loadmat(str(path), squeeze_me=True)["synsets"]
            rows = [(int(s[0]), str(s[1]), int(s[4])) for s in synsets]  # ILSVRC2012_ID, WNID, num_children
        except Exception as exc:
            raise DataError(f"{path}: not an ILSVRC2012 devkit meta.mat ({type(exc).__name__}: {exc})") from None
        return [wnid for _, wnid, children in sorted(rows) if children == 0]
    wnids = []
    for n, line in enumerate(read_text_file(path, "synset list").splitlines(), 1):
        if line.strip():
            wnids.append(line.split()[0].rstrip(","))
    if not wnids:
        raise DataError(f"{path}: empty synset list")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: the synset list repeats names")
    return wnids


def _voc_box(obj: ET.Element, path: Path) -> tuple[str, list[float]]:
    name = (obj.findtext("name") or "").strip()
    if not name:  # an empty name would become a class of its own
        raise DataError(f"{path}: an <object> has no <name> (the class of its box)")
    bb = obj.find("bndbox")
    if bb is None:
        raise DataError(f"{path}: <object> {name!r} has no <bndbox>")
    try:
        xmin, ymin, xmax, ymax = (float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError as exc:
        raise DataError(f"{path}: <bndbox> of {name!r} is not numeric: {exc}") from None
    if not (xmin <= xmax and ymin <= ymax):
        raise DataError(f"{path}: <bndbox> of {name!r} has xmin > xmax or ymin > ymax "
                        f"({xmin}, {ymin}, {xmax}, {ymax})")
    # VOC/ILSVRC store 1-based inclusive pixel indices; continuous XYXY covers pixels xmin..xmax
    return name, [xmin - 1, ymin - 1, xmax, ymax]


def read_voc_xml(path: str | Path, *, difficult: bool = False) -> Any:
    """Boxes of one PASCAL VOC annotation: ((n, 4) float32 XYXY continuous pixels, names).

    With `difficult=True`, also the objects' `<difficult>` flags: (boxes, names,
    (n,) bool), as the VOC devkit reads them (a missing flag is 0).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{path}: not a readable PASCAL VOC XML file: {exc}") from None
    if root.tag != "annotation":
        raise DataError(f"{path}: expected a PASCAL VOC <annotation>, found <{root.tag}>")
    objects = list(root.iter("object"))
    parsed = [_voc_box(obj, path) for obj in objects]
    boxes = np.array([b for _, b in parsed], dtype=np.float32).reshape(-1, 4)
    if not difficult:
        return boxes, [n for n, _ in parsed]
    flags = np.array([(obj.findtext("difficult") or "0").strip() == "1" for obj in objects], dtype=bool)
    return boxes, [n for n, _ in parsed], flags


def read_loc_solution(path: str | Path) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Kaggle's `LOC_{train,val}_solution.csv`: ImageId -> (boxes (n, 4) XYXY, wnids).

    PredictionString holds `wnid xmin ymin xmax ymax` groups in ILSVRC's 1-based
    pixel indices (converted as VOC boxes are).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: LOC solution file not found")
    out: dict[str, tuple[np.ndarray, list[str]]] = {}
    import io

    with io.StringIO(read_text_file(path, "LOC solution file"), newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path}: expected Kaggle's header 'ImageId,PredictionString', got {header}")
        for line, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 2:
                raise DataError(f"{path}, line {line}: expected 'ImageId,PredictionString', got {row}")
            parts = row[1].split()
            if not parts or len(parts) % 5:
                raise DataError(f"{path}, line {line}: PredictionString must be groups of "
                                f"'wnid xmin ymin xmax ymax', got {row[1]!r}")
            names, boxes = [], []
            for k in range(0, len(parts), 5):
                try:
                    xmin, ymin, xmax, ymax = (float(v) for v in parts[k + 1:k + 5])
                except ValueError:
                    raise DataError(f"{path}, line {line}: non-numeric box in {row[1]!r}") from None
                names.append(parts[k])
                boxes.append([xmin - 1, ymin - 1, xmax, ymax])
            out[row[0].strip()] = (np.array(boxes, dtype=np.float32).reshape(-1, 4), names)
    return out


def read_labels_file(path: str | Path, synsets: str | Path | Sequence[str] | None = None) -> dict[str, str]:
    """Image key (file name, stem or relative path) -> class name, from any supported labels file.

    - Kaggle `LOC_*_solution.csv` (header `ImageId,PredictionString`): the first wnid.
    - CSV `image,label` (header optional).
    - ILSVRC2012 devkit ground truth: one 1-based ILSVRC2012_ID per line, line k
      for `ILSVRC2012_val_{k:08d}`; needs `synsets` (devkit order), found
      automatically as `meta.mat` beside the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    text = read_text_file(path, "labels file", encoding="utf-8-sig")
    lines = [ln.strip() for ln in text.splitlines()]
    content = [ln for ln in lines if ln]
    if not content:
        raise DataError(f"{path}: the labels file is empty")
    if content[0].replace(" ", "").startswith("ImageId,PredictionString"):
        return {k: names[0] for k, (_, names) in read_loc_solution(path).items()}
    if all(re.fullmatch(r"\d+", ln) for ln in content):
        return _read_devkit_ground_truth(path, lines, synsets)
    out: dict[str, str] = {}
    rows = list(csv.reader(text.splitlines()))
    for line, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        if line == 1 and row[0].strip().lower() in _HEADER_WORDS:
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{path}, line {line}: expected 'image,label', got {','.join(row)!r}")
        key = row[0].strip()
        if key in out and out[key] != row[1].strip():
            raise DataError(f"{path}, line {line}: {key!r} is labelled twice ({out[key]!r} and {row[1].strip()!r})")
        out[key] = row[1].strip()
    return out


def _read_devkit_ground_truth(path: Path, lines: list[str], synsets: Any) -> dict[str, str]:
    if synsets is None:
        for cand in (path.parent / "meta.mat", path.parent.parent / "data" / "meta.mat"):
            if cand.is_file():
                synsets = cand
                break
        else:
            raise DataError(f"{path}: holds 1-based ILSVRC2012 class indices and needs the devkit's synset "
                            f"list in ILSVRC2012_ID order (synsets=: meta.mat, or a text file of wnids); "
                            f"none found beside it")
    wnids = list(synsets) if isinstance(synsets, (list, tuple)) else read_synsets(synsets)
    out = {}
    for k, ln in enumerate(lines, 1):
        if not ln:
            continue
        idx = int(ln)
        if not 1 <= idx <= len(wnids):
            raise DataError(f"{path}, line {k}: class index {idx} is outside 1..{len(wnids)} of the synset list")
        out[f"ILSVRC2012_val_{k:08d}"] = wnids[idx - 1]
    return out
