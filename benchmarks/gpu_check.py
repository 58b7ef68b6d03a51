"""One GPU check, ready to run: every speed number docs/benchmarks.md wants from a GPU, in one Markdown table.

On one H100/H200 it takes about 4-6 minutes (a budget of 8 is enforced: a section that
would start after `--budget` seconds is skipped and named in the table):

  1. training step at 224 px, batch 64, our D against torchvision's vgg16
     (its default: fp32 with cuDNN's TF32 convolutions): ours fp32/TF32, bf16,
     bf16 + channels_last (our default on CUDA), + torch.compile;
  2. evaluation cost of §3.2: centre crop (torchvision and ours), dense at
     Q = 256, 384, 512 with flips, multi-crop 150 crops, in bf16;
  3. `vgg train` for 50 steps on the synthetic shapes (bf16, the machine's
     data-loading workers): the whole loop's images/s against the bare step's;
  4. `vgg train` for 20 steps on JPEG files of ImageNet's size (500x375, written
     first), decoded by the loader workers (`--decode-device cpu`) and in batches
     on the GPU (`--decode-device cuda`);
  5. `torchrun --nproc-per-node=1` with NCCL: a few steps of `vgg train` in one
     DDP process, to show the distributed path runs on this machine.

    python benchmarks/gpu_check.py --out gpu_check.md                 # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/q.md   # tiny sizes, seconds (the tests run it)

`--quick` shrinks every size (width 1/16, crop 32, a few steps) so the whole path
runs in seconds on a CPU; its numbers mean nothing, only that the script works.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, machine_line  # noqa: E402
from train_step import build, make_step, sync, time_interleaved  # noqa: E402
from vggnet.inference import dense_posterior, multi_crop_posterior
from vggnet.models import vgg  # noqa: E402


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, section: str, variant: str, value: float | None, reference: float | None = None,
            note: str = "") -> None:
        ratio = f"{value / reference:.2f}x" if value and reference else "-"
        self.rows.append((section, variant, "-" if value is None else f"{value:.1f}", ratio, note))

    def markdown(self) -> str:
        lines = ["| section | variant | images/s | vs reference | note |", "|---|---|---:|---:|---|"]
        lines += [f"| {' | '.join(r)} |" for r in self.rows]
        return "\n".join(lines)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        return dict(width=1 / 16, fc_width=64, crop=32, batch=4, steps=1, rounds=2, scales=[32, 48],
                    image=(36, 48), images=2, train_steps=4, classes=10, jpeg_steps=2, jpeg_size=(40, 56),
                    jpeg_scale=36)
    return dict(width=1.0, fc_width=4096, crop=224, batch=64, steps=5, rounds=3, scales=[256, 384, 512],
                image=(375, 500), images=16, train_steps=50, classes=1000, jpeg_steps=20, jpeg_size=(375, 500),
                jpeg_scale=256)


def training_step(s: dict[str, Any], device: torch.device, table: Table, quick: bool, compile_: bool) -> float:
    """Section 1; returns the bare step's images/s of our default (bf16 + channels_last)."""
    torch.manual_seed(0)
    x = torch.randn(s["batch"], 3, s["crop"], s["crop"], device=device)
    y = torch.randint(0, s["classes"], (s["batch"],), device=device)
    ours = lambda: vgg("D", s["classes"], crop_size=s["crop"], width=s["width"], fc_width=s["fc_width"])  # noqa: E731
    steps: dict[str, Callable[[], float]] = {}

    def add(name: str, kind: str, cl: bool, amp: str, fast: bool, compiled: bool = False) -> None:
        if kind == "tv":
            model, opt = build("tv", "D", s["crop"], s["classes"], device, cl, fast,
                               vgg("D", s["classes"], crop_size=s["crop"]).state_dict(), amp)
        else:
            model = ours().to(device).train()
            if cl:
                model.to(memory_format=torch.channels_last)
            from vggnet.engine import TrainConfig, make_optimizer
            opt = make_optimizer(model, TrainConfig())
            if compiled:
                model = torch.compile(model)
        xx = x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        steps[name] = make_step(model, opt, xx, y, amp)
        steps[name]()
        steps[name]()  # warm-up: cuDNN autotuning, compilation
        sync(device)

    if not quick:  # torchvision's vgg16 only exists at full width
        add("torchvision vgg16, default (fp32/TF32, NCHW, SGD)", "tv", False, "off", False)
    add("ours fp32/TF32", "ours", False, "off", True)
    add("ours bf16", "ours", False, "bf16", True)
    add("ours bf16 + channels_last (default)", "ours", True, "bf16", True)
    if compile_:
        add("ours bf16 + channels_last + compile", "ours", True, "bf16", True, compiled=True)
    times = time_interleaved(steps, s["rounds"], s["steps"], device)
    ips = {k: s["batch"] / statistics.median(v) for k, v in times.items()}
    ref = next(iter(ips.values()))
    section = f"training step {s['crop']} px, batch {s['batch']}"
    for name, v in ips.items():
        table.add(section, name, v, ref, "reference" if v is ref else "")
    if not compile_:
        table.add(section, "ours bf16 + channels_last + compile", None, None, "skipped (--quick or --no-compile)")
    return ips["ours bf16 + channels_last (default)"]


