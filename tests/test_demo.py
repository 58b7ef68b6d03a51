"""`vgg demo --quick`: the whole pipeline end to end leaves a complete run folder."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vggnet.cli import main


def test_demo_quick_leaves_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    try:
        # progress bars asked for, as `make demo > log` does: stderr is not a terminal, so none is drawn
        assert main(["demo", "--quick", "--output-dir", str(out), "--workers", "0", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # the demo sets the process's thread count
    captured = capsys.readouterr()
    printed = captured.out
    assert "it/s" not in captured.err and "%|" not in captured.err and "\r" not in captured.err + printed
    assert [q for q in (32, 40, 48) if f"evaluated Q={q} (dense, multi-crop)" in printed] == [32, 40, 48]  # a line a pass
    # 1. the dataset on disk, in the ImageNet layout, with its statistics
    data = out / "data"
    classes = sorted(p.name for p in (data / "train").iterdir())
    assert len(classes) == 4 and sorted(p.name for p in (data / "val").iterdir()) == classes
    assert sum(1 for _ in (data / "train").rglob("*.jpg")) == 64
    assert (data / "stats.json").is_file()
    # 2. training: checkpoints, metrics, curves, resolved config
    run = out / "train"
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["classes"] == classes and best["build"]["name"] == "A"
    assert (run / "last.pt").is_file() and (run / "config.yaml").is_file()
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 3. the evaluation table and the predictions
    results = (out / "results.md").read_text()
    assert "dense" in results and "multi-crop" in results and "top-1" in results
    predictions = (out / "predictions.txt").read_text().splitlines()
    assert predictions and all(line.split()[0] in ("ok", "ERR") and "top-3:" in line for line in predictions)
    assert "final (" in printed and "top-1 accuracy" in printed
    _check_contents(out, classes, rows, best, printed)
    _check_record(out, printed)
    # 4. the transfer stage (Appendix B): SVMs on descriptors vs on raw pixels, both reported
    transfer = json.loads((out / "transfer" / "results.json").read_text())
    assert transfer["classes"] == classes and {"mAP", "mAP_area", "ap"} <= set(transfer)
    assert "with the same SVMs on raw 16x16 pixels" in printed

    # a second run reuses the dataset and the finished training, and only re-evaluates
    mtime = (run / "last.pt").stat().st_mtime_ns
    try:
        assert main(["demo", "--quick", "--output-dir", str(out), "--workers", "0", "--threads", "1",
                     "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    again = capsys.readouterr().out
    assert "reusing" in again and "already finished" in again
    assert (run / "last.pt").stat().st_mtime_ns == mtime


def _check_record(out: Path, printed: str) -> None:
    """The run record holds the numbers the demo printed, its settings and seed, and the stage times."""
    from vggnet.demo import RECORD, record_settings

    record = json.loads((out / RECORD).read_text())
    assert record["settings"] == record_settings(quick=True, seed=0)
    r = record["results"]
    assert f"top-1 accuracy {r['top1_accuracy']:.2f}% (top-1 error {r['top1_error']:.2f}%" in printed
    assert (f"protocol 1 {r['localisation_protocol1_error']:.2f}%, full protocol (top-5, greedy merge) "
            f"{r['localisation_full_error']:.2f}%; a fixed mean box: {r['localisation_mean_box_error']:.2f}%") in printed
    assert f"mAP {r['transfer_mAP']:.1f}% (VOC-2007" in printed and f"vs {r['transfer_mAP_pixels']:.1f}% (" in printed
    assert set(record["timings"]) >= {"dataset", "train", "evaluate", "localisation", "transfer"}
    assert f"{_minutes(record['seconds'])} in all" in printed
    assert record["machine"]["cores"] >= 1 and record["threads"] == {"training": 1, "evaluation": 1} and record["workers"] == 0


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


README = Path(__file__).resolve().parents[1] / "README.md"
RECORDED = Path(__file__).resolve().parents[1] / "docs" / "demo-run.json"


def test_readme_states_the_recorded_demo_run():
    """README.md's demo numbers are those of the recorded run (docs/demo-run.json, the `demo-run.json` a
    `vgg demo` run writes), and that run had the current code's settings and seed: a change to the demo's
    settings or a hand-edited README number fails here until the demo is rerun and its record copied."""
    from vggnet.demo import record_settings

    record = json.loads(RECORDED.read_text())
    assert record["format"] == "vggnet.demo-run"
    assert record["settings"] == record_settings(quick=False, seed=record["settings"]["seed"]), (
        "docs/demo-run.json was written with other demo settings: rerun `vgg demo` and copy its demo-run.json")
    text = README.read_text()
    r = {k: (f"{v:.1f}" if v is not None else None) for k, v in record["results"].items()}
    m = re.search(r"\*\*([\d.]+)% top-1 accuracy\*\* \(top-1 error ([\d.]+)%, top-5 error ([\d.]+)%", text)
    assert m and m.groups() == (r["top1_accuracy"], r["top1_error"], r["top5_error"]), m and m.groups()
    m = re.search(r"\| localisation, protocol 1 [^|]*\| ([\d.]+)% error \(a fixed mean box: ([\d.]+)%\)", text)
    assert m and m.groups() == (r["localisation_protocol1_error"], r["localisation_mean_box_error"])
    m = re.search(r"\| localisation, full protocol [^|]*\| ([\d.]+)% error", text)
    assert m and m.group(1) == r["localisation_full_error"]
    m = re.search(r"\| ([\d.]+)% mAP \(VOC-2007 11-point; raw pixels: ([\d.]+)%\)", text)
    assert m and m.groups() == (r["transfer_mAP"], r["transfer_mAP_pixels"])
    # the time and the stage breakdown, and the machine
    t = {k: _minutes(v) for k, v in record["timings"].items()}
    stated = (f"took {_minutes(record['seconds'])} (dataset {t['dataset']}, training {t['train']}, evaluation "
              f"{t['evaluate']}, localisation {t['localisation']}, transfer {t['transfer']})")
    assert stated in " ".join(text.split()), stated
    machine = record["machine"]
    assert f"{machine['cores']}-core" in text and ", ".join(machine["flags"]) in text


def _check_contents(out: Path, classes: list[str], rows: list[dict], best: dict, printed: str) -> None:
    """What the files say, not only that they exist: each number is checked against another source."""
    data = out / "data"
    # the statistics are the training images' mean RGB (the demo samples 32 of 64: within a few levels),
    # and the net records the mean it was trained with
    stats = json.loads((data / "stats.json").read_text())
    pixels = np.concatenate([np.asarray(Image.open(f).convert("RGB"), np.float64).reshape(-1, 3)
                             for f in sorted((data / "train").rglob("*.jpg"))])
    assert np.allclose(stats["mean"], pixels.mean(0), atol=8.0), (stats["mean"], pixels.mean(0))
    assert len(stats["eigval"]) == 3 and all(v > 0 for v in stats["eigval"])
    assert best["preprocessing"]["mean"] == stats["mean"]
    # metrics.csv: finite losses, steps that add up, errors that are percentages; best.pt is its best epoch
    steps = [int(r["global_step"]) for r in rows]
    assert steps[0] > 0 and steps[1] == 2 * steps[0]
    for r in rows:
        assert math.isfinite(float(r["train_loss"])) and float(r["train_loss"]) > 0 and float(r["lr"]) > 0
        assert 0 <= float(r["val_top1_error"]) <= 100
        # top-5 error: an empty cell with 5 classes or fewer (every label is in the top 5)
        assert (r["val_top5_error"] == "" if len(classes) <= 5
                else float(r["val_top5_error"]) <= float(r["val_top1_error"]))
        assert int(r["bad_images"]) == 0
    errors = [float(r["val_top1_error"]) for r in rows]
    assert best["meta"]["epoch"] == 1 + errors.index(min(errors))  # best.pt is the first epoch with the least error
    assert best["meta"]["val_top1_error"] == min(errors)
    # results.json: every row's top-5 error <= its top-1 error; the overall numbers are those printed,
    # and they count every validation image on disk
    report = json.loads((out / "results.json").read_text())
    val_images = sorted((data / "val").rglob("*.jpg"))
    assert report["images"] == len(val_images) and report["classes"] == classes
    # (top-5 error is null, "n/a", when the quick demo has 5 classes or fewer)
    assert all(r["top5_error"] is None or r["top5_error"] <= r["top1_error"] for r in report["rows"])
    assert all((r["top5_error"] is None) == (len(classes) <= 5) for r in report["rows"])
    o = report["overall"]
    assert f"top-1 accuracy {o['top1_accuracy']:.2f}% (top-1 error {o['top1_error']:.2f}%" in printed
    final = next(line for line in printed.splitlines() if line.startswith("final ("))
    assert ("top-5 error n/a" in final) == (len(classes) <= 5), final  # n/a, not 0.00%, with few classes
    assert f"top-1 error {o['top1_error']:.2f}%" in (out / "results.md").read_text()
    # predictions.txt: each line names a validation image and its true class (its folder); the mark says
    # whether the first guess is that class; three guesses with decreasing probabilities
    by_name = {f.name: f.parent.name for f in val_images}
    for line in (out / "predictions.txt").read_text().splitlines():
        m = re.fullmatch(r"(ok |ERR) (\S+)\s+true (\S+)\s+top-3: (.*)", line)
        assert m, line
        mark, name, truth, guesses = m.groups()
        assert by_name[name] == truth
        top = [(g.rsplit(" ", 1)[0], float(g.rsplit(" ", 1)[1].rstrip("%"))) for g in guesses.split(", ")]
        assert len(top) == 3 and all(c in classes for c, _ in top)
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True) and sum(p for _, p in top) <= 100.1
        assert (mark == "ok ") == (top[0][0] == truth)
