"""Training's live output: TensorBoard scalars (with purge on resume), the optional
TensorBoard dependency, and the tqdm progress bar (rank 0 only, on stderr).

The runs are test_train.py's TINY ones (4 optimizer steps per epoch), most cut
short with `max_steps`, so that the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import math
import re
import sys

import pytest
import torch

import vggnet.engine.loop as train_module
from test_train import STEPS_PER_EPOCH, read_metrics, tiny  # tests/ is on sys.path (rootdir conftest)
from vggnet import distributed
from vggnet import train

TRAIN_TAGS = {"train/loss", "train/lr", "train/images_per_s"}
# 4 classes: top-5 error is n/a (every label is in the top 5), so it has no scalar
EPOCH_TAGS = {"epoch/train_loss", "epoch/val_loss", "epoch/val_top1_error", "epoch/lr"}
LR = 0.005  # not the default, so that a logged lr of 0.01 cannot pass


def scalars(out) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard's Python reader shows them (purges applied)."""
    ea_module = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_module.EventAccumulator(str(out / "tensorboard"), size_guidance={ea_module.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def steps(points) -> list[int]:
    return [s for s, _ in points]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)  # event files hold float32


# --------------------------------------------------------------------------- TensorBoard


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    """2 epochs (8 steps) with a TensorBoard point every 3 steps."""
    pytest.importorskip("torch.utils.tensorboard")
    out = tmp_path_factory.mktemp("tb")
    result = train(tiny(out, lr=LR, log_every=3))
    assert result["global_step"] == 2 * STEPS_PER_EPOCH and result["stopped"] == "epochs"
    return out, result, scalars(out)


def test_tensorboard_tags_and_steps(tb_run):
    out, result, tb = tb_run
    assert [p.name for p in (out / "tensorboard").iterdir()][0].startswith("events.out.tfevents.")
    assert set(tb) == TRAIN_TAGS | EPOCH_TAGS
    # every log_every-th global step (3, 6; across the epoch boundary), once
    for tag in TRAIN_TAGS:
        assert steps(tb[tag]) == [3, 6], tag
    # one point per epoch, at the global step of its end (that of metrics.csv)
    ends = [row["global_step"] for row in result["history"]]
    assert ends == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for tag in EPOCH_TAGS:
        assert steps(tb[tag]) == ends, tag


def test_tensorboard_values(tb_run):
    out, result, tb = tb_run
    for tag, points in tb.items():
        assert all(math.isfinite(v) for _, v in points), tag
    assert all(close(v, LR) for _, v in tb["train/lr"] + tb["epoch/lr"])
    assert all(v > 0 for _, v in tb["train/loss"] + tb["train/images_per_s"])
    # the epoch points are the rows of metrics.csv
    for key in ("train_loss", "val_loss", "val_top1_error", "lr"):
        assert all(close(v, row[key]) for (_, v), row in zip(tb[f"epoch/{key}"], result["history"], strict=True)), key
        csv_values = [float(r[key]) for r in read_metrics(out)]
        assert all(math.isclose(v, c, rel_tol=1e-5) for (_, v), c in zip(tb[f"epoch/{key}"], csv_values, strict=True))
    assert all(0 <= top1 <= 100 for _, top1 in tb["epoch/val_top1_error"])
    assert all(row["val_top5_error"] is None for row in result["history"])  # n/a with 4 classes


def test_resume_purges_what_the_interrupted_run_logged_after_its_checkpoint(tmp_path):
    """Steps 1-5 with a checkpoint at step 3 (and the epoch's at 4), then a resume from step 3,
    as after a kill -9 or a truncated newer checkpoint: each step and epoch is shown once,
    the points up to the checkpoint (step 3) are kept, the later ones are those of the resumed run."""
    pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.summary.writer import event_file_writer

    # the process's 10th event writer: the resume's file name ends in .10, which sorts before the first run's .9
    # when both start within one second (as in a long test session, where this once failed)
    counter = event_file_writer._global_uid
    with counter._lock:
        counter._value = 9
    first = train(tiny(tmp_path, lr=LR, log_every=1, max_steps=5, checkpoint_every=3, keep=100))
    assert first["global_step"] == 5
    before = scalars(tmp_path)
    assert steps(before["train/loss"]) == [1, 2, 3, 4, 5] and steps(before["epoch/val_loss"]) == [4]
    resumed = train(tiny(tmp_path, lr=LR, log_every=1, resume=str(tmp_path / "checkpoint_00000003.pt")))
    assert resumed["global_step"] == 2 * STEPS_PER_EPOCH
    tb = scalars(tmp_path)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    for tag in TRAIN_TAGS:
        assert steps(tb[tag]) == list(range(1, 2 * STEPS_PER_EPOCH + 1)), tag
    for tag in EPOCH_TAGS:
        assert steps(tb[tag]) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH], tag
    # steps 1-3 are the first run's (kept, not rewritten); the resume is exact, so 4-5 are equal anyway
    assert tb["train/loss"][:3] == before["train/loss"][:3]
    assert [v for _, v in tb["train/loss"][3:5]] == pytest.approx([v for _, v in before["train/loss"][3:5]])
    # train/loss is each step's loss: an epoch's mean is its epoch/train_loss (and metrics.csv's)
    losses = [v for _, v in tb["train/loss"]]
    for e, (_, epoch_loss) in enumerate(tb["epoch/train_loss"]):
        mean = sum(losses[e * STEPS_PER_EPOCH:(e + 1) * STEPS_PER_EPOCH]) / STEPS_PER_EPOCH
        assert math.isclose(mean, epoch_loss, rel_tol=1e-5)
        assert math.isclose(epoch_loss, resumed["history"][e]["train_loss"], rel_tol=1e-6)


