"""Training-set colour statistics (§3.1): the mean RGB that the paper subtracts, and
the RGB principal components of AlexNet's colour augmentation.

`compute_stats` returns, in 0-255 units:

    mean    [3]       mean R, G, B over all pixels of the (sampled) training images
    eigval  [3]       standard deviation of the pixels along each principal axis
                      (the square roots of the eigenvalues of the 3x3 RGB covariance),
                      largest first
    eigvec  [3][3]    eigvec[i] is the unit principal axis of eigval[i]
    std     [3]       per-channel standard deviation (for torchvision-style normalisation)

`eigval` holds standard deviations rather than variances so that AlexNet's shift
`sum_i alpha_i * eigval_i * eigvec_i` with alpha_i ~ N(0, 0.1) is in grey levels,
a tenth of the natural spread along each axis (about 10 levels on ImageNet). With
variances in 0-255 units the same formula would move colours by hundreds of levels.

Images are decoded at reduced size (JPEG draft, smallest side >= 256, as training
sees them after rescaling), so a sample of a few thousand ImageNet images takes
seconds per worker. `vgg stats DATA` prints the numbers and writes them as JSON
(`--output`, default DATA/stats.json) for `vgg train` to read.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vggnet.errors import DataError, UserError

__all__ = ["compute_stats", "save_stats", "load_stats"]

_KEYS = ("mean", "eigval", "eigvec")


def _moments(img: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    # (13,) float64: pixel count, sum of RGB (3), sum of RGB outer products (9)
    if isinstance(img, Image.Image):
        a = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.float64).reshape(-1, 3)
    elif isinstance(img, torch.Tensor):
        t = img.detach().to(torch.float64)
        if t.is_floating_point() and img.dtype != torch.uint8 and float(t.max()) <= 1.0:
            t = t * 255.0
        a = t.reshape(3, -1).T.numpy()
    else:
        a = np.asarray(img, dtype=np.float64).reshape(-1, 3)
    return torch.from_numpy(np.concatenate([[a.shape[0]], a.sum(0), (a.T @ a).ravel()]))


class _MomentsView(Dataset):
    """Per-image moments of the raw pixels of another dataset, decodable in workers."""

    def __init__(self, dataset: Any, indices: list[int], min_side: int) -> None:
        self.dataset, self.indices, self.min_side = dataset, indices, min_side

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> torch.Tensor | None:
        from vggnet.data.images import BadImageError, load_image

        i = self.indices[k]
        ds = self.dataset
        if hasattr(ds, "generate"):  # SyntheticShapes
            return _moments(ds.generate(i)[0])
        if hasattr(ds, "samples") and isinstance(ds.samples[i][0], str) and Path(ds.samples[i][0]).exists():
            path = ds.samples[i][0]
            try:
                return _moments(load_image(path, min_side=self.min_side))
            except BadImageError as exc:
                if getattr(ds, "strict", False):
                    raise
                warnings.warn(f"skipping bad image {exc}", stacklevel=2)
                return None
        item = ds[i]
        if item is None:
            return None
        return _moments(item[0] if isinstance(item, tuple) else item)


def compute_stats(dataset: Any, sample: int | None = None, *, seed: int = 0, workers: int = 0,
                  min_side: int = 256) -> dict[str, Any]:
    """Mean RGB and RGB PCA of `dataset` (its raw images, not its transform's output).

    `sample`: use that many images drawn at random (seeded), or all when None.
    Works with `build_dataset` datasets (reads the files), `SyntheticShapes`, or any
    dataset whose items start with a Pillow image or an RGB tensor.
    """
    n = len(dataset)
    if n == 0:
        raise DataError("compute_stats: the dataset has no images")
    if sample is not None and sample < 1:
        raise UserError(f"--sample: expected a number of images >= 1, got {sample}")
    if sample is None or sample >= n:
        indices = list(range(n))
    else:
        g = torch.Generator().manual_seed(seed)
        indices = sorted(torch.randperm(n, generator=g)[:sample].tolist())
    loader = DataLoader(_MomentsView(dataset, indices, min_side), batch_size=None, num_workers=workers)
    total = torch.zeros(13, dtype=torch.float64)
    bad = 0
    for m in loader:
        if m is None:
            bad += 1
        else:
            total += m
    count = total[0].item()
    if count == 0:
        raise DataError(f"compute_stats: none of the {len(indices)} sampled images could be read")
    mean = total[1:4] / count
    cov = total[4:].view(3, 3) / count - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh(cov)  # ascending; columns are eigenvectors
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0), evecs[:, order]
    # fix each axis's sign (eigh's is arbitrary) so the numbers are reproducible: largest component positive
    signs = torch.sign(evecs[evecs.abs().argmax(0), torch.arange(3)])
    evecs = evecs * signs
    return {
        "mean": [round(v, 4) for v in mean.tolist()],
        "eigval": [round(math.sqrt(v), 4) for v in evals.tolist()],
        "eigvec": [[round(v, 6) for v in row] for row in evecs.T.tolist()],
        "std": [round(math.sqrt(max(v, 0.0)), 4) for v in torch.diagonal(cov).tolist()],
        "images": len(indices) - bad,
        "bad_images": bad,
        "pixels": int(count),
    }


def _validate(stats: Any, where: str) -> dict[str, Any]:
    if not isinstance(stats, Mapping):
        raise DataError(f"{where}: expected a JSON object with {', '.join(_KEYS)}")
    missing = [k for k in _KEYS if k not in stats]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)} (write it with `vgg stats DATA`)")
    try:
        mean = np.asarray(stats["mean"], dtype=np.float64)
        eigval = np.asarray(stats["eigval"], dtype=np.float64)
        eigvec = np.asarray(stats["eigvec"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: mean, eigval and eigvec must be numbers: {exc}") from None
    if mean.shape != (3,) or eigval.shape != (3,) or eigvec.shape != (3, 3):
        raise DataError(f"{where}: expected mean [3], eigval [3], eigvec [3][3]; got shapes "
                        f"{list(mean.shape)}, {list(eigval.shape)}, {list(eigvec.shape)}")
    if not (np.isfinite(mean).all() and np.isfinite(eigval).all() and np.isfinite(eigvec).all()):
        raise DataError(f"{where}: statistics must be finite numbers")
    return dict(stats)


def save_stats(path: str | os.PathLike, stats: Mapping[str, Any]) -> Path:
    """Write the statistics as JSON, atomically (a temporary file renamed into place)."""
    path = Path(path)
    data = _validate(stats, str(path))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_stats(path: str | os.PathLike) -> dict[str, Any]:
    """Read statistics written by `save_stats` / `vgg stats`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: statistics file not found (write it with `vgg stats DATA --output {path}`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a JSON statistics file: {exc}") from None
    return _validate(data, str(path))


# --------------------------------------------------------------------------- vgg stats


