"""Training throughput of our D and A against torchvision's vgg16 and vgg11, in one run.

Each pair is the same network (torchvision's vgg16 and our D load the same
state dict, so the two compute the same function) trained with the same loss, batch and SGD
(lr 1e-2, momentum 0.9, weight decay 5e-4, §3.1) on the same random batch. What
is timed is one optimizer step: forward, cross-entropy, backward, SGD update.
Data loading is not included (benchmarks/data_pipeline.py measures it).

Three settings per pair:

  equal, fp32 NCHW   both nets fp32, NCHW, torch.optim.SGD's default
                     implementation: ours must not be slower (ratio >= 1.0);
  equal, fast path   both nets with our training defaults (what `vgg train`
                     resolves for --amp auto, --channels-last auto, and
                     `vggnet.engine.make_optimizer`): the net itself still must
                     not be slower;
  default vs default our training defaults against torchvision's defaults
                     (fp32, NCHW, default SGD): the speed-up a user gets.

Variants are interleaved (round 1: every variant once, round 2: again, ...) and
the median of the rounds is kept, so that load on a shared machine hits every
variant alike; read the ratios, not the absolute images/s.

    python benchmarks/train_step.py                                 # CPU: crop 128, batch 8 (~5 min on 2 cores)
    python benchmarks/train_step.py --device cuda --crop 224 --batch-size 64 --rounds 5
    python benchmarks/train_step.py --breakdown     # where torchvision's default step spends its time

`--breakdown` profiles torchvision's default step (torch.profiler, self time per
operator) and splits it into the convolution and matrix-multiply kernels, which
both implementations call identically, and everything else. If "everything
else" took no time at all, a step would be total / (conv + matmul) times faster:
that is the ceiling on any ratio a training loop can reach against torchvision
without changing the arithmetic (precision) itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torchvision

from machine import describe_machine, machine_line  # benchmarks/ is on sys.path when run as a script
from vggnet.models import vgg
from vggnet.engine import TrainConfig, make_optimizer, resolve_execution

PAIRS = {"D": "vgg16", "A": "vgg11"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              amp: str) -> Callable[[], float]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp == "fp16")

    def step() -> float:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def build(kind: str, name: str, crop: int, num_classes: int, device: torch.device, channels_last: bool,
          fast_optimizer: bool, state: dict[str, torch.Tensor],
          amp: str = "off") -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    if kind == "ours":
        model = vgg(name, num_classes, crop_size=crop)
    else:
        model = getattr(torchvision.models, PAIRS[name])(num_classes=num_classes)
        if crop != 224:
            # torchvision pools to 7x7 before FC1; at crop 224 that is the identity. At other
            # crops we pool to crop/32 (what our net does), so both do the same work.
            model.avgpool = torch.nn.AdaptiveAvgPool2d(crop // 32)
            model.classifier[0] = torch.nn.Linear(512 * (crop // 32) ** 2, 4096)
    model.load_state_dict(state)
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    cfg = TrainConfig()  # the paper's lr, momentum and weight decay
    if fast_optimizer:
        optimizer = make_optimizer(model, cfg, grad_scaler=amp == "fp16")
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
    return model, optimizer


def time_interleaved(steps: dict[Any, Callable[[], Any]], rounds: int, per_round: int,
                     device: torch.device) -> dict[Any, list[float]]:
    """Seconds per step of each variant, one list entry per round; every round runs each variant in turn,
    so that load on a shared machine hits them alike."""
    times: dict[Any, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(per_round):
                step()
            sync(device)
            times[key].append((time.perf_counter() - t0) / per_round)
    return times


CONV_OPS = ("convolution", "conv2d", "conv_depthwise", "cudnn_conv", "mkldnn_conv")
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def breakdown(step: Callable[[], float], steps: int = 2) -> dict[str, float]:
    """CPU self time of one step by kind of operator, in seconds per step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    parts = {"conv": 0.0, "matmul": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if event.key.startswith(("ProfilerStep", "Optimizer.")):  # ranges that only hold other operators
            continue
        seconds = event.self_cpu_time_total / 1e6 / steps
        if any(k in event.key for k in CONV_OPS):
            parts["conv"] += seconds
        elif any(event.key.startswith(k) for k in MATMUL_OPS):
            parts["matmul"] += seconds
        else:
            parts["other"] += seconds
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="D,A", help="our configurations, paired with torchvision's (default: D,A)")
    p.add_argument("--crop", type=int, default=None, help="training crop (default: 224 on CUDA, 128 on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: 64 on CUDA, 8 on CPU)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant per round (default: 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median kept (default: 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--bf16-row", action="store_true",
                   help="also time our net in bf16 + channels_last, whatever --amp auto chose (on a CPU without "
                        "native bf16: what forcing it costs)")
    p.add_argument("--breakdown", action="store_true",
                   help="profile torchvision's default step instead of timing: conv / matmul / other")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    crop = args.crop or (224 if cuda else 128)
    batch = args.batch_size or (64 if cuda else 8)
    if cuda:
        torch.backends.cudnn.benchmark = True
    amp, channels_last = resolve_execution("auto", "auto", device)
    fast = f"amp {amp}, {'channels_last' if channels_last else 'NCHW'}, {make_optimizer.__name__}"
    torch.manual_seed(0)
    x = torch.randn(batch, 3, crop, crop, device=device)
    y = torch.randint(0, args.classes, (batch,), device=device)

    # variant -> (kind, net, channels_last, amp, fast optimizer)
    variants: dict[tuple[str, str], tuple[str, str, bool, str, bool]] = {}
    for name in args.models.split(","):
        name = name.strip()
        if name not in PAIRS:
            raise SystemExit(f"--models: {name!r} has no torchvision counterpart; choose from {', '.join(PAIRS)}")
        variants[(name, "ours fp32 NCHW")] = ("ours", name, False, "off", False)
        variants[(name, "torchvision fp32 NCHW")] = ("tv", name, False, "off", False)
        variants[(name, "ours fast path")] = ("ours", name, channels_last, amp, True)
        variants[(name, "torchvision fast path")] = ("tv", name, channels_last, amp, True)
        if args.bf16_row and (amp, channels_last) != ("bf16", True):
            variants[(name, "ours bf16 channels_last")] = ("ours", name, True, "bf16", True)

    if args.breakdown:
        if cuda:
            raise SystemExit("--breakdown profiles CPU time; run it with --device cpu")
        variants = {k: v for k, v in variants.items() if k[1] == "torchvision fp32 NCHW"}
    # one set of initial weights per net, loaded by all four of its variants
    states = {name: vgg(name, args.classes, crop_size=crop).state_dict() for name in dict.fromkeys(
        v[1] for v in variants.values())}
    steps: dict[tuple[str, str], Callable[[], float]] = {}
    for key, (kind, name, cl, amp_v, fast_opt) in variants.items():
        model, opt = build(kind, name, crop, args.classes, device, cl, fast_opt, states[name], amp_v)
        xx = x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        steps[key] = make_step(model, opt, xx, y, amp_v)
        steps[key]()  # warm-up (and cuDNN autotuning)
        sync(device)
    if args.breakdown:
        print(f"torchvision's default step (fp32 NCHW, torch.optim.SGD), crop {crop}, batch {batch}, "
              f"{torch.get_num_threads()} threads; self CPU time per step")
        print("| net | conv s | matmul s | other s | conv + matmul share | ceiling: total / (conv + matmul) |")
        print("|---|---:|---:|---:|---:|---:|")
        for (name, _), step in steps.items():
            parts = breakdown(step, args.steps)
            total = sum(parts.values())
            kernels = parts["conv"] + parts["matmul"]
            print(f"| {PAIRS[name]} | {parts['conv']:.3f} | {parts['matmul']:.3f} | {parts['other']:.3f} | "
                  f"{100 * kernels / total:.1f}% | {total / kernels:.2f}x |")
        return
    times = time_interleaved(steps, args.rounds, args.steps, device)
    ips = {k: batch / statistics.median(v) for k, v in times.items()}

    rows = []
    for name in dict.fromkeys(k[0] for k in ips):
        tvn = PAIRS[name]
        rows += [
            {"net": f"{name} / {tvn}", "setting": "equal, fp32 NCHW", "ours": ips[(name, "ours fp32 NCHW")],
             "torchvision": ips[(name, "torchvision fp32 NCHW")]},
            {"net": f"{name} / {tvn}", "setting": f"equal, fast path ({fast})", "ours": ips[(name, "ours fast path")],
             "torchvision": ips[(name, "torchvision fast path")]},
            {"net": f"{name} / {tvn}", "setting": "our default vs torchvision default",
             "ours": ips[(name, "ours fast path")], "torchvision": ips[(name, "torchvision fp32 NCHW")]},
        ]
        if (name, "ours bf16 channels_last") in ips:
            rows.append({"net": f"{name} / {tvn}", "setting": "ours bf16 + channels_last (forced) vs torchvision "
                         "default", "ours": ips[(name, "ours bf16 channels_last")],
                         "torchvision": ips[(name, "torchvision fp32 NCHW")]})
    for r in rows:
        r["ratio"] = r["ours"] / r["torchvision"]
    where = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    if not cuda:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                where = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    setup = {"device": where, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "crop": crop,
             "batch_size": batch, "classes": args.classes, "rounds": args.rounds, "steps": args.steps,
             "fast_path": fast, "torch": torch.__version__, "torchvision": torchvision.__version__,
             "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    machine = describe_machine(device)
    setup["machine"] = machine
    print(machine_line(machine))
    print(f"setup: {setup}")
    print("| nets | setting | ours img/s | torchvision img/s | ours / torchvision |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['net']} | {r['setting']} | {r['ours']:.2f} | {r['torchvision']:.2f} | {r['ratio']:.2f}x |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"setup": setup, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
