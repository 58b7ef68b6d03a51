"""`vgg demo`: the main job end to end on the synthetic shapes dataset, in minutes on a CPU.

    vgg demo                      # minutes on a 2-core CPU (README.md: the measured time); ./demo_run
    vgg demo --output-dir /tmp/d --quick      # seconds: the smoke test

What it does, in the paper's order:

1. writes the synthetic shapes dataset to disk as JPEG class folders with VOC
   boxes (`data.synthetic.write_synthetic`), the same layout as ImageNet;
2. computes the training set's mean RGB and RGB PCA (`data.stats`, what
   `vgg stats` writes), for the mean subtraction and colour shift of §3.1;
3. trains a narrow configuration A with the paper's protocol (§3.1): SGD with
   momentum, weight decay, scale jittering S in [Smin, Smax], random
   crops and flips, PCA colour shift, lr divided by 10 once (at epoch 24 of
   30: within the demo's budget the validation error never plateaus, so the
   paper's plateau rule would never fire; docs/training.md), dense validation
   after every epoch, checkpoints, metrics.csv, curves.png;
4. evaluates the best checkpoint (§3.2) densely at three test scales
   Q = {Smin, (Smin+Smax)/2, Smax} and with 5x5 multi-crop + flips, and their
   combination, and prints the paper-style table of top-1/top-5 error;
5. writes a few predictions on validation images;
6. fine-tunes the classifier into a PCR localisation net (Appendix A) and
   reports its protocol-1 and full-protocol errors beside the mean-box baseline,
   with a few drawn predictions (`vggnet.localisation.cli.demo_localize`).
7. transfer (Appendix B): the trained net as a fixed feature extractor for
   multi-label scenes in the VOC devkit layout, linear SVMs, mAP next to the
   same SVMs on raw pixels (`vggnet.transfer.pipeline.demo_transfer`, about a minute).

The net is "narrow": 1/8 of the paper's channels, FC 256 and 64x64 crops (FC1
sees a 2x2 map instead of 7x7), so that it trains on a CPU in minutes. Two
departures from the paper make such a narrow net learn in that time: batch
normalisation (our extension) and no dropout; the plain narrow net with dropout
0.5 was still at 22% validation accuracy after 800 steps where the demo's net
is past 80%. Nothing else in the pipeline is scaled down. It reaches 94-96%
top-1 accuracy over 10 classes (the run depends on the CPU's kernels); README.md states the measured run (its numbers
are a run record, `demo-run.json`, checked by tests/test_demo.py). Training and
localisation run in fp32 on every CPU (`amp: off`), so a CPU with native bf16
gives the same numbers as one without. Progress bars appear on a terminal only
(`vggnet.progress`): `vgg demo > log` gets one line per epoch or pass. Everything
lands in the run folder:

    demo_run/data/            the dataset (train/, val/, annotations/, stats.json)
    demo_run/train/           checkpoints (best.pt, last.pt), metrics.csv, curves.png, config.yaml
    demo_run/results.md       the evaluation table (also results.json)
    demo_run/predictions.txt  top-5 classes of a few validation images
    demo_run/transfer/        multi-label scenes, descriptor cache, SVM classifier, results.json
    demo_run/demo-run.json    the run record: settings and seed, results as printed, stage times, machine

Running it again reuses the dataset and a finished training run (it only
re-evaluates); `--force` starts from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from vggnet.arguments import (add_execution_arguments, add_output_dir_argument, add_progress_argument, add_seed_argument,
                              add_workers_argument, default_workers, positive_int)
from vggnet.errors import UserError

__all__ = ["DEMO", "QUICK", "RECORD", "demo_settings", "record_settings", "machine", "run", "add_demo_arguments",
           "run_demo"]

# The run record: the settings, the results as printed, the stage times and the machine, written at the end of
# every run into the run folder (README.md's numbers are checked against a recorded one: tests/test_demo.py).
RECORD = "demo-run.json"

# The demo's settings. Images 96-192 px, S jittered in [64, 96], 64x64 crops:
# the shapes' scale range (a seventh to most of the image) survives the rescale.
# channels_last on the CPU too: for this narrow net oneDNN's NHWC kernels made a
# training step 1.14-1.37x faster than NCHW (for full-width D at crop 128 they
# were 0.91-1.12x, which is why `--channels-last auto` stays off on CPUs);
# benchmarks/channels_last.py measures it.
DEMO: dict[str, Any] = {
    "classes": 10, "train_images": 3000, "val_images": 500, "image_size": (96, 192),
    "model": "A", "width": 0.125, "fc_width": 256, "crop_size": 64, "scale": [64, 96],
    "batch_norm": True, "dropout": 0.0, "channels_last": "on", "amp": "off",
    "batch_size": 64, "lr": 0.01, "epochs": 30, "lr_patience": 2, "lr_scheduler": "step", "lr_step_size": 24,
    "stats_sample": 500, "localisation_epochs": 5, "scenes": [300, 300],
}
# `--quick`: the same pipeline in seconds (tests, a first look); the accuracy means nothing.
QUICK: dict[str, Any] = {
    "classes": 4, "train_images": 64, "val_images": 16, "image_size": (40, 64),
    "model": "A", "width": 0.0625, "fc_width": 32, "crop_size": 32, "scale": [32, 48],
    "batch_norm": True, "dropout": 0.0, "channels_last": "on", "amp": "off",
    "batch_size": 16, "lr": 0.01, "epochs": 2, "lr_patience": 1, "lr_scheduler": "plateau", "lr_step_size": 30,
    "stats_sample": 32, "localisation_epochs": 1, "scenes": [24, 24],
}


def demo_settings(quick: bool = False, **overrides: Any) -> dict[str, Any]:
    settings = dict(QUICK if quick else DEMO)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def record_settings(quick: bool = False, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """What decides the demo's numbers (its settings and seed), as plain JSON data."""
    return json.loads(json.dumps({"seed": seed, **demo_settings(quick, **overrides)}))


