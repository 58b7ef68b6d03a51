"""`POST /v1/localize`: Appendix A's full protocol (as `vgg localize predict`) on uploaded images.

The classification net of the server ranks the classes, the localisation net's dense boxes are merged
greedily (OverFeat), and each of the top-5 classes gets its box in the uploaded image's pixels, clipped to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["BoxPredictor", "UploadedImages"]


class UploadedImages(Dataset):
    """Decoded images in memory as a `vggnet.data`-like dataset (label 0), for `localise_images`."""

    def __init__(self, images: Sequence[Any], classes: Sequence[str], transform: Any = None) -> None:
        self.images = list(images)
        self.samples = [(f"<upload {i}>", 0) for i in range(len(self.images))]
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        out = self.transform(self.images[i]) if self.transform else self.images[i]
        return (out[0], 0, out[1]) if isinstance(out, tuple) else (out, 0)


class BoxPredictor:
    """A localisation checkpoint with the classification checkpoint that ranks its classes."""

    def __init__(self, localiser: str | Path, classifier: str | Path, *, device: torch.device,
                 scales: Sequence[int] | None = None, identity: dict[str, Any] | None = None) -> None:
        from vggnet.localisation.task import load_classifier_checkpoint, load_localiser

        self.loc = load_localiser(str(localiser), flag="--localiser")
        self.classifier = load_classifier_checkpoint(str(classifier), flag="--checkpoint")
        if list(self.classifier.get("classes", [])) != self.loc.classes:
            from vggnet.errors import CheckpointError

            raise CheckpointError(f"--localiser {localiser}: its {len(self.loc.classes)} classes differ from "
                                  f"--checkpoint {classifier}'s {len(self.classifier.get('classes', []))}")
        self.device = device
        self.scales = sorted(set(scales)) if scales else [self.loc.default_scale()]
        self.identity = dict(identity or {})
        self.decode_side = None  # full size: boxes are given in the uploaded image's pixels

    def predict(self, images: Sequence[Any]) -> list[list[dict[str, Any]]]:
        """Top-5 `{"rank", "class", "index", "box": [x1, y1, x2, y2], "score"}` of each RGB image."""
        from vggnet.localisation.full_protocol import localise_images

        res = localise_images([self.loc], [self.classifier], UploadedImages(images, self.loc.classes),
                              scales=self.scales, device=self.device)
        out = []
        for i, img in enumerate(images):
            w, h = img.size
            sy, sx = h / res.sizes[i][0], w / res.sizes[i][1]
            rows = []
            for k, (c, b, s) in enumerate(res.predictions["merge"][i]):
                box = [min(max(b[0] * sx, 0.0), w), min(max(b[1] * sy, 0.0), h),
                       min(max(b[2] * sx, 0.0), w), min(max(b[3] * sy, 0.0), h)]
                rows.append({"rank": k + 1, "class": res.classes[c], "index": int(c),
                             "box": [round(v, 2) for v in box], "score": float(s)})
            out.append(rows)
        return out
