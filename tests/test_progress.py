"""Progress bars are drawn on a terminal only (`vggnet.progress`): a log file gets no bar fragments."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from torch.utils.data import Dataset

from vggnet import vgg
from vggnet.inference import Net, identity_preprocessing, run_pass
from vggnet.progress import progress_bar, stderr_is_terminal


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_stderr_is_a_file(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert not stderr_is_terminal()
    items = [1, 2, 3]
    assert progress_bar(items, total=3, desc="Q=64", enabled=True) is items
    assert progress_bar(None, total=3, desc="epoch 1/2") is None
    assert log.getvalue() == ""


def test_bar_on_a_terminal_unless_disabled(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    assert stderr_is_terminal()
    assert list(progress_bar([1, 2, 3], total=3, desc="Q=64", mininterval=0)) == [1, 2, 3]
    assert "Q=64" in screen.getvalue() and "3/3" in screen.getvalue()
    items = [1, 2]
    assert progress_bar(items, desc="Q=64", enabled=False) is items  # --no-progress


class Images(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)), i % 2


@pytest.mark.parametrize("terminal", [False, True])
def test_evaluation_pass_draws_a_bar_only_on_a_terminal(monkeypatch, terminal):
    """The shared pass of evaluation, localisation and transfer, asked for a bar (as `vgg demo` asks)."""
    stream = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    torch.manual_seed(0)
    model = vgg("A", 2, width=1 / 16, fc_width=16, crop_size=32).eval()
    net = Net(model=model, preprocessing=identity_preprocessing(), classes=["a", "b"], name="tiny")
    out, labels = run_pass([net], Images(), range(4), methods=["dense"], flip=True, grid=5, batch_size=4,
                           workers=0, device=torch.device("cpu"), amp="off", channels_last=False, progress=True,
                           desc="Q=32")
    assert out[(0, "dense")].shape == (4, 2) and labels.tolist() == [0, 1, 0, 1]
    assert ("Q=32" in stream.getvalue()) == terminal