def test_without_tensorboard_training_writes_metrics_csv_and_no_tensorboard_folder(tmp_path, monkeypatch):
    # as if neither tensorboard nor torch's wrapper of it could be imported
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError):
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    result = train(tiny(tmp_path, epochs=1))
    assert result["stopped"] == "epochs" and result["global_step"] == STEPS_PER_EPOCH
    assert not (tmp_path / "tensorboard").exists()
    assert [r["epoch"] for r in read_metrics(tmp_path)] == ["1"]
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "last.pt").is_file()


# --------------------------------------------------------------------------- progress bar


@pytest.fixture
def bars(monkeypatch):
    """tqdm as train.py uses it, redrawn at every update (its real mininterval would show only the
    empty bar in a run this short), with stderr taken for a terminal (elsewhere there is no bar:
    tests/test_cli_vocabulary.py); the keyword arguments of each bar made are recorded, except
    those of disabled bars (validation's, in training)."""
    import tqdm as tqdm_package

    monkeypatch.setattr("vggnet.progress.stderr_is_terminal", lambda: True)  # capsys's stream, as a terminal

    made: list[dict] = []

    class EveryUpdate(tqdm_package.tqdm):
        def __init__(self, *args, **kwargs):
            if not kwargs.get("disable"):
                made.append(dict(kwargs))
            super().__init__(*args, **{**kwargs, "mininterval": 0})

    monkeypatch.setattr(tqdm_package, "tqdm", EveryUpdate)
    return made


