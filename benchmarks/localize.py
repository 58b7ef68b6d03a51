"""Cost of localisation (Appendix A): the full protocol against protocol 1, and the greedy merge.

1. Throughput (images/s) of protocol 1 (one central crop through the localisation
   net) and of the full protocol (the classifier's dense ranking pass, then the
   localisation and classification nets applied densely at every Q, the greedy
   merge and its two reference rows) on the same images: synthetic shapes written
   to a temporary folder, random nets of the given width (the cost does not depend
   on the weights).
2. The greedy merge (`localize_eval.greedy_merge`, vectorised) on 100, 1,000 and
   10,000 boxes of one class, clustered around a few objects as dense windows are,
   against `torchvision.ops.batched_nms` on the same boxes (same process, ratio).

    python benchmarks/localize.py                      # CPU, about a minute
    python benchmarks/localize.py --device cuda --width 1 --fc-width 4096 --crop-size 224 --image-size 256 400
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torchvision.ops import batched_nms

from vggnet import vgg
from vggnet.data.synthetic import write_synthetic
from vggnet.data.transforms import Preprocessing
from vggnet.localisation.task import make_localisation_checkpoint
from vggnet.localisation.cli import evaluate_localisation
from vggnet.localisation.full_protocol import greedy_merge, nms_clusters
from vggnet.checkpoint import make_checkpoint, save_checkpoint


def clustered_boxes(n: int, objects: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` boxes around `objects` objects in a 500x400 image (jittered centres and sizes), with scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(objects, 2, generator=g) * torch.tensor([500.0, 400.0])
    sizes = 60 + torch.rand(objects, 2, generator=g) * 140
    k = torch.arange(n) % objects
    c = centres[k] + torch.randn(n, 2, generator=g) * 12
    s = sizes[k] * (1 + 0.1 * torch.randn(n, 2, generator=g))
    boxes = torch.cat([c - s / 2, c + s / 2], dim=1)
    return boxes, torch.rand(n, generator=g)


def time_best(fn, repeats: int, warmup: bool = True):
    """(best seconds of `repeats` calls, the last result)."""
    if warmup:
        fn()
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def merge_times(sizes=(100, 1000, 10000), classes=(1, 5), merge_iou: float = 0.5) -> list[dict]:
    rows = []
    for n in sizes:
        for k in classes:
            boxes, scores = clustered_boxes(n)
            idxs = torch.arange(n) % k        # the full protocol merges the top-5 classes side by side
            repeats = 3 if n <= 1000 else 1
            t_merge, out = time_best(lambda: greedy_merge(boxes, scores, idxs, merge_iou), repeats, n <= 1000)
            t_nms, _ = time_best(lambda: batched_nms(boxes, scores, idxs, merge_iou), max(repeats, 3))
            t_cluster, _ = time_best(lambda: nms_clusters(boxes, scores, idxs, merge_iou), max(repeats, 3))
            rows.append({"boxes": n, "classes": k, "merged_to": int(out[0].shape[0]), "merge_ms": 1e3 * t_merge,
                         "batched_nms_ms": 1e3 * t_nms, "nms_clusters_ms": 1e3 * t_cluster,
                         "merge_over_nms": t_merge / t_nms})
    return rows


def throughput(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic(root / "data", classes=args.classes, train=args.classes, val=args.images, seed=0,
                        force=True, image_size=tuple(args.image_size))
        import json as _json
        classes = _json.loads((root / "data" / "synthetic.json").read_text())["classes"]
        pre = Preprocessing.caffe().to_dict()
        build = dict(crop_size=args.crop_size, width=args.width, fc_width=args.fc_width)
        torch.manual_seed(0)
        save_checkpoint(root / "cls.pt", make_checkpoint(vgg("D", len(classes), **build), preprocessing=pre,
                                                         classes=classes, meta={"scale": args.scales[0]}))
        save_checkpoint(root / "loc.pt", make_localisation_checkpoint(
            vgg("D", 4 * len(classes), **build), head="pcr", classes=classes, preprocessing=pre,
            scale=args.scales[0]))
        common = dict(device=args.device, workers=args.workers, batch_size=16, mean_box_sample=1)
        evaluate_localisation([str(root / "loc.pt")], str(root / "data"), protocol="central",
                              scales=args.scales[:1], **common)    # warm-up
        t = time.perf_counter()
        evaluate_localisation([str(root / "loc.pt")], str(root / "data"), protocol="central",
                              scales=args.scales[:1], **common)
        t_central = time.perf_counter() - t
        t = time.perf_counter()
        full = evaluate_localisation([str(root / "loc.pt")], str(root / "data"), protocol="full",
                                     classifiers=[str(root / "cls.pt")], scales=args.scales, **common)
        t_full = time.perf_counter() - t
    n = args.images
    return {"images": n, "protocol1_images_per_s": n / t_central, "full_images_per_s": n / t_full,
            "full_over_protocol1_cost": t_full / t_central, "test_scales": args.scales,
            "windows_per_image": full["windows"] / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--fc-width", type=int, default=256)
    p.add_argument("--crop-size", type=int, default=64)
    p.add_argument("--image-size", type=int, nargs=2, default=[96, 192])
    p.add_argument("--scales", type=lambda s: [int(v) for v in s.split(",")], default=[64, 96])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    merge = merge_times()
    tp = throughput(args)
    if args.json:
        print(json.dumps({"merge": merge, "throughput": tp}, indent=2))
        return
    print(f"D at width {args.width}, FC {args.fc_width}, crop {args.crop_size}, images {args.image_size[0]}-"
          f"{args.image_size[1]} px, {args.classes} classes (PCR), device {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"protocol 1 (central crop, Q={args.scales[0]}): {tp['protocol1_images_per_s']:.1f} images/s")
    print(f"full protocol (Q={','.join(map(str, args.scales))}, {tp['windows_per_image']:.0f} windows x top-5 "
          f"per image): {tp['full_images_per_s']:.1f} images/s ({tp['full_over_protocol1_cost']:.1f}x the cost)")
    print("\n| boxes | classes | after merge | greedy merge (ms) | batched_nms (ms) | NMS + cluster scores (ms) | "
          "merge / NMS |")
    print("|---|---|---|---|---|---|---|")
    for r in merge:
        print(f"| {r['boxes']:,} | {r['classes']} | {r['merged_to']} | {r['merge_ms']:.1f} | {r['batched_nms_ms']:.2f} | "
              f"{r['nms_clusters_ms']:.2f} | {r['merge_over_nms']:.0f}x |")


if __name__ == "__main__":
    main()
