"""Cost of the paper's test protocols (§3.2) on the same images, in one process.

Three ways to classify an image with net D:
  * torchvision-style single centre crop: resize to 256, centre crop 224, one
    forward pass (`torchvision.models.vgg16`, full width, and ours at --width);
  * dense evaluation at three scales Q (default 256,384,512), each with its flip
    (and, for reference, without): `vggnet.classification.evaluate.dense_posterior` on the
    whole rescaled image;
  * multi-crop: 5x5 grid x 2 flips x 3 scales = 150 crops of 224.

Prints images/s, the cost ratio against the single crop, and the ratio of
multiply-accumulates counted from the layers (`count_macs`), which does not
depend on the machine. The paper's point (§3.2, Table 5): dense evaluation of
the whole image is far cheaper than many crops, because the overlapping crops
recompute the same convolutions.

The ratio depends on --width: at small widths the FC layers (fixed by
--fc-width), the per-call overheads and, on CPU, memory traffic weigh more. On a
CPU keep the width small; on a GPU use --width 1 --fc-width 4096 for the paper's net:

    python benchmarks/eval_cost.py                                   # CPU, ~2 min
    python benchmarks/eval_cost.py --device cuda --width 1 --fc-width 4096 --images 16
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torchvision
from PIL import Image

from vggnet.data.transforms import DenseEvalPreset, MultiCropEvalPreset, Preprocessing
from vggnet.inference import dense_posterior, multi_crop_posterior
from vggnet.models import count_macs, vgg


def make_images(n: int, seed: int = 0) -> list[Image.Image]:
    """ImageNet-like test images: 500x375 and 375x500 (the commonest ILSVRC sizes), smooth noise."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        w, h = (500, 375) if i % 2 == 0 else (375, 500)
        small = rng.integers(0, 256, size=(h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        images.append(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))
    return images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds for one call of `fn` (the whole image set): the best of `repeats`, after a warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=0.25, help="conv channel multiplier of our D (default: 0.25)")
    p.add_argument("--fc-width", type=int, default=1024, help="hidden FC width of our D (default: 1024)")
    p.add_argument("--scales", default="256,384,512", help="test scales Q (default: 256,384,512)")
    p.add_argument("--images", type=int, default=4, help="test images (default: 4)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs, best kept (default: 2)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="autocast to bfloat16 (default: off)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    scales = [int(q) for q in args.scales.split(",")]
    torch.manual_seed(0)
    pre = Preprocessing.caffe()
    ours = vgg("D", 1000, width=args.width, fc_width=args.fc_width).eval().to(device)
    tv = torchvision.models.vgg16().eval().to(device)   # random weights: only the cost matters
    images = make_images(args.images)

    # torchvision's classification preset, written out: resize 256, centre crop 224, normalise.
    centre = torchvision.transforms.v2.Compose([
        torchvision.transforms.v2.Resize(256, antialias=True), torchvision.transforms.v2.CenterCrop(224),
        torchvision.transforms.v2.PILToTensor(), torchvision.transforms.v2.ToDtype(torch.float32, scale=True),
        pre.normalize()])
    dense = [DenseEvalPreset(scale=q, preprocessing=pre) for q in scales]
    crops = [MultiCropEvalPreset(scale=q, crop_size=224, preprocessing=pre) for q in scales]

    # Inputs are prepared once, outside the timings (decoding and resizing cost
    # the same for every method); what is timed is the network work, batched as
    # vggnet.classification.evaluate batches it: centre crops --batch-size at a time, dense
    # images grouped by their rescaled size, multi-crop 50 crops per forward pass.
    t0 = time.perf_counter()
    centre_x = torch.stack([centre(img) for img in images]).to(device)             # (N, 3, 224, 224)
    by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
    for t in dense:
        for img in images:
            x = t(img)
            by_size.setdefault(tuple(x.shape[-2:]), []).append(x)
    dense_x = [torch.stack(v).to(device) for v in by_size.values()]                # same-size groups
    crops_x = [t(img).to(device) for img in images for t in crops]                 # (50, 3, 224, 224) each
    prep_s = time.perf_counter() - t0
    n, bs = len(images), args.batch_size

    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def single(model):
        @torch.inference_mode()
        def run():
            with amp():
                return [model(centre_x[i:i + bs]).float().softmax(1) for i in range(0, n, bs)]
        return run

    def dense(flip: bool):
        @torch.inference_mode()
        def run():
            with amp():
                return [dense_posterior(ours, g[i:i + bs], flip=flip) for g in dense_x for i in range(0, len(g), bs)]
        return run

    @torch.inference_mode()
    def multi_fn():
        with amp():
            return [multi_crop_posterior(ours, c) for c in crops_x]

    results = {
        "torchvision vgg16, centre crop (width 1)": timed(single(tv), device, args.repeats) / n,
        "ours, centre crop": timed(single(ours), device, args.repeats) / n,
        f"ours, dense, Q={args.scales}, flip": timed(dense(True), device, args.repeats) / n,
        f"ours, dense, Q={args.scales}, no flip": timed(dense(False), device, args.repeats) / n,
        f"ours, multi-crop, {len(scales)}x50 crops": timed(multi_fn, device, args.repeats) / n,
    }
    # Multiply-accumulates per image, counted from the layers (500x375 image).
    def rescaled(q: int) -> tuple[int, int]:
        return q, int(round(500 * q / 375))
    macs = {
        "ours, centre crop": count_macs(ours),
        f"ours, dense, Q={args.scales}, flip": 2 * sum(count_macs(ours, rescaled(q)) for q in scales),
        f"ours, dense, Q={args.scales}, no flip": sum(count_macs(ours, rescaled(q)) for q in scales),
        f"ours, multi-crop, {len(scales)}x50 crops": 50 * len(scales) * count_macs(ours),
    }
    unit = results["ours, centre crop"]
    rows = []
    for name, sec in results.items():
        rows.append({"method": name, "images_per_s": 1.0 / sec, "ms_per_image": 1e3 * sec,
                     "time_vs_our_centre_crop": sec / unit,
                     "macs_vs_our_centre_crop": macs[name] / macs["ours, centre crop"] if name in macs else None})
    dense_key, multi_key = list(results)[2], list(results)[4]
    summary = {"multi_crop_over_dense_time": results[multi_key] / results[dense_key],
               "multi_crop_over_dense_macs": macs[multi_key] / macs[dense_key]}
    setup = {"device": str(device), "threads": torch.get_num_threads(), "width": args.width,
             "fc_width": args.fc_width, "scales": scales, "images": args.images, "image_size": "500x375 / 375x500",
             "batch_size": args.batch_size, "amp": args.amp, "input_preparation_s": round(prep_s, 2),
             "torch": torch.__version__}
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows, **summary}, indent=2))
        return
    print(f"setup: {setup}")
    print(f"| method | images/s | ms/image | time vs our centre crop | MACs vs our centre crop |")
    print("|---|---|---|---|---|")
    for r in rows:
        m = "-" if r["macs_vs_our_centre_crop"] is None else f"{r['macs_vs_our_centre_crop']:.1f}x"
        print(f"| {r['method']} | {r['images_per_s']:.2f} | {r['ms_per_image']:.1f} | "
              f"{r['time_vs_our_centre_crop']:.1f}x | {m} |")
    print(f"\nmulti-crop / dense: {summary['multi_crop_over_dense_time']:.1f}x the time, "
          f"{summary['multi_crop_over_dense_macs']:.1f}x the MACs")


if __name__ == "__main__":
    main()
