"""`vgg demo --quick`: the whole pipeline end to end leaves a complete run folder."""

from __future__ import annotations

import csv
import json

import torch

from vggnet.cli import main


def test_demo_quick_leaves_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    try:
        assert main(["demo", "--quick", "--output-dir", str(out), "--workers", "0", "--threads", "1",
                     "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)  # the demo sets the process's thread count
    printed = capsys.readouterr().out
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
