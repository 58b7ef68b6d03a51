"""Training-set statistics (§3.1): mean RGB and RGB PCA, exact on constructed images;
the JSON file training reads; `vgg stats`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vggnet.cli import main
from vggnet.data import SyntheticShapes, build_dataset, compute_stats, load_stats, save_stats
from vggnet.errors import DataError


class _Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0


def _two_colour(w=8, h=4, a=(0, 0, 0), b=(200, 100, 50)):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = a
    arr[:, w // 2:] = b
    return Image.fromarray(arr)


def test_mean_and_pca_exact_on_two_colours():
    # half black, half d = (200, 100, 50): mean d/2; covariance d d^T / 4, rank one:
    # first axis d/|d| with standard deviation |d|/2, the others zero
    stats = compute_stats(_Images([_two_colour(), _two_colour(16, 2)]))
    d = np.array([200.0, 100.0, 50.0])
    assert stats["mean"] == pytest.approx((d / 2).tolist(), abs=1e-3)
    assert stats["eigval"][0] == pytest.approx(np.linalg.norm(d) / 2, abs=1e-3)
    assert stats["eigval"][1:] == pytest.approx([0, 0], abs=1e-2)
    assert stats["eigvec"][0] == pytest.approx((d / np.linalg.norm(d)).tolist(), abs=1e-5)
    q = np.array(stats["eigvec"])
    assert np.allclose(q @ q.T, np.eye(3), atol=1e-5)  # orthonormal axes
    assert stats["std"] == pytest.approx((d / 2).tolist(), abs=1e-3)
    assert stats["images"] == 2 and stats["pixels"] == 64


def test_tensor_images_in_0_1_are_read_as_0_255():
    x = torch.full((3, 4, 4), 0.5)
    assert compute_stats(_Images([x]))["mean"] == pytest.approx([127.5] * 3)


def test_sample_is_seeded_subset():
    ds = SyntheticShapes(20, image_size=(32, 40))
    a = compute_stats(ds, sample=5, seed=1)
    assert a["images"] == 5
    assert compute_stats(ds, sample=5, seed=1) == a
    assert compute_stats(ds, sample=5, seed=2)["mean"] != a["mean"]
    assert compute_stats(ds)["images"] == 20


def test_files_read_raw_and_bad_ones_skipped(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (10, 10), (10, 20, 30)).save(tmp_path / "train" / "a" / "x.png")
    (tmp_path / "train" / "a" / "bad.jpg").write_bytes(b"")
    ds = build_dataset(tmp_path, transform=lambda img: 1 / 0)  # the transform is not used for statistics
    with pytest.warns(UserWarning, match="bad.jpg"):
        stats = compute_stats(ds)
    assert stats["mean"] == [10.0, 20.0, 30.0] and stats["bad_images"] == 1 and stats["images"] == 1


def test_save_load_round_trip_and_errors(tmp_path):
    stats = {"mean": [1.0, 2.0, 3.0], "eigval": [3.0, 2.0, 1.0], "eigvec": np.eye(3).tolist(), "images": 4}
    p = save_stats(tmp_path / "s.json", stats)
    assert load_stats(p) == stats
    with pytest.raises(DataError, match=r"nope\.json: statistics file not found"):
        load_stats(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match=r"bad\.json: not a JSON statistics file"):
        load_stats(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text(json.dumps({"mean": [1, 2], "eigval": [1, 1, 1], "eigvec": np.eye(3).tolist()}))
    with pytest.raises(DataError, match=r"short\.json: expected mean \[3\]"):
        load_stats(tmp_path / "short.json")
    (tmp_path / "miss.json").write_text(json.dumps({"mean": [1, 2, 3]}))
    with pytest.raises(DataError, match="missing eigval, eigvec"):
        load_stats(tmp_path / "miss.json")


def test_cli_stats_output_all_and_force(tmp_path, capsys):
    (tmp_path / "d" / "train" / "a").mkdir(parents=True)
    for i, c in enumerate([(0, 0, 0), (200, 100, 50)]):
        Image.new("RGB", (8, 8), c).save(tmp_path / "d" / "train" / "a" / f"{i}.png")
    out = tmp_path / "o" / "stats.json"
    assert main(["stats", str(tmp_path / "d"), "--all", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "100.000" in printed and str(out) in printed
    stats = load_stats(out)
    assert stats["mean"] == [100.0, 50.0, 25.0]
    assert stats["eigval"][0] == pytest.approx(math.sqrt(200**2 + 100**2 + 50**2) / 2, abs=1e-3)
    assert main(["stats", str(tmp_path / "d"), "--output", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["stats", str(tmp_path / "d"), "--output", str(out), "--force", "--sample", "1"]) == 0
    assert load_stats(out)["images"] == 1
    assert main(["stats", str(tmp_path / "nothing")]) == 2
    assert "no such directory" in capsys.readouterr().err