def test_progress_bar_on_stderr_with_epoch_loss_lr_and_speed(tmp_path, capsys, bars):
    train(tiny(tmp_path, lr=LR, max_steps=2, progress=True))
    out, err = capsys.readouterr()
    assert len(bars) == 1 and bars[0]["total"] == STEPS_PER_EPOCH and bars[0]["file"] is sys.stderr
    # the bar after each step: description, count of the epoch's steps, then the postfix
    assert re.search(r"epoch 1/2: +\d+%\|[^|]*\| 1/4 \[", err), err
    assert re.search(r"epoch 1/2: +\d+%\|[^|]*\| 2/4 \[", err), err
    postfix = re.findall(r"loss (\d+\.\d{4}) lr ([\d.e+-]+) (\d+\.\d) img/s", err)
    assert len(postfix) >= 2, err
    assert all(math.isfinite(float(loss)) and float(lr) == LR and float(ips) > 0 for loss, lr, ips in postfix)
    assert "step/s" in err  # tqdm's rate with unit="step" (and its ETA before it)
    # the log goes to stdout, the bar does not
    assert "stopped after --max-steps 2" in out and "epoch 1/2:" not in out and "step/s" not in out


def test_progress_bar_ends_with_the_epoch_and_each_epoch_has_its_own(tmp_path, capsys, bars):
    train(tiny(tmp_path, epochs=2, max_steps=STEPS_PER_EPOCH + 1, progress=True))
    _, err = capsys.readouterr()
    assert [b["desc"] for b in bars] == ["epoch 1/2", "epoch 2/2"]
    assert re.search(r"epoch 1/2: 100%\|[^|]*\| 4/4 \[", err) and re.search(r"epoch 2/2: +\d+%\|[^|]*\| 1/4 \[", err)


def test_no_progress_bar_with_progress_false(tmp_path, capsys, bars):
    train(tiny(tmp_path, max_steps=2, progress=False))
    out, err = capsys.readouterr()
    assert bars == []
    for text in ("epoch 1/", "step/s", "img/s", "%|"):
        assert text not in err and text not in out, text
    assert "stopped after --max-steps 2" in out  # the run did run and log


def test_progress_bar_only_on_rank_0(tmp_path, capsys, bars, monkeypatch):
    """A process other than rank 0 (here: this one, told it is not the main process) draws no bar
    and prints nothing, even with progress=True. (A stats file: only rank 0 computes them.)"""
    from vggnet.data.stats import save_stats

    stats = save_stats(tmp_path / "stats.json", {"mean": [120.0] * 3, "eigval": [1.0, 0.5, 0.25],
                                                 "eigvec": torch.eye(3).tolist()})

    class NotMain(distributed.DistInfo):
        @property
        def is_main(self) -> bool:
            return False

    monkeypatch.setattr(train_module.distributed, "setup",
                        lambda device="auto": NotMain(0, 1, 0, torch.device("cpu"), None))
    result = train(tiny(tmp_path / "run", max_steps=2, progress=True, stats=str(stats)))
    assert result["global_step"] == 2
    out, err = capsys.readouterr()
    assert bars == []
    assert "epoch 1/" not in err and "step/s" not in err and out == ""
    assert not (tmp_path / "run").exists()  # nor files (TensorBoard's included)


def test_a_resumed_runs_event_file_sorts_after_the_earlier_ones(tmp_path):
    # TensorBoard reads event files in name order; names start with the second the writer opened, then end in
    # the process's writer count, so two writers of one second can sort out of order (.10 before .9)
    import time

    from vggnet.engine.outputs import _after_earlier_event_files

    folder = tmp_path / "tensorboard"
    folder.mkdir()
    (folder / f"events.out.tfevents.{int(time.time()) - 5:010d}.host.1.9").touch()
    t0 = time.monotonic()
    _after_earlier_event_files(folder)
    assert time.monotonic() - t0 < 0.5  # an older file: nothing to wait for
    now = int(time.time())
    (folder / f"events.out.tfevents.{now:010d}.host.1.9").touch()
    _after_earlier_event_files(folder)
    assert int(time.time()) > now  # a new file of this second would sort before .9: waited for the next second
    (folder / f"events.out.tfevents.{now + 3600:010d}.host.1.9").touch()  # a clock an hour ahead
    t0 = time.monotonic()
    _after_earlier_event_files(folder)
    assert time.monotonic() - t0 < 0.5  # waiting would not help: no hang
