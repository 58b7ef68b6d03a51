"""Shared test settings: small, deterministic, CPU."""

import os

import pytest
import torch

# Two cores shared with the rest of the suite: one intra-op thread is faster.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
