"""Training-input throughput per worker: vggnet's §3.1 pipeline against torchvision's.

Writes JPEGs of ImageNet's typical size (500x375, quality 90) rendered by the
synthetic generator to a temporary folder, then times, interleaved in rounds in
this one process with one thread (as one DataLoader worker runs):

    decode          Pillow decode + RGB conversion only (the floor)
    tv train        ImageFolder + Resize(256) + RandomCrop(224) + RandomHorizontalFlip + ToTensor + Normalize
    tv-v2 train     the same with torchvision.transforms.v2 (PILToTensor + ToDtype + Normalize)
    vgg train S     build_dataset + TrainPreset(scale=256), PCA lighting on
    vgg train jit   build_dataset + TrainPreset(scale=(256, 512)), PCA lighting on (the paper's multi-scale)
    tv eval         ImageFolder + Resize(256) + ToTensor + Normalize (whole image, dense evaluation)
    vgg eval        build_dataset + DenseEvalPreset(scale=256)
    ..., Pillow decode the same vgg pipelines with `vggnet.data.decode.DECODER = "pillow"`: every
                    file decoded by Pillow (what TorchCodec brings)
    ..., before     Pillow decode and every step through v2.Compose (`vggnet.data.transforms.DIRECT =
                    False`): the pipeline before TorchCodec and the direct kernels (new / before)
    decode TorchCodec  TorchCodec's decode_jpeg only (where it is installed)

and prints images/s with ratios to torchvision and to raw decoding. A second,
smaller set of 1600x1200 JPEGs (digital-camera size) shows the JPEG draft path.

    python benchmarks/data_pipeline.py                 # 1-2 minutes on one core
    python benchmarks/data_pipeline.py --images 100 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image


def write_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    from vggnet.data.synthetic import SyntheticShapes

    ds = SyntheticShapes(n, classes=10, seed=seed, image_size=(256, 512))
    for i in range(n):
        img, label, _ = ds.generate(i)
        d = folder / ds.classes[label]
        d.mkdir(parents=True, exist_ok=True)
        # rescaled to exactly the target size: the content is the generator's, the file is photo-sized
        img.resize(size, Image.Resampling.BICUBIC).save(d / f"{i:05d}.jpg", quality=90)


def pipelines(folder: Path) -> dict[str, Callable[[], Any]]:
    import torchvision.transforms as T
    import torchvision.transforms.v2 as T2
    from torchvision.datasets import ImageFolder

    from vggnet.data import DenseEvalPreset, Preprocessing, TrainPreset, build_dataset

    mean01, std01 = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    pca = {"eigval": [55.0, 4.8, 1.2], "eigvec": [[-0.58, -0.58, -0.57], [-0.81, 0.04, 0.59], [0.05, -0.82, 0.57]]}
    pre = Preprocessing.caffe()
    tv_train = ImageFolder(str(folder), T.Compose([T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip(),
                                                   T.ToTensor(), T.Normalize(mean01, std01)]))
    tv2_train = ImageFolder(str(folder), T2.Compose([T2.Resize(256), T2.RandomCrop(224), T2.RandomHorizontalFlip(),
                                                     T2.PILToTensor(), T2.ToDtype(torch.float32, scale=True),
                                                     T2.Normalize(mean01, std01)]))
    vgg_fixed = build_dataset(folder, TrainPreset(crop_size=224, scale=256, preprocessing=pre, pca=pca))
    vgg_jitter = build_dataset(folder, TrainPreset(crop_size=224, scale=(256, 512), preprocessing=pre, pca=pca))
    tv_eval = ImageFolder(str(folder), T.Compose([T.Resize(256), T.ToTensor(), T.Normalize(mean01, std01)]))
    vgg_eval = build_dataset(folder, DenseEvalPreset(scale=256, preprocessing=pre), strict=True)
    paths = [p for p, _ in vgg_fixed.samples]

    def run(ds: Any) -> Callable[[], Any]:
        return lambda: [ds[i] for i in range(len(ds))]

    def variant(ds: Any, *, compose: bool) -> Callable[[], Any]:
        """The same pipeline with Pillow decoding every file; with `compose`, also every step through
        v2.Compose (vggnet before TorchCodec and the direct kernels)."""
        from vggnet.data import decode as decoders
        from vggnet.data import transforms

        def go() -> Any:
            decoders.DECODER = "pillow"
            transforms.DIRECT = not compose
            try:
                return [ds[i] for i in range(len(ds))]
            finally:
                decoders.DECODER = "auto"
                transforms.DIRECT = True
        return go

    def decode() -> Any:
        out = []
        for p in paths:
            with Image.open(p) as img:
                out.append(img.convert("RGB"))
        return out

    def decode_torchcodec() -> Any:
        from torchcodec.decoders import decode_jpeg

        return [decode_jpeg(p) for p in paths]

    out = {"decode": decode, "tv train": run(tv_train), "tv-v2 train": run(tv2_train),
           "vgg train S": run(vgg_fixed), "vgg train S, Pillow decode": variant(vgg_fixed, compose=False),
           "vgg train S, before": variant(vgg_fixed, compose=True),
           "vgg train jit": run(vgg_jitter), "tv eval": run(tv_eval), "vgg eval": run(vgg_eval),
           "vgg eval, Pillow decode": variant(vgg_eval, compose=False),
           "vgg eval, before": variant(vgg_eval, compose=True)}
    from vggnet.data.decode import torchcodec_available

    if torchcodec_available():
        out["decode TorchCodec"] = decode_torchcodec
    return out


def measure(folder: Path, n: int, rounds: int) -> dict[str, float]:
    fns = pipelines(folder)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up: imports, page cache, first-call costs
        fn()
    for r in range(rounds):
        # interleaved, in a rotating order so no pipeline always runs first
        names = list(fns)
        names = names[r % len(names):] + names[:r % len(names)]
        for k in names:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: n / statistics.median(v) for k, v in times.items()}


def report(title: str, rates: dict[str, float]) -> list[str]:
    lines = [f"### {title}", "", "| pipeline | images/s | vs torchvision | time vs decode |", "|---|---:|---:|---:|"]
    for k, v in rates.items():
        ref = rates["tv eval"] if "eval" in k else rates["tv train"]
        vs_tv = "" if k == "decode" else f"{v / ref:.2f}x"
        lines.append(f"| {k} | {v:.0f} | {vs_tv} | {rates['decode'] / v:.2f}x |")
    lines.append("")
    for k in ("vgg train S", "vgg eval"):
        lines.append(f"{k}: {rates[k] / rates[k + ', before']:.2f}x the pipeline before (Pillow decode, v2.Compose); "
                     f"{rates[k] / rates[k + ', Pillow decode']:.2f}x the same pipeline decoding with Pillow")
    return lines


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="500x375 JPEGs (default: %(default)s)")
    parser.add_argument("--large", type=int, default=40, help="1600x1200 JPEGs (default: %(default)s; 0 skips)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, median reported (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, one DataLoader worker)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import PIL
    import torchvision

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}, "
          f"numpy {np.__version__}, python {sys.version.split()[0]}, {args.threads} thread(s)")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores, load average {os.getloadavg()[0]:.2f} "
          f"(absolute rates move with load; the ratios, timed interleaved, much less)")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sets = [("500x375", args.images, (500, 375))]
        if args.large:
            sets.append(("1600x1200", args.large, (1600, 1200)))
        for name, n, size in sets:
            folder = Path(tmp) / name
            write_images(folder, n, size)
            rates = measure(folder, n, args.rounds)
            results[name] = rates
            print()
            print("\n".join(report(f"{n} JPEGs of {name}, median of {args.rounds} rounds", rates)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