def eval_cost(s: dict[str, Any], device: torch.device, table: Table, quick: bool) -> None:
    torch.manual_seed(0)
    ours = vgg("D", s["classes"], crop_size=s["crop"], width=s["width"], fc_width=s["fc_width"]).eval().to(
        device, memory_format=torch.channels_last)
    h, w = s["image"]
    n, crop = s["images"], s["crop"]
    cl = torch.channels_last
    centre = torch.randn(n, 3, crop, crop, device=device).contiguous(memory_format=cl)
    dense = [torch.randn(n, 3, q, round(q * w / h), device=device).contiguous(memory_format=cl) for q in s["scales"]]
    big = [torch.randn(3, q, round(q * w / h), device=device) for q in s["scales"]]

    def grid(img: torch.Tensor) -> torch.Tensor:
        from vggnet.data.transforms import grid_crops

        c = grid_crops(img, crop, 5)
        return torch.cat([c, c.flip(-1)]).contiguous(memory_format=cl)  # (50, 3, crop, crop)

    crops = [grid(b) for b in big]
    runs: dict[str, Callable[[], Any]] = {}

    def timed(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                return fn()
        return run

    if not quick:
        tv = torchvision.models.vgg16().eval().to(device, memory_format=cl)
        runs["torchvision vgg16 centre crop"] = timed(lambda: tv(centre))
    runs["ours centre crop"] = timed(lambda: ours(centre))
    runs[f"ours dense Q={','.join(map(str, s['scales']))}, flip"] = timed(
        lambda: [dense_posterior(ours, d, flip=True) for d in dense])
    # multi-crop: 50 crops per scale per image; the same crops stand for every image (only the cost matters)
    runs[f"ours multi-crop {len(s['scales'])}x50 crops"] = timed(
        lambda: [multi_crop_posterior(ours, c) for _ in range(n) for c in crops])
    for fn in runs.values():
        fn()
    sync(device)
    times = time_interleaved(runs, s["rounds"], 1, device)
    ips = {k: n / statistics.median(v) for k, v in times.items()}
    ref = ips["ours centre crop"]
    for name, v in ips.items():
        table.add(f"evaluation, bf16 + channels_last, {h}x{w} images", name, v, ref,
                  "reference" if name == "ours centre crop" else "")


def train_loop(s: dict[str, Any], device: torch.device, table: Table, bare: float, workers: int, out: Path) -> None:
    from vggnet import TrainConfig, train

    steps = s["train_steps"]
    side = max(s["crop"] + s["crop"] // 7, 40)
    cfg = TrainConfig(model="D", width=s["width"], fc_width=s["fc_width"], crop_size=s["crop"], scale=side,
                      synthetic_classes=10, synthetic_train=steps * s["batch"], synthetic_val=s["batch"],
                      synthetic_image_size=[side, side + side // 3], batch_size=s["batch"], epochs=1,
                      max_steps=steps, workers=workers, device=str(device), amp="bf16", channels_last="on",
                      progress=False, stats_sample=s["batch"], output_dir=str(out / "train"), dropout=0.5)
    result = train(cfg)
    seconds = _train_seconds(out / "train")
    ips = steps * s["batch"] / seconds if seconds else None
    table.add(f"`vgg train`, {steps} steps, synthetic data, bf16", f"whole loop ({workers} workers)", ips, bare,
              f"vs the bare step above; {result['global_step']} steps")


def jpeg_loop(s: dict[str, Any], device: torch.device, table: Table, workers: int, out: Path) -> None:
    """Section 4: the whole loop on JPEG files, decoded by the workers and on the GPU."""
    from vggnet.data.synthetic import write_synthetic
    from vggnet import TrainConfig, train
    from vggnet.errors import UserError

    steps = s["jpeg_steps"]
    data = out / "jpegs"
    write_synthetic(data, classes=4, train=steps * s["batch"], val=s["batch"], image_size=s["jpeg_size"],
                    workers=workers)
    section = f"`vgg train`, {steps} steps, JPEGs of {s['jpeg_size'][0]}-{s['jpeg_size'][1]} px, bf16"
    rates: dict[str, float | None] = {}
    for where in ("cpu", "cuda"):
        if where == "cuda" and not _is_gpu(device):
            table.add(section, "--decode-device cuda", None, None, "skipped: needs a GPU")
            continue
        run = out / f"jpeg-{where}"
        cfg = TrainConfig(model="D", width=s["width"], fc_width=s["fc_width"], crop_size=s["crop"],
                          scale=s["jpeg_scale"], data=str(data), batch_size=s["batch"], epochs=1, max_steps=steps,
                          workers=workers, device=str(device), amp="bf16", channels_last="on", progress=False,
                          stats_sample=s["batch"], output_dir=str(run), dropout=0.5, decode_device=where)
        try:
            train(cfg)
        except UserError as exc:  # e.g. a TorchCodec without CUDA here: the table says so, the check goes on
            table.add(section, f"--decode-device {where}", None, None, f"skipped: {exc}")
            continue
        seconds = _train_seconds(run)
        rates[where] = steps * s["batch"] / seconds if seconds else None
        table.add(section, f"--decode-device {where} ({workers} workers)", rates[where],
                  rates.get("cpu") if where == "cuda" else None, "vs --decode-device cpu" if where == "cuda" else "")


def _is_gpu(device: torch.device) -> bool:
    return device.type == "cuda"


def _train_seconds(run: Path) -> float | None:
    """Training seconds of the run's last checkpoint (the loop's own clock: data loading and steps, no set-up)."""
    path = run / "last.pt"
    if not path.exists():
        return None
    totals = torch.load(path, map_location="cpu", weights_only=True)["train"].get("epoch_totals", {})
    return float(totals.get("seconds") or 0.0) or None


def torchrun_command(device: torch.device, s: dict[str, Any], out: Path) -> list[str]:
    exe = shutil.which("torchrun") or ""
    launcher = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    side = max(s["crop"] + s["crop"] // 7, 40)
    return [*launcher, "--standalone", "--nproc-per-node=1", "-m", "vggnet.cli", "train", "--model", "D",
            "--width", str(s["width"]), "--fc-width", str(s["fc_width"]), "--crop-size", str(s["crop"]),
            "--scale", str(side), "--synthetic-train", str(10 * s["batch"]), "--synthetic-val", str(s["batch"]),
            "--synthetic-image-size", f"{side}:{side + side // 3}", "--synthetic-classes", "10",
            "--batch-size", str(s["batch"]), "--epochs", "1", "--max-steps", "10", "--workers", "2",
            "--device", str(device.type), "--amp", "bf16" if device.type == "cuda" else "off",
            "--stats-sample", str(s["batch"]), "--no-progress", "--output-dir", str(out / "torchrun")]


def run_torchrun(device: torch.device, s: dict[str, Any], table: Table, out: Path, timeout: float) -> None:
    cmd = torchrun_command(device, s, out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[1] / "src"),
                                                                   os.environ.get("PYTHONPATH", "")] if p)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    log = (out / "torchrun" / "train.log")
    text = log.read_text() if log.exists() else proc.stdout + proc.stderr
    backend = "nccl" if "(nccl)" in text else "gloo" if "(gloo)" in text else "?"
    seconds = _train_seconds(out / "torchrun")
    ips = 10 * s["batch"] / seconds if seconds else None
    note = (f"exit {proc.returncode}, backend {backend}, {wall:.0f} s with start-up"
            + ("" if proc.returncode == 0 else f": {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"))
    table.add("torchrun --nproc-per-node=1", "vgg train, 10 steps", ips, None, note)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every section runs")
    p.add_argument("--out", default="gpu_check.md", help="the Markdown file to write (default: %(default)s)")
    p.add_argument("--budget", type=float, default=480, help="seconds; later sections are skipped (default: 480)")
    p.add_argument("--workers", type=int, default=None, help="data-loading workers of section 3 (default: CPUs/2)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--no-torchrun", action="store_true", help="skip section 4")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no GPU here; use --device cpu --quick to check the script itself")
        torch.backends.cudnn.benchmark = True
    s = settings(args)
    table = Table()
    start = time.perf_counter()
    workers = args.workers if args.workers is not None else (0 if args.quick else max(1, (os.cpu_count() or 2) // 2))

    def due(name: str) -> bool:
        if time.perf_counter() - start > args.budget:
            table.add(name, "-", None, None, f"skipped: past the {args.budget:.0f} s budget")
            return False
        return True

    with tempfile.TemporaryDirectory(prefix="vggnet-gpu-check-") as tmp:
        out = Path(tmp)
        bare = training_step(s, device, table, args.quick, compile_=not (args.quick or args.no_compile))
        if due("evaluation"):
            eval_cost(s, device, table, args.quick)
        if due("`vgg train`"):
            train_loop(s, device, table, bare, workers, out)
        if due("`vgg train` on JPEGs"):
            jpeg_loop(s, device, table, workers, out)
        if args.no_torchrun:
            table.add("torchrun --nproc-per-node=1", "-", None, None, "skipped (--no-torchrun)")
        elif due("torchrun --nproc-per-node=1"):
            run_torchrun(device, s, table, out, timeout=max(60.0, args.budget - (time.perf_counter() - start) + 60))
    header = machine_line(describe_machine(device))
    text = (f"{header}\n\nbenchmarks/gpu_check.py{' --quick' if args.quick else ''}: D width {s['width']:g}, "
            f"fc {s['fc_width']}, crop {s['crop']}, batch {s['batch']}; torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}; {time.perf_counter() - start:.0f} s\n\n{table.markdown()}\n")
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
