"""Inference throughput of our default path against torchvision's default, in one run.

Our default path is what `vgg eval` / `vgg predict` resolve for `--amp auto
--channels-last auto` on this machine (`vggnet.execution.choose_execution`: bf16
autocast + channels_last on CUDA and on CPUs that compute bf16 natively, fp32
NCHW elsewhere). torchvision's default is its vgg16 in fp32, NCHW. Both nets
hold the same weights (our D loads torchvision's state dict), so they compute
the same function and only the execution differs.

Three comparisons, each on the same input in the same run:

  crop 224      a batch of 224x224 crops through the net: ours (default path)
                against torchvision's vgg16 (fp32), the issue's "inference at 224 px";
  dense Q       a batch of whole images rescaled to Q (Q x 4Q/3, ImageNet's 4:3),
                no flip: our `dense_posterior` (FC layers as convolutions, §3.2)
                against torchvision's forward of the same images (adaptive
                pooling to 7x7, then its FC layers) — the same conv work on the
                same pixels;
  predict       JPEG files -> top-5, decoding and preprocessing included:
                `vggnet.classification.predict.Predictor` (the checkpoint loaded once, outside
                the timing) at one scale Q, dense, no flip,
                against torchvision's recipe (resize 256, centre crop 224, its
                transforms, vgg16). Not the same arithmetic (ours applies the net
                to the whole image): the ratio is what a user sees per image.

Variants are interleaved round by round and the median kept; read the ratios.
With `--bf16-row` our net also runs forced to bf16 + channels_last, which shows
on a CPU without native bf16 why `--amp auto` leaves it off there.

    python benchmarks/inference.py                            # CPU: D full width, batch 4, Q=256
    python benchmarks/inference.py --bf16-row --rounds 3
    python benchmarks/inference.py --device cuda --batch-size 32 --images 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision

from machine import describe_machine, machine_line  # benchmarks/ is on sys.path when run as a script
from train_step import sync, time_interleaved
from vggnet.checkpoint import TORCHVISION_PREPROCESSING, make_checkpoint, save_checkpoint
from vggnet.inference import dense_posterior
from vggnet.classification.predict import Predictor
from vggnet.execution import Execution, choose_execution
from vggnet.models import vgg


def our_net(state: dict[str, torch.Tensor], device: torch.device, ex: Execution) -> torch.nn.Module:
    model = vgg("D", 1000)
    model.load_state_dict(state)
    return model.eval().to(device, memory_format=ex.memory_format)


def forward(model: torch.nn.Module, x: torch.Tensor, ex: Execution, dense: bool = False) -> Callable[[], Any]:
    x = x.contiguous(memory_format=ex.memory_format)

    def run() -> Any:
        with torch.inference_mode(), ex.autocast(x.device):
            return dense_posterior(model, x, flip=False) if dense else model(x).float().softmax(1)

    return run


def write_jpegs(folder: Path, n: int, size: tuple[int, int]) -> list[str]:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(n):
        # smooth random colour fields (photo-like JPEG sizes), not noise
        small = torch.randint(0, 256, (3, size[1] // 25, size[0] // 25), generator=g, dtype=torch.uint8)
        img = torch.nn.functional.interpolate(small[None].float(), size=(size[1], size[0]), mode="bilinear")[0]
        path = folder / f"img{i}.jpg"
        Image.fromarray(img.clamp(0, 255).byte().permute(1, 2, 0).numpy()).save(path, quality=90)
        paths.append(str(path))
    return paths


def torchvision_predict(model: torch.nn.Module, files: list[str], device: torch.device) -> Callable[[], Any]:
    from PIL import Image

    transform = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()  # resize 256, centre crop 224

    def run() -> Any:
        out = []
        with torch.inference_mode():
            for f in files:
                with Image.open(f) as im:
                    x = transform(im.convert("RGB")).unsqueeze(0).to(device)
                out.append(model(x).softmax(1).topk(5))
        return out

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=4, help="crops / images per forward pass (default: 4)")
    p.add_argument("--scale", type=int, default=256, help="dense test scale Q (default: 256)")
    p.add_argument("--images", type=int, default=4, help="JPEG files for the predict comparison (default: 4)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median kept (default: 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--bf16-row", action="store_true", help="also time our net forced to bf16 + channels_last")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ours_ex = choose_execution("auto", "auto", device)
    fp32 = choose_execution("off", "off", device)
    forced = choose_execution("bf16", "on", device)
    torch.manual_seed(0)
    tv = torchvision.models.vgg16().eval().to(device)
    state = tv.state_dict()
    ours = our_net(state, device, ours_ex)
    crops = torch.randn(args.batch_size, 3, 224, 224, device=device)
    q = args.scale
    whole = torch.randn(args.batch_size, 3, q, q * 4 // 3, device=device)

    steps: dict[str, Callable[[], Any]] = {
        "crop/torchvision": forward(tv, crops, fp32),
        "crop/ours": forward(ours, crops, ours_ex),
        "dense/torchvision": forward(tv, whole, fp32),
        "dense/ours": forward(ours, whole, ours_ex, dense=True),
    }
    if args.bf16_row and (ours_ex.amp, ours_ex.channels_last) != ("bf16", True):
        forced_net = our_net(state, device, forced)
        steps["crop/ours bf16 forced"] = forward(forced_net, crops, forced)
        steps["dense/ours bf16 forced"] = forward(forced_net, whole, forced, dense=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_jpegs(Path(tmp), args.images, (500, 375))
        ckpt = save_checkpoint(Path(tmp) / "d.pt", make_checkpoint(ours, preprocessing=TORCHVISION_PREPROCESSING,
                                                                   classes=[str(i) for i in range(1000)]))
        steps["predict/torchvision"] = torchvision_predict(tv, files, device)
        # the checkpoint is loaded once, outside the timing, as torchvision's model is built once above
        steps["predict/ours"] = lambda p=Predictor(ckpt, scales=[q], flip=False, device=device, amp=ours_ex.amp,
                                                   channels_last=ours_ex.channels_last): p(files)
        if args.bf16_row and (ours_ex.amp, ours_ex.channels_last) != ("bf16", True):
            steps["predict/ours bf16 forced"] = lambda p=Predictor(ckpt, scales=[q], flip=False, device=device,
                                                                   amp="bf16", channels_last=True): p(files)
        for run in steps.values():
            run()  # warm-up (oneDNN primitive creation, cuDNN autotuning)
            sync(device)
        times = time_interleaved(steps, args.rounds, 1, device)
    per = {"crop": args.batch_size, "dense": args.batch_size, "predict": args.images}
    ips = {k: per[k.split("/")[0]] / statistics.median(v) for k, v in times.items()}

    machine = describe_machine(device)
    print(machine_line(machine))
    print(f"D / vgg16, full width, 1000 classes; batch {args.batch_size}, dense at Q={q} ({q}x{q * 4 // 3}), "
          f"predict on {args.images} JPEGs of 500x375; {args.rounds} interleaved rounds, medians")
    labels = {"crop": "crop 224", "dense": f"dense Q={q}, no flip", "predict": f"predict, JPEG -> top-5 (ours Q={q} "
              f"dense; torchvision resize 256 + centre crop 224)"}
    print(f"| comparison | ours: {ours_ex.amp}, {'NHWC' if ours_ex.channels_last else 'NCHW'} img/s | "
          f"torchvision fp32 NCHW img/s | ours / torchvision |")
    print("|---|---:|---:|---:|")
    rows = []
    for kind in ("crop", "dense", "predict"):
        for who in ("ours", "ours bf16 forced"):
            if f"{kind}/{who}" not in ips:
                continue
            row = {"comparison": labels[kind] + (" (ours forced to bf16 + channels_last)" if "forced" in who else ""),
                   "ours": ips[f"{kind}/{who}"], "torchvision": ips[f"{kind}/torchvision"]}
            row["ratio"] = row["ours"] / row["torchvision"]
            rows.append(row)
            print(f"| {row['comparison']} | {row['ours']:.2f} | {row['torchvision']:.2f} | {row['ratio']:.2f}x |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine, "rows": rows, "seconds": times}, f, indent=2)


if __name__ == "__main__":
    main()
