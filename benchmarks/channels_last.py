"""NCHW against channels_last (NHWC) for one training step of one of our nets, in one run.

What `--channels-last` changes: the memory layout of the activations and conv
weights, and with it which oneDNN (CPU) or cuDNN (GPU) kernels run. The same
net, weights, batch and fused SGD step (`vggnet.engine.make_optimizer`) in both
layouts; the two interleaved, round by round, and the median kept.

    python benchmarks/channels_last.py                                   # D, crop 128, batch 8
    python benchmarks/channels_last.py --model A --width 0.125 --fc-width 256 --batch-norm \\
        --crop 64 --batch-size 64 --classes 10 --threads 1 --steps 5     # the demo's net and threads

The CPU default (`--channels-last auto` = NCHW) and the demo's choice (NHWC)
come from these two commands; docs/benchmarks.md has the numbers.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from train_step import make_step, time_interleaved  # benchmarks/ is on sys.path when run as a script
from vggnet.models import vgg
from vggnet.engine import TrainConfig, make_optimizer


def build_step(state: dict[str, torch.Tensor], args: argparse.Namespace, channels_last: bool,
               x: torch.Tensor, y: torch.Tensor):
    model = vgg(args.model, args.classes, crop_size=args.crop, width=args.width, fc_width=args.fc_width,
                dropout=0.0, batch_norm=args.batch_norm)
    model.load_state_dict(state)
    model.train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    return make_step(model, make_optimizer(model, TrainConfig()), x.contiguous(memory_format=layout), y, "off")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="D")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--fc-width", type=int, default=4096)
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--steps", type=int, default=1, help="timed steps per layout per round (default: 1)")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds, median kept (default: 6)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    state = vgg(args.model, args.classes, crop_size=args.crop, width=args.width, fc_width=args.fc_width,
                dropout=0.0, batch_norm=args.batch_norm).state_dict()
    x = torch.randn(args.batch_size, 3, args.crop, args.crop)
    y = torch.randint(0, args.classes, (args.batch_size,))
    steps = {"NCHW": build_step(state, args, False, x, y), "channels_last": build_step(state, args, True, x, y)}
    for step in steps.values():
        step()  # warm-up
    times = time_interleaved(steps, args.rounds, args.steps, torch.device("cpu"))
    med = {k: statistics.median(v) for k, v in times.items()}
    per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(times["NCHW"], times["channels_last"]))
    print(f"{args.model} width {args.width:g} fc {args.fc_width}{' bn' if args.batch_norm else ''}, crop {args.crop}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"NCHW {1000 * med['NCHW']:.0f} ms/step, channels_last {1000 * med['channels_last']:.0f} ms/step: "
          f"channels_last is {med['NCHW'] / med['channels_last']:.2f}x NCHW (per round: {per_round})")


if __name__ == "__main__":
    main()
