"""`vgg predict`'s library half (§3.2 applied to image files): the top-k classes of each file.

`Predictor(checkpoint, ...)` loads and checks a checkpoint once and answers
`predictor(paths)` for as many calls as wanted; `predict(checkpoint, paths, ...)`
builds one per call. Dense multi-scale evaluation by default, as `vgg eval`
(the passes, scales and checks are `vggnet.classification.evaluate`'s), or multi-crop, both,
or torchvision's single centre crop. A file that cannot be read is reported in
its own entry and the others are still predicted.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from vggnet.errors import DataError, UserError
from vggnet.classification.evaluate import CROP_PCT, METHODS, CenterCropEvalPreset, center_resize, default_test_scales
from vggnet.inference import amp_context, check_net, check_scales_fit, inference_execution, resolve_device, train_scale
from vggnet.inference import dense_posterior, multi_crop_posterior

__all__ = ["Predictor", "predict"]


class Predictor:
    """A checkpoint loaded once, for predicting image files: `Predictor(ckpt, ...)(paths)` gives what
    `predict(ckpt, paths, ...)` gives. Reuse one across calls (a service, a notebook, a benchmark) to load and
    check the weights once; `predict` builds one per call.

    Dense multi-scale evaluation by default; `method="center"` is torchvision's
    single centre crop (smallest side resized to crop_size / `crop_pct`).
    """

    def __init__(
        self,
        checkpoint: Any,
        *,
        scales: Sequence[int] | None = None,
        method: str = "dense",
        flip: bool = True,
        grid: int = 5,
        topk: int = 5,
        device: str | torch.device | None = None,
        amp: str = "off",
        batch_size: int = 64,
        channels_last: bool | str = False,
        crop_pct: float = CROP_PCT,
    ) -> None:
        from vggnet.data.transforms import DenseEvalPreset, MultiCropEvalPreset, Preprocessing
        from vggnet.checkpoint import model_from_checkpoint

        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        dev = resolve_device(device)
        amp, channels_last = inference_execution(amp, channels_last, dev)
        self.device, self.amp, self.method, self.flip, self.batch_size = dev, amp, method, flip, batch_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model, ckpt = model_from_checkpoint(checkpoint, kinds=("classifier",), use="vgg predict")
        pre = Preprocessing.from_dict(ckpt["preprocessing"])
        self.classes = list(ckpt["classes"])
        where = "checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint)
        check_net(model, self.classes, where)
        self.model = model.eval().to(dev, memory_format=self.memory_format)
        descriptions = (ckpt.get("meta") or {}).get("class_descriptions")
        self.descriptions = descriptions if descriptions is not None and len(descriptions) == len(self.classes) \
            else None
        qs = sorted(set(scales)) if scales else default_test_scales(train_scale(ckpt), model.crop_size)
        self.centers: list[CenterCropEvalPreset] = []
        if method == "center":
            qs = sorted(set(scales)) if scales else [center_resize(model.crop_size, crop_pct)]
            self.centers = [CenterCropEvalPreset(resize=q, crop_size=model.crop_size, preprocessing=pre) for q in qs]
        if qs[0] < model.crop_size:
            raise UserError(f"--test-scales: Q={qs[0]} is smaller than the crop size {model.crop_size}")
        check_scales_fit(model, qs, dev, method=method, flip=flip, amp=amp, where=f"net {model.name} of {where}")
        self.scales = qs
        self.dense = [DenseEvalPreset(scale=q, preprocessing=pre) for q in qs]
        self.crops = [MultiCropEvalPreset(scale=q, crop_size=model.crop_size, preprocessing=pre, grid=grid, flip=flip)
                      for q in qs]
        self.k = min(topk, len(self.classes))

    def __call__(self, images: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
        """Top-k classes of each image file: `[{"image", "top": [{"class", "index", "probability"}]}]`. A file
        that cannot be read gives `{"image", "error"}` and the others are still predicted."""
        from vggnet.data.datasets import image_file_problem
        from vggnet.data.images import load_image

        model, dev, cl, method = self.model, self.device, self.memory_format, self.method
        out: list[dict[str, Any]] = []
        for path in images:
            problem = image_file_problem(path)  # the rule training lists files by; a FIFO would block forever
            if problem is not None:
                out.append({"image": str(path), "error": f"{path}: {problem}"})
                continue
            try:
                # decoded once (at reduced size if large; at full size for torchvision's centre crop), rescaled
                # to every Q
                img = load_image(path, min_side=None if method == "center" else self.scales[-1])
            except DataError as exc:
                out.append({"image": str(path), "error": str(exc)})
                continue
            parts = []
            with torch.inference_mode(), amp_context(dev, self.amp):
                if method == "center":
                    parts.append(torch.stack([model(t(img).unsqueeze(0).to(dev)).float().softmax(dim=1)[0]
                                              for t in self.centers]).mean(0))
                if method in ("dense", "both"):
                    parts.append(torch.stack([dense_posterior(model, t(img).unsqueeze(0).to(dev, memory_format=cl),
                                                              flip=self.flip)[0] for t in self.dense]).mean(0))
                if method in ("multi-crop", "both"):
                    parts.append(torch.stack([multi_crop_posterior(model, t(img).to(dev, memory_format=cl),
                                                                   batch_size=self.batch_size)
                                              for t in self.crops]).mean(0))
            post = torch.stack(parts).mean(0).cpu()
            values, indices = post.topk(self.k)
            top = [{"class": self.classes[i], "index": int(i), "probability": float(v)}
                   for v, i in zip(values.tolist(), indices.tolist())]
            if self.descriptions is not None:  # ILSVRC synsets: n01440764 -> "tench, Tinca tinca"
                for t in top:
                    t["description"] = self.descriptions[t["index"]]
            out.append({"image": str(path), "top": top})
        return out


def predict(checkpoint: Any, images: Sequence[str | os.PathLike], **options: Any) -> list[dict[str, Any]]:
    """Top-k classes of each image file: `[{"image", "top": [{"class", "index", "probability"}]}]`.

    `options` are `Predictor`'s (scales, method, flip, grid, topk, device, amp,
    batch_size, channels_last, crop_pct). A file that cannot be read gives
    `{"image", "error"}` and the others are still predicted. Loads the
    checkpoint on every call: `Predictor` loads it once for many calls.
    """
    return Predictor(checkpoint, **options)(images)
