"""int8 ONNX for deployment: the crop classifier statically quantised with onnxruntime, checked for accuracy.

Not in the paper (which tests in fp32): a deployment step. `quantize_onnx`
exports the fp32 crop classifier (`export_onnx`), calibrates activation ranges
on a few hundred images of a folder, preprocessed exactly as the checkpoint
says (smallest side rescaled to the training scale S, centre crop, the
checkpoint's normalisation), and quantises with `onnxruntime.quantization.quantize_static`:
QDQ format, int8 weights per output channel, uint8 activations. It then
measures, on a labelled folder and on the same images in the same run:

- top-1 / top-5 accuracy of the int8 model against the fp32 ONNX model;
- images/s of the int8 model, the fp32 ONNX model and PyTorch fp32 (the
  preprocessed batches held in memory: decoding is not timed).

The file is written only if the top-1 accuracy dropped by at most `max_drop`
percentage points; otherwise `QuantizationRejected` (a `UserError`) says by how much.

    vgg export onnx --checkpoint CKPT --output net-int8.onnx --int8 --calibration DATA/train --val DATA/val --max-drop 1
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from vggnet.checkpoint import atomic_write, model_from_checkpoint
from vggnet.errors import DataError, UserError
from vggnet.interop.common import as_checkpoint

__all__ = ["quantize_onnx", "QuantizationReport", "QuantizationRejected", "crop_transform"]


class QuantizationRejected(UserError):
    """The int8 model lost more top-1 accuracy than allowed; nothing was written."""


@dataclass
class QuantizationReport:
    images: int                          # validation images
    calibration_images: int
    top1: dict[str, float]               # percent, "fp32" (ONNX) and "int8"
    top5: dict[str, float] | None     # None with 5 classes or fewer (n/a: every label is in the top 5)
    images_per_s: dict[str, float]       # "int8", "fp32" (ONNX), "pytorch_fp32"
    top1_drop: float                     # percentage points, fp32 - int8
    max_drop: float
    written: str | None = None           # the int8 file, or None when rejected
    settings: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        ips = self.images_per_s
        return [
            f"int8 check on {self.images} images ({self.calibration_images} calibration images): "
            f"top-1 {self.top1['int8']:.2f}% (fp32 ONNX {self.top1['fp32']:.2f}%, drop {self.top1_drop:+.2f} points, "
            f"allowed {self.max_drop:g}), "
            + (f"top-5 {self.top5['int8']:.2f}% (fp32 {self.top5['fp32']:.2f}%)" if self.top5 is not None
               else "top-5 n/a (5 classes or fewer)"),
            f"images/s: int8 ONNX {ips['int8']:.1f}, fp32 ONNX {ips['fp32']:.1f}, PyTorch fp32 {ips['pytorch_fp32']:.1f} "
            f"(int8 {ips['int8'] / ips['fp32']:.2f}x fp32 ONNX, {ips['int8'] / ips['pytorch_fp32']:.2f}x PyTorch; "
            f"{self.settings.get('threads')} threads)",
        ]


def crop_transform(ckpt: Mapping[str, Any]):
    """Image -> the checkpoint's centre-crop input: smallest side to S (its training scale, or the smallest
    of a jittered range; crop x 256/224 when unknown), centre crop, its normalisation. (3, crop, crop)."""
    from torchvision.transforms.v2 import functional as F

    from vggnet.data.transforms import DenseEvalPreset, Preprocessing
    from vggnet.inference import train_scale

    crop = int(ckpt["build"]["crop_size"])
    scale = train_scale(ckpt)
    s = scale[0] if scale else round(crop * 256 / 224)
    preset = DenseEvalPreset(scale=max(s, crop), preprocessing=Preprocessing.from_dict(ckpt["preprocessing"]))
    return lambda image: F.center_crop(preset(image), [crop, crop])


def _image_files(folder: Path) -> list[Path]:
    from vggnet.data.datasets import IMG_EXTENSIONS

    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(IMG_EXTENSIONS))


def _calibration_batches(folder: Path, transform: Any, count: int, batch: int) -> list[np.ndarray]:
    from vggnet.data.images import load_image

    files = _image_files(folder)
    if not files:
        raise DataError(f"--calibration {folder}: no image files in it (or its subfolders)")
    step = max(1, len(files) // count)  # evenly over the folder: every class, not the first one's images
    chosen = files[::step][:count]
    tensors = [transform(load_image(p, min_side=None)) for p in chosen]
    return [torch.stack(tensors[i:i + batch]).numpy() for i in range(0, len(tensors), batch)]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: get_next() -> {input: batch} or None at the end."""

    def __init__(self, batches: list[np.ndarray], input_name: str) -> None:
        self._batches, self._input = batches, input_name
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self._input: x}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def _validation(folder: Path, ckpt: Mapping[str, Any], transform: Any, limit: int | None,
                batch: int) -> tuple[list[np.ndarray], np.ndarray]:
    from vggnet.data.datasets import build_dataset

    ds = build_dataset(folder, transform, split="val", classes=list(ckpt["classes"]), strict=True)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise DataError(f"--val {folder}: no labelled images (class folders named as the checkpoint's classes)")
    step = max(1, len(ds) // n)
    items = [ds[i] for i in range(0, len(ds), step)][:n]
    x = [t for t, _ in items]
    labels = np.array([int(y) for _, y in items])
    return [torch.stack(x[i:i + batch]).numpy() for i in range(0, len(x), batch)], labels


def _topk(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    order = np.argsort(-scores, axis=1)
    top1 = float((order[:, 0] == labels).mean() * 100)
    top5 = float((order[:, :5] == labels[:, None]).any(axis=1).mean() * 100)
    return top1, top5


def _session(path: str, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # the same threads as PyTorch: a fair comparison
    options.inter_op_num_threads = 1
    # onnxruntime's idle threads spin by default: interleaved with PyTorch they would take its cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def quantize_onnx(
    ckpt: Mapping[str, Any] | str | os.PathLike,
    out: str | os.PathLike,
    calibration: str | os.PathLike,
    *,
    val: str | os.PathLike | None = None,
    calibration_images: int = 300,
    val_images: int | None = None,
    max_drop: float = 1.0,
    batch_size: int = 16,
    rounds: int = 3,
) -> QuantizationReport:
    """Write the int8 ONNX crop classifier to `out` (see the module docstring); `QuantizationRejected`
    when its top-1 accuracy on `val` (default: the calibration folder) drops by more than `max_drop` points."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from vggnet.interop.onnx import export_onnx

    if calibration_images < 1 or batch_size < 1 or rounds < 1:
        raise UserError(f"need --calibration-images, batch size and rounds >= 1; got {calibration_images}, "
                        f"{batch_size}, {rounds}")
    if not max_drop >= 0:
        raise UserError(f"--max-drop: expected percentage points >= 0, got {max_drop}")
    calibration, val = Path(calibration), Path(val) if val is not None else Path(calibration)
    for flag, folder in (("--calibration", calibration), ("--val", val)):
        if not folder.is_dir():
            raise UserError(f"{flag} {folder}: no such directory")
    ckpt = as_checkpoint(ckpt)
    transform = crop_transform(ckpt)
    cal_batches = _calibration_batches(calibration, transform, calibration_images, batch_size)
    val_batches, labels = _validation(val, ckpt, transform, val_images, batch_size)
    threads = torch.get_num_threads()
    # Without VNNI, x86's u8 x s8 multiply (vpmaddubsw) can saturate; 7-bit weights avoid it.
    reduce_range = not _vnni()
    with tempfile.TemporaryDirectory(prefix="vggnet-int8-") as tmp:
        fp32_path, int8_path = str(Path(tmp) / "fp32.onnx"), str(Path(tmp) / "int8.onnx")
        export_onnx(ckpt, fp32_path)
        input_name = onnx.load(fp32_path, load_external_data=False).graph.input[0].name
        # onnxruntime's recommended preparation: shapes inferred, constants folded (the exporter's Identity
        # nodes in front of shared bias tensors otherwise keep those biases out of quantisation)
        prepared = str(Path(tmp) / "prepared.onnx")
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, int8_path, _Reader(cal_batches, input_name), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range)
        sessions = {"fp32": _session(fp32_path, threads), "int8": _session(int8_path, threads)}
        model, _ = model_from_checkpoint(ckpt)
        model.eval()

        def run(kind: str, x: np.ndarray) -> np.ndarray:
            if kind == "pytorch_fp32":
                with torch.inference_mode():
                    return model(torch.from_numpy(x)).numpy()
            return sessions[kind].run(None, {input_name: x})[0]

        scores = {k: np.concatenate([run(k, x) for x in val_batches]) for k in ("fp32", "int8")}
        times: dict[str, list[float]] = {k: [] for k in ("int8", "fp32", "pytorch_fp32")}
        for _ in range(rounds):  # interleaved, so that load on a shared machine hits all three alike
            for kind in times:
                t0 = time.perf_counter()
                for x in val_batches:
                    run(kind, x)
                times[kind].append(time.perf_counter() - t0)
        n = len(labels)
        (t1f, t5f), (t1q, t5q) = _topk(scores["fp32"], labels), _topk(scores["int8"], labels)
        report = QuantizationReport(
            images=n, calibration_images=sum(len(b) for b in cal_batches), top1={"fp32": t1f, "int8": t1q},
            top5={"fp32": t5f, "int8": t5q} if scores["fp32"].shape[1] > 5 else None,
            images_per_s={k: n / statistics.median(v) for k, v in times.items()}, top1_drop=t1f - t1q,
            max_drop=max_drop,
            settings={"threads": threads, "format": "QDQ", "weights": "int8 per channel", "activations": "uint8",
                      "calibration": f"MinMax on {calibration}", "reduce_range": reduce_range, "rounds": rounds})
        if report.top1_drop > max_drop:
            raise QuantizationRejected(
                f"int8 top-1 accuracy on {val} dropped by {report.top1_drop:.2f} points ({t1f:.2f}% -> {t1q:.2f}%), "
                f"more than --max-drop {max_drop:g}; {out} was not written (calibrate on more or more typical "
                f"images with --calibration, or allow a larger --max-drop)")
        proto = onnx.load(int8_path)
    entry = proto.metadata_props.add()
    entry.key = "vggnet.quantization"
    entry.value = (f"static int8 (QDQ, per-channel int8 weights, uint8 activations), calibrated on "
                   f"{report.calibration_images} images; top-1 {t1q:.2f}% vs fp32 {t1f:.2f}% on {n} images")
    report.written = str(atomic_write(Path(out), lambda f: f.write(proto.SerializeToString())))
    return report


def _vnni() -> bool:
    try:
        return bool(torch.cpu._is_vnni_supported())
    except (AttributeError, RuntimeError):
        return False
