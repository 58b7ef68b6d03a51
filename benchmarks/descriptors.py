"""Appendix B descriptor throughput and SVM fit time, in one process.

Two ways to compute the same descriptors (dense penultimate map, global average,
flip-averaged, Q = 256, 384, 512 averaged, L2-normalised) of the same JPEG files:
  * ours: `vggnet.transfer.descriptors.DescriptorExtractor` — images grouped by rescaled size
    and run in batches with their flips (evaluation's `run_pass` bucketing);
  * a plain loop: one image at a time, each scale and each flip its own
    `features_map` call.
Both decode the files themselves, so the ratio is end to end. Then the time to
fit one-vs-rest `LinearSVC`s (C = 1) on 10,000 random-ish 4,096-d descriptors.

    python benchmarks/descriptors.py                        # CPU, a few minutes on 2 cores
    python benchmarks/descriptors.py --device cuda --width 1 --fc-width 4096 --images 64
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vggnet.data.transforms import DenseEvalPreset, Preprocessing
from vggnet.data.images import open_image
from vggnet.models import vgg
from vggnet.transfer.descriptors import DescriptorExtractor, ImageSet
from vggnet.transfer.svm import LinearSVMs
from vggnet.checkpoint import CAFFE_PREPROCESSING, make_checkpoint, save_checkpoint


def cpu_name() -> tuple[str, bool]:
    """(CPU model name, whether it has AVX512-BF16) from /proc/cpuinfo (Linux); platform's name elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", False
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    return name, "avx512_bf16" in text


def make_files(folder: Path, n: int, seed: int = 0) -> list[str]:
    """VOC/ImageNet-like JPEGs: 500x375 and 375x500 (the commonest sizes in both), smooth noise."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (500, 375) if i % 2 == 0 else (375, 500)
        small = rng.integers(0, 256, size=(h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


@torch.no_grad()
def plain_loop(model, paths: list[str], scales: list[int], pre: Preprocessing, device: torch.device) -> torch.Tensor:
    out = []
    for p in paths:
        per_q = []
        for q in scales:
            x = DenseEvalPreset(scale=q, preprocessing=pre)(open_image(p)).unsqueeze(0).to(device)
            a = model.features_map(x).mean(dim=(2, 3))
            b = model.features_map(x.flip(-1)).mean(dim=(2, 3))
            per_q.append((a + b) / 2)
        out.append(torch.stack(per_q).mean(0))
    return F.normalize(torch.cat(out).float().cpu(), dim=1)


def svm_fit_seconds(n: int, dim: int, classes: int, seed: int = 0) -> float:
    """Fit time of `classes` one-vs-rest SVMs on n random-ish dim-d descriptors (non-negative,
    sparse-ish like ReLU outputs, one mean direction per class, L2-normalised)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = np.maximum(rng.normal(size=(classes, dim)), 0).astype(np.float32)
    X = np.maximum(rng.normal(size=(n, dim)).astype(np.float32) + 0.5 * centres[labels], 0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = np.full((n, classes), -1, dtype=np.int8)
    Y[np.arange(n), labels] = 1
    t0 = time.perf_counter()
    LinearSVMs(1.0).fit(X, Y)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="D")
    p.add_argument("--width", type=float, default=0.25, help="conv width (default: %(default)s on CPU)")
    p.add_argument("--fc-width", type=int, default=1024)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--scales", default="256,384,512")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--svm-n", type=int, default=10000)
    p.add_argument("--svm-dim", type=int, default=4096)
    p.add_argument("--svm-classes", type=int, default=20, help="one-vs-rest SVMs (VOC: 20)")
    args = p.parse_args()
    scales = [int(s) for s in args.scales.split(",")]
    device = torch.device(args.device)
    name, bf16 = cpu_name()
    print(f"CPU: {name} ({torch.get_num_threads()} threads), avx512_bf16: {'yes' if bf16 else 'no'}; "
          f"torch {torch.__version__}; device {device}")
    torch.manual_seed(0)
    model = vgg(args.model, 20, width=args.width, fc_width=args.fc_width)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = save_checkpoint(folder / "net.pt", make_checkpoint(model, preprocessing=CAFFE_PREPROCESSING))
        paths = make_files(folder, args.images)
        images = ImageSet(paths, np.zeros(len(paths), dtype=np.int64), ["?"])
        ours = DescriptorExtractor([ckpt], scales=scales, aggregation="average", device=device,
                                   batch_size=args.batch_size, workers=args.workers)
        net = ours.nets[0].model
        pre = Preprocessing.from_dict(CAFFE_PREPROCESSING)
        ours.compute(images, [0, 1])  # warm-up (allocator, oneDNN primitives)
        times = {"ours": [], "plain": []}
        for _ in range(2):  # interleaved rounds: load on a shared machine hits both alike
            t0 = time.perf_counter()
            a = ours.compute(images)
            times["ours"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b = plain_loop(net, paths, scales, pre, device)
            times["plain"].append(time.perf_counter() - t0)
        err = float((a - b).abs().max())
    best = {k: min(v) for k, v in times.items()}
    print(f"descriptors of {args.images} images (500x375 / 375x500), {args.model} width {args.width:g} "
          f"fc {args.fc_width}, Q = {', '.join(map(str, scales))} averaged, with flips:")
    print(f"  ours (bucketed batches of {args.batch_size}): {args.images / best['ours']:.2f} images/s")
    print(f"  plain loop (one image, one scale, one flip per call): {args.images / best['plain']:.2f} images/s")
    print(f"  ratio ours / plain: {best['plain'] / best['ours']:.2f}x (max |difference| {err:.1e})")
    seconds = svm_fit_seconds(args.svm_n, args.svm_dim, args.svm_classes)
    print(f"SVM fit: {args.svm_classes} one-vs-rest LinearSVC (C=1) on {args.svm_n} x {args.svm_dim} descriptors: "
          f"{seconds:.1f} s ({seconds / args.svm_classes:.2f} s per class)")


if __name__ == "__main__":
    main()
