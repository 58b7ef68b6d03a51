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
from PIL import Image

from vggnet.errors import DataError, UserError
from vggnet.classification.evaluate import CROP_PCT, METHODS, CenterCropEvalPreset, center_resize, default_test_scales
from vggnet.inference import amp_context, check_net, check_scales_fit, inference_execution, resolve_device, train_scale
from vggnet.inference import dense_posterior, multi_crop_posterior

__all__ = ["Predictor", "predict", "as_images", "as_rgb_image", "check_method", "check_topk"]


class Predictor:
    """A checkpoint loaded once, for predicting images: `Predictor(ckpt, ...)(images)` gives what
    `predict(ckpt, images, ...)` gives. Reuse one across calls (a service, a notebook, a benchmark) to load and
    check the weights once; `predict` builds one per call.

    Images are paths, Pillow images, numpy arrays (H, W), (H, W, 3) or a batch (N, H, W, 3), or tensors
    (3, H, W) or a batch (N, 3, H, W); uint8, or float in [0, 1] (rounded to 8 bits, as a saved file would
    be). Every kind becomes the same 8-bit RGB picture, so an array of a file's pixels gets the file's numbers.
    Dense multi-scale evaluation by default; `method="center"` is torchvision's
    single centre crop (smallest side resized to crop_size / `crop_pct`). `method` and `topk` may also be
    given per call. `threads` sets PyTorch's CPU threads (process-wide, as `--threads`).
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
        threads: int | None = None,
    ) -> None:
        from vggnet.data.transforms import Preprocessing
        from vggnet.checkpoint import model_from_checkpoint
        from vggnet.execution import set_threads

        check_method(method)
        set_threads(threads)
        dev = resolve_device(device)
        amp, channels_last = inference_execution(amp, channels_last, dev)
        self.device, self.amp, self.method, self.flip, self.batch_size = dev, amp, method, flip, batch_size
        self.grid, self.crop_pct = grid, crop_pct
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model, ckpt = model_from_checkpoint(checkpoint, kinds=("classifier",), use="vgg predict")
        self.preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
        self.classes = list(ckpt["classes"])
        self.where = "checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint)
        check_net(model, self.classes, self.where)
        self.model = model.eval().to(dev, memory_format=self.memory_format)
        descriptions = (ckpt.get("meta") or {}).get("class_descriptions")
        self.descriptions = descriptions if descriptions is not None and len(descriptions) == len(self.classes) \
            else None
        self.given_scales = sorted(set(scales)) if scales else None
        self.default_scales = default_test_scales(train_scale(ckpt), model.crop_size)
        self.presets: dict[str, tuple[list[int], list[Any]]] = {}
        self.scales = self.method_presets(method)[0]
        self.k = min(topk, len(self.classes))

    def method_presets(self, method: str) -> tuple[list[int], list[Any]]:
        """(scales, presets) of `method`, built and checked (scales against the crop and memory) on first use."""
        from vggnet.data.transforms import DenseEvalPreset, MultiCropEvalPreset

        check_method(method)
        if method in self.presets:
            return self.presets[method]
        model, pre = self.model, self.preprocessing
        if method == "center":
            qs = self.given_scales or [center_resize(model.crop_size, self.crop_pct)]
        else:
            qs = self.given_scales or self.default_scales
        if qs[0] < model.crop_size:
            raise UserError(f"--test-scales: Q={qs[0]} is smaller than the crop size {model.crop_size}")
        check_scales_fit(model, qs, self.device, method=method, flip=self.flip, amp=self.amp,
                         where=f"net {model.name} of {self.where}")
        presets: list[Any] = []
        if method == "center":
            presets += [CenterCropEvalPreset(resize=q, crop_size=model.crop_size, preprocessing=pre) for q in qs]
        if method in ("dense", "both"):
            presets += [DenseEvalPreset(scale=q, preprocessing=pre) for q in qs]
        if method in ("multi-crop", "both"):
            presets += [MultiCropEvalPreset(scale=q, crop_size=model.crop_size, preprocessing=pre, grid=self.grid,
                                            flip=self.flip) for q in qs]
        self.presets[method] = (list(qs), presets)
        return self.presets[method]

    def decode_side(self, method: str) -> int | None:
        """The smallest side a JPEG may be draft-decoded to for `method` (None: full size, torchvision's way)."""
        return None if method == "center" else self.method_presets(method)[0][-1]

    def inputs(self, image: Image.Image, method: str | None = None) -> list[torch.Tensor]:
        """The preprocessed inputs of one decoded RGB image for `method`: one tensor per preset (a (3, crop, crop)
        centre crop, a (3, H, W) image rescaled to Q for dense evaluation, or the (2 * grid^2, 3, crop, crop)
        multi-crops). This is all of the per-image work of `posteriors`; a service runs it in the request's own
        thread, so that its single forward-pass thread only stacks ready tensors."""
        return [t(image) for t in self.method_presets(method or self.method)[1]]

    def posteriors(self, images: Sequence[Image.Image], method: str | None = None) -> torch.Tensor:
        """(N, classes) posteriors of decoded RGB images, averaged over `method`'s scales (and, for `both`,
        over dense and multi-crop, as `vgg eval`)."""
        return self.posteriors_of_inputs([self.inputs(img, method) for img in images], method)

    def posteriors_of_inputs(self, inputs: Sequence[Sequence[torch.Tensor]], method: str | None = None
                             ) -> torch.Tensor:
        """`posteriors` of images already preprocessed by `inputs` (one list of tensors per image, for the same
        `method`). Inputs of the same shape go through the net together, one pass per shape (dense evaluation
        gives each aspect ratio its own shape: those are never padded, which would change the score map):
        this is the batched forward pass a service runs for many requests at once."""
        method = method or self.method
        _, presets = self.method_presets(method)
        model, dev, cl = self.model, self.device, self.memory_format
        n = len(inputs)
        if n == 0:
            return torch.empty(0, len(self.classes))
        if any(len(x) != len(presets) for x in inputs):
            raise ValueError(f"posteriors_of_inputs: expected {len(presets)} inputs per image for method "
                             f"{method!r} (from Predictor.inputs), got {sorted({len(x) for x in inputs})}")
        by_kind: dict[str, list[torch.Tensor]] = {}
        with torch.inference_mode(), amp_context(dev, self.amp):
            for j, t in enumerate(presets):
                kind = ("center" if isinstance(t, CenterCropEvalPreset)
                        else "crops" if hasattr(t, "grid") else "dense")
                post = torch.empty(n, len(self.classes))
                xs = [x[j] for x in inputs]
                if kind == "crops":  # (2 * grid^2, 3, crop, crop) per image: each image is its own batch
                    for i, x in enumerate(xs):
                        post[i] = multi_crop_posterior(model, x.to(dev, memory_format=cl),
                                                       batch_size=self.batch_size).float().cpu()
                else:
                    groups: dict[tuple[int, ...], list[int]] = {}
                    for i, x in enumerate(xs):
                        groups.setdefault(tuple(x.shape), []).append(i)
                    for idx in groups.values():
                        for start in range(0, len(idx), self.batch_size):
                            part = idx[start:start + self.batch_size]
                            x = torch.stack([xs[i] for i in part]).to(dev, memory_format=cl)
                            p = (model(x).float().softmax(dim=1) if kind == "center"
                                 else dense_posterior(model, x, flip=self.flip))
                            post[part] = p.float().cpu()
                by_kind.setdefault("dense" if kind == "dense" else kind, []).append(post)
        # mean over scales within a method, then over methods (Table 5's combination for `both`)
        return torch.stack([torch.stack(v).mean(0) for v in by_kind.values()]).mean(0)

    def top(self, post: torch.Tensor, topk: int | None = None) -> list[dict[str, Any]]:
        """`[{"class", "index", "probability"(, "description")}]`: the top-k of one posterior vector."""
        k = self.k if topk is None else check_topk(topk, len(self.classes))
        values, indices = post.topk(k)
        top = [{"class": self.classes[i], "index": int(i), "probability": float(v)}
               for v, i in zip(values.tolist(), indices.tolist())]
        if self.descriptions is not None:  # ILSVRC synsets: n01440764 -> "tench, Tinca tinca"
            for t in top:
                t["description"] = self.descriptions[t["index"]]
        return top

    def __call__(self, images: Any, *, method: str | None = None, topk: int | None = None) -> list[dict[str, Any]]:
        """Top-k classes of each image: `[{"image", "top": [{"class", "index", "probability"}]}]`, in input
        order (a batch array or tensor counts as its images). A path that cannot be read gives
        `{"image", "error"}` and the others are still predicted; `"image"` is the path, or `<array i>`,
        `<tensor i>`, `<image i>` for an image given in memory."""
        method = method or self.method
        check_method(method)
        if topk is not None:
            check_topk(topk, len(self.classes))
        side = self.decode_side(method)
        out: list[dict[str, Any]] = []
        for name, img in as_images(images, side):
            if isinstance(img, str):  # the reason a path could not be read
                out.append({"image": name, "error": img})
                continue
            out.append({"image": name, "top": self.top(self.posteriors([img], method)[0], topk)})
        return out


def check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def check_topk(topk: Any, classes: int) -> int:
    """`topk` as a count of classes to return (at most the number of classes), or a `UserError`."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise UserError(f"top_k must be a positive integer, got {topk!r}")
    return min(topk, classes)


def as_rgb_image(image: Any, where: str) -> Image.Image:
    """One in-memory image (Pillow, numpy (H, W[, 3|4]), tensor (3, H, W)) as an 8-bit RGB Pillow image."""
    import numpy as np

    from vggnet.data.images import ensure_decoded

    if isinstance(image, Image.Image):
        return ensure_decoded(image, None)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise UserError(f"{where}: expected a (3, H, W) or (N, 3, H, W) tensor, got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise UserError(f"{where}: expected an (H, W), (H, W, 3) or (N, H, W, 3) array, got shape {a.shape}")
    if a.dtype != np.uint8:
        if a.dtype.kind not in "fiub":
            raise UserError(f"{where}: expected uint8 pixels or floats in [0, 1], got dtype {a.dtype}")
        if a.dtype.kind == "f":
            if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1 or np.isnan(a).any()):
                raise UserError(f"{where}: float pixels must lie in [0, 1]")
            a = np.rint(a * 255.0)
        elif a.size and (a.min() < 0 or a.max() > 255):
            raise UserError(f"{where}: integer pixels must lie in [0, 255]")
        a = a.astype(np.uint8)
    return ensure_decoded(Image.fromarray(np.ascontiguousarray(a)), None)


def as_images(images: Any, min_side: int | None) -> list[tuple[str, Image.Image | str]]:
    """`(name, RGB image or the reason it cannot be read)` for each image of `images` (one image, a batch, or a
    sequence of either); a path is decoded here (at reduced size for large JPEGs, when `min_side` is given)."""
    import numpy as np

    from vggnet.data.datasets import image_file_problem
    from vggnet.data.images import load_image

    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    elif isinstance(images, torch.Tensor):
        images = list(images) if images.ndim == 4 else [images]
    elif isinstance(images, np.ndarray):
        images = list(images) if images.ndim == 4 else [images]
    out: list[tuple[str, Image.Image | str]] = []
    for i, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)):
            problem = image_file_problem(item)  # the rule training lists files by; a FIFO would block forever
            if problem is not None:
                out.append((str(item), f"{item}: {problem}"))
                continue
            try:
                out.append((str(item), load_image(item, min_side=min_side)))
            except DataError as exc:
                out.append((str(item), str(exc)))
            continue
        if isinstance(item, (torch.Tensor, np.ndarray)) and item.ndim == 4:
            raise UserError(f"images[{i}]: a batch inside a list; give the batch itself or a list of images")
        kind = ("image" if isinstance(item, Image.Image) else "tensor" if isinstance(item, torch.Tensor)
                else "array")
        if not isinstance(item, (Image.Image, torch.Tensor, np.ndarray)):
            raise UserError(f"images[{i}]: expected a path, a Pillow image, a numpy array or a tensor, "
                            f"got {type(item).__name__}")
        out.append((f"<{kind} {i}>", as_rgb_image(item, f"images[{i}]")))
    return out


def predict(checkpoint: Any, images: Sequence[str | os.PathLike], **options: Any) -> list[dict[str, Any]]:
    """Top-k classes of each image file: `[{"image", "top": [{"class", "index", "probability"}]}]`.

    `options` are `Predictor`'s (scales, method, flip, grid, topk, device, amp,
    batch_size, channels_last, crop_pct, threads). A file that cannot be read gives
    `{"image", "error"}` and the others are still predicted. Loads the
    checkpoint on every call: `Predictor` loads it once for many calls.
    """
    return Predictor(checkpoint, **options)(images)