def machine() -> dict[str, Any]:
    """The machine a run was measured on: cores, CPU model and the vector flags that matter, torch."""
    import torch

    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
    return {"cores": os.cpu_count(), "cpu": model or None, "flags": [f for f in wanted if f in flags],
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _dataset_matches(folder: Path, params: dict[str, Any]) -> bool:
    try:
        written = json.loads((folder / "synthetic.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (written.get("train") == params["train_images"] and written.get("val") == params["val_images"]
            and len(written.get("classes", [])) == params["classes"]
            and list(written.get("image_size", [])) == list(params["image_size"]) and written.get("seed") == params["seed"])


def run(output_dir: str | os.PathLike = "demo_run", *, quick: bool = False, epochs: int | None = None,
        workers: int | None = None, threads: int | None = None, device: str = "auto", seed: int = 0,
        force: bool = False, progress: bool = True, amp: str | None = None,
        channels_last: str | None = None) -> dict[str, Any]:
    """The demo; returns {"top1_error", "top5_error", "top1_accuracy", "table", "paths", "seconds", "record"}.
    `amp` and `channels_last` (None or "auto": the demo's own, fp32 and on, so that every CPU gives the
    same numbers) apply to its classification training run."""
    from vggnet.data.datasets import build_dataset
    from vggnet.data.stats import compute_stats, save_stats
    from vggnet.data.synthetic import write_synthetic
    from vggnet.classification.evaluate import default_test_scales, evaluate
    from vggnet.classification.predict import predict
    from vggnet import TrainConfig, train

    t_start = time.perf_counter()
    p = demo_settings(quick, epochs=epochs)
    p["seed"] = seed
    if channels_last not in (None, "auto"):
        p["channels_last"] = channels_last
    if amp not in (None, "auto"):
        p["amp"] = amp
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    # Training: the loader workers augment while the net computes, so the net gets the other cores.
    # Evaluation, predictions and transfer: the workers only decode and rescale, the net is nearly all
    # the work, so it gets every core (the demo's net took 70 ms a step on 2 threads against 104 ms on 1:
    # docs/benchmarks.md). `--threads N` fixes N for every stage.
    eval_threads = threads or max(1, os.cpu_count() or 1)
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) - workers)
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    out = Path(output_dir)
    if force and out.exists():
        for name in ("data", "train", "results.md", "results.json", "predictions.txt", "localize",
                     "localisation.md", "localisation_predictions", "transfer", RECORD):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    data_dir, run_dir = out / "data", out / "train"
    timings: dict[str, float] = {}

    # 1. the dataset, on disk like a real one
    _banner(f"1/5 synthetic shapes dataset -> {data_dir}")
    t0 = time.perf_counter()
    if _dataset_matches(data_dir, p):
        print(f"reusing {data_dir} ({p['train_images']} train / {p['val_images']} val images)")
    else:
        params = write_synthetic(data_dir, classes=p["classes"], train=p["train_images"], val=p["val_images"],
                                 seed=seed, force=True, image_size=tuple(p["image_size"]), workers=workers + 1)
        print(f"wrote {p['train_images']} train and {p['val_images']} val JPEGs of {len(params['classes'])} classes "
              f"({', '.join(params['classes'])}), {p['image_size'][0]}-{p['image_size'][1]} px, with VOC boxes")
    timings["dataset"] = time.perf_counter() - t0

    # 2. the training set's statistics (what `vgg stats` writes)
    _banner("2/5 training-set mean RGB and RGB PCA (§3.1)")
    t0 = time.perf_counter()
    stats_path = data_dir / "stats.json"
    if not stats_path.is_file():
        stats = compute_stats(build_dataset(data_dir, split="train", strict=False), sample=p["stats_sample"],
                              seed=seed, workers=workers)
        save_stats(stats_path, stats)
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    print(f"mean RGB {', '.join(f'{v:.1f}' for v in stats['mean'])}; PCA std "
          f"{', '.join(f'{v:.1f}' for v in stats['eigval'])} -> {stats_path}")
    timings["stats"] = time.perf_counter() - t0

    # 3. training with the paper's protocol
    lo, hi = p["scale"]
    _banner(f"3/5 training {p['model']} (width {p['width']:g}) with scale jittering S in [{lo}, {hi}] (§3.1)")
    t0 = time.perf_counter()
    cfg = TrainConfig(
        model=p["model"], width=p["width"], fc_width=p["fc_width"], crop_size=p["crop_size"], scale=p["scale"],
        batch_norm=p["batch_norm"], dropout=p["dropout"], channels_last=p["channels_last"], amp=p["amp"],
        val_scale=(lo + hi) // 2, data=str(data_dir), stats=str(stats_path), batch_size=p["batch_size"],
        lr=p["lr"], epochs=p["epochs"], lr_patience=p["lr_patience"], lr_scheduler=p["lr_scheduler"],
        lr_step_size=p["lr_step_size"], seed=seed, device=device, workers=workers,
        val_batch_size=32, output_dir=str(run_dir), resume="auto", progress=progress, stats_sample=p["stats_sample"])
    try:
        result = train(cfg)
    except UserError as exc:
        if "other settings" in str(exc):
            raise UserError(f"{run_dir} holds a demo run with other settings; pass --force to start over "
                            f"({exc})") from None
        raise
    if result.get("signal"):
        print(f"\ninterrupted; run `vgg demo --output-dir {out}` again to continue")
        return {"interrupted": True, "paths": {"train": str(run_dir)}}
    timings["train"] = time.perf_counter() - t0
    best = run_dir / "best.pt"

    # 4. the paper's evaluation: dense and multi-crop at three scales, and both
    torch.set_num_threads(eval_threads)
    scales = default_test_scales(p["scale"], p["crop_size"])
    _banner(f"4/5 evaluation of {best} (§3.2): dense and multi-crop at Q = {', '.join(map(str, scales))}")
    t0 = time.perf_counter()
    from vggnet.progress import stderr_is_terminal

    ev = evaluate(str(best), str(data_dir), scales=scales, method="both", batch_size=64, workers=workers,
                  device=None if device == "auto" else device, progress=progress,
                  log=None if stderr_is_terminal() else (lambda line: print(line, flush=True)))  # a line per pass
    table = ev.table()
    print(table)
    (out / "results.md").write_text(ev.to_markdown(), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(ev.to_dict(), indent=2) + "\n", encoding="utf-8")
    timings["evaluate"] = time.perf_counter() - t0

    # 5. a few predictions
    _banner("5/5 predictions on a few validation images")
    val_set = build_dataset(data_dir, split="val")
    picks = [val_set.samples[i][0] for i in range(0, len(val_set), max(1, len(val_set) // 6))][:6]
    preds = predict(str(best), picks, scales=scales, device=None if device == "auto" else device)
    lines = []
    for pred in preds:
        truth = Path(pred["image"]).parent.name
        top = pred.get("top", [])
        guess = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in top[:3])
        mark = "ok " if top and top[0]["class"] == truth else "ERR"
        lines.append(f"{mark} {Path(pred['image']).name:<24} true {truth:<11} top-3: {guess}")
    print("\n".join(lines))
    (out / "predictions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    # 6. localisation (Appendix A): the classifier fine-tuned into a PCR box regressor
    t0 = time.perf_counter()
    torch.set_num_threads(threads)  # it trains first
    from vggnet.localisation.cli import demo_localize

    localisation = demo_localize(best, data_dir, out, quick=quick, epochs=p["localisation_epochs"], workers=workers,
                                 device=device, seed=seed, progress=progress)
    timings["localisation"] = time.perf_counter() - t0

    # Appendix B: the demo net as a fixed feature extractor for multi-label scenes (`vggnet.transfer.pipeline`)
    _banner("transfer (Appendix B): linear SVMs on the net's descriptors of multi-label scenes")
    t0 = time.perf_counter()
    torch.set_num_threads(eval_threads)
    from vggnet.transfer.pipeline import demo_transfer

    scenes = p["scenes"]
    transfer_result = demo_transfer(best, out / "transfer", trainval=scenes[0], test=scenes[1],
                                    image_size=tuple(p["image_size"]), seed=seed, workers=workers, progress=progress)
    timings["transfer"] = time.perf_counter() - t0

    o = ev.overall
    # the times as recorded (0.1 s), so that the printed line and the record say the same
    seconds = round(time.perf_counter() - t_start, 1)
    timings = {k: round(v, 1) for k, v in timings.items()}
    top5 = f"{o['top5_error']:.2f}%" if ev.top5_applicable else "n/a (5 classes or fewer)"
    print(f"\nfinal ({'dense & multi-crop' if ev.method == 'both' else ev.method}, Q = "
          f"{', '.join(map(str, scales))}): top-1 accuracy {o['top1_accuracy']:.2f}% (top-1 error "
          f"{o['top1_error']:.2f}%, top-5 error {top5}) on {o['images']} validation images; "
          f"{_fmt(seconds)} in all (dataset {_fmt(timings['dataset'])}, training {_fmt(timings['train'])}, "
          f"evaluation {_fmt(timings['evaluate'])}, localisation {_fmt(timings['localisation'])}, "
          f"transfer {_fmt(timings['transfer'])})")
    record = {
        "format": "vggnet.demo-run", "settings": json.loads(json.dumps(p)),
        "results": {"top1_accuracy": _round(o["top1_accuracy"]), "top1_error": _round(o["top1_error"]),
                    "top5_error": _round(o["top5_error"]),
                    "localisation_protocol1_error": _round(localisation["protocol1_error"]),
                    "localisation_full_error": _round(localisation["full_error"]),
                    "localisation_mean_box_error": _round(localisation["mean_box_error"]),
                    "transfer_mAP": _round(transfer_result["mAP"], 1),
                    "transfer_mAP_pixels": _round(transfer_result["mAP_pixels"], 1)},
        "seconds": seconds, "timings": timings,
        "threads": {"training": threads, "evaluation": eval_threads}, "workers": workers, "machine": machine()}
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"run folder: {out}/ (train/best.pt, train/metrics.csv, train/curves.png, results.md, predictions.txt, "
          f"{RECORD})")
    return {"top1_error": o["top1_error"], "top5_error": o["top5_error"], "top1_accuracy": o["top1_accuracy"],
            "table": table, "seconds": seconds, "timings": timings, "history": result.get("history", []),
            "localisation": localisation,
            "transfer": transfer_result, "record": record,
            "paths": {"data": str(data_dir), "train": str(run_dir), "best": str(best),
                      "results": str(out / "results.md"), "predictions": str(out / "predictions.txt")}}


def _round(value: float | None, digits: int = 2) -> float | None:
    """A result as the demo prints it (None: not measured, e.g. top-5 with 5 classes or fewer)."""
    return None if value is None else round(float(value), digits)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    # demo_run: the folder README.md's walk-through reads (the one exception to runs/<command>)
    add_output_dir_argument(parser, "demo", default="demo_run", help="run folder")
    parser.add_argument("--quick", action="store_true", help="a tiny version that runs in seconds (smoke test)")
    parser.add_argument("--epochs", type=positive_int, default=None, help=f"training epochs (default: {DEMO['epochs']})")
    add_workers_argument(parser)
    add_execution_arguments(parser)  # --threads: default cores - workers while training, all cores evaluating
    add_seed_argument(parser, help="seed of the dataset and the training")
    parser.add_argument("--force", action="store_true", help="start over: rewrite the dataset, retrain")
    add_progress_argument(parser)


def run_demo(args: argparse.Namespace) -> int:
    result = run(args.output_dir, quick=args.quick, epochs=args.epochs, workers=args.workers, threads=args.threads,
                 device=args.device, seed=args.seed, force=args.force, progress=args.progress, amp=args.amp,
                 channels_last=args.channels_last)
    return 130 if result.get("interrupted") else 0


if __name__ == "__main__":
    from vggnet.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
