"""The paper's input pipeline: training (§3.1) and testing (§3.2) preprocessing.

Training (§3.1): isotropically rescale the image so that its smallest side is S,
S fixed or sampled per image from [Smin, Smax] ("scale jittering"); take a random
crop_size x crop_size crop; flip it horizontally at random; add AlexNet's PCA
colour shift; subtract the training set's mean RGB.

Testing (§3.2): rescale the smallest side to Q and keep the whole image (dense
evaluation), or take a regular grid x grid of crops and their flips (multi-crop).

Every step is a `torchvision.transforms.v2` transform, so bounding boxes
(`tv_tensors.BoundingBoxes`, Appendix A) travel with the image through the
rescale, the crop and the flip. Presets are small keyword-only classes that wrap a
`v2.Compose`, in the manner of torchvision's `references/classification/presets.py`.

Decoding (torchvision 0.29 deprecates its own decoders): TorchCodec for JPEGs near
the size they will be rescaled to, where it gives Pillow's pixels faster
(`vggnet.data.decode`); Pillow for everything else. A JPEG much larger than the
scale it will be rescaled to is decoded with `Image.draft()`, which lets libjpeg
downscale by 1/2, 1/4 or 1/8 in the DCT domain for a fraction of the full
decoding cost. EXIF orientation is applied and every Pillow mode becomes RGB.

An image without boxes (and without a RandAugment-style policy) skips
`v2.Compose`: the presets call the same steps' kernels directly and draw the
same random numbers in the same order, so the tensor is bitwise the Compose's
(tests/test_data_transforms.py holds the two paths to that) without v2's
per-call dispatch, which cost about as much as the rescale itself. `DIRECT =
False` sends everything through the Compose (the benchmark's reference).

What the network sees is `(rgb01 * pixel_scale - mean) / std` (`Preprocessing`);
the paper's (Caffe's) convention is pixel_scale=255, mean = training-set mean RGB
in 0-255 units, std = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vggnet.data.images import ensure_decoded

__all__ = [
    "CAFFE_MEAN", "TORCHVISION_MEAN", "TORCHVISION_STD", "Preprocessing",
    "rescaled_size", "rescale_smallest_side", "parse_scale",
    "RescaleSmallestSide", "RandomRescaleCrop", "PCALighting", "ToFloat01", "ToNormalizedTensor",
    "TrainPreset", "DenseEvalPreset", "grid_crops", "MultiCropEvalPreset",
    "CROP_PCT", "center_resize", "deployment_config",
]

# Mean RGB (0-255) of the ILSVRC-2012 training set as released with the VGG Caffe
# models (Caffe stores it as BGR 103.939, 116.779, 123.68).
CAFFE_MEAN = (123.68, 116.779, 103.939)
# torchvision's ImageNet normalisation, for weights imported from torchvision (pixel_scale=1).
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)

from vggnet.arguments import CROP_PCT  # noqa: E402  (0.875; defined with the flags, which show it)
DIRECT = True  # images without boxes skip v2.Compose (same kernels, same random draws); False: always Compose


# --------------------------------------------------------------------------- normalisation


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"preprocessing {name!r}: expected 3 numbers (R, G, B), got {value!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"preprocessing {name!r}: expected 3 finite numbers (R, G, B), got {value!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocessing:
    """The normalisation a model was trained with; saved in every checkpoint.

    The network sees `(rgb01 * pixel_scale - mean) / std`, with `mean` and `std`
    in units of `pixel_scale` and always in RGB order.
    """

    pixel_scale: float = 255.0
    mean: tuple[float, float, float] = CAFFE_MEAN
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        scale = float(self.pixel_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"preprocessing 'pixel_scale': expected a positive number, got {self.pixel_scale!r}")
        std = _triple("std", self.std)
        if min(std) <= 0:
            raise ValueError(f"preprocessing 'std': expected positive numbers, got {list(std)}")
        object.__setattr__(self, "pixel_scale", scale)
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", std)

    @classmethod
    def caffe(cls, mean: Sequence[float] = CAFFE_MEAN) -> Preprocessing:
        """The paper's convention: 0-255 pixels minus the training-set mean RGB."""
        return cls(pixel_scale=255.0, mean=tuple(mean), std=(1.0, 1.0, 1.0))  # type: ignore[arg-type]

    @classmethod
    def torchvision(cls) -> Preprocessing:
        """torchvision's ImageNet normalisation, for weights imported from torchvision."""
        return cls(pixel_scale=1.0, mean=TORCHVISION_MEAN, std=TORCHVISION_STD)

    def to_dict(self) -> dict[str, Any]:
        return {"pixel_scale": self.pixel_scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        if not isinstance(d, Mapping):
            raise ValueError(f"preprocessing: expected a mapping with pixel_scale, mean, std, got {type(d).__name__}")
        unknown = set(d) - {"pixel_scale", "mean", "std"}
        if unknown:
            raise ValueError(f"preprocessing: unknown keys {sorted(unknown)}; expected pixel_scale, mean, std")
        missing = {"pixel_scale", "mean", "std"} - set(d)
        if missing:
            raise ValueError(f"preprocessing: missing keys {sorted(missing)}")
        return cls(pixel_scale=d["pixel_scale"], mean=d["mean"], std=d["std"])

    def normalize(self) -> v2.Normalize:
        """The same map as a `v2.Normalize` on [0, 1] images:
        (x * s - m) / d == (x - m / s) / (d / s)."""
        s = self.pixel_scale
        return v2.Normalize(mean=[m / s for m in self.mean], std=[d / s for d in self.std])

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        """Normalise a float RGB tensor in [0, 1] of shape (..., 3, H, W)."""
        if x01.ndim < 3 or x01.shape[-3] != 3:
            raise ValueError(f"expected an RGB tensor of shape (..., 3, H, W), got {tuple(x01.shape)}")
        mean = torch.tensor(self.mean, dtype=x01.dtype, device=x01.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x01.dtype, device=x01.device).view(3, 1, 1)
        return (x01 * self.pixel_scale - mean) / std


# --------------------------------------------------------------------------- geometry


def parse_scale(scale: int | Sequence[int] | str) -> tuple[int, int]:
    """S as (Smin, Smax): an int (fixed S), a pair, or the CLI's "256" / "256:512"."""
    original = scale
    if isinstance(scale, str):
        parts = scale.split(":")
        try:
            scale = tuple(int(p) for p in parts)  # type: ignore[assignment]
        except ValueError:
            raise ValueError(f"scale: expected S or Smin:Smax (integers), got {original!r}") from None
    if isinstance(scale, (int, np.integer)) and not isinstance(scale, bool):
        lo = hi = int(scale)
    else:
        try:
            values = [int(v) for v in scale]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"scale: expected S or (Smin, Smax), got {original!r}") from None
        if len(values) == 1:
            values = values * 2
        if len(values) != 2:
            raise ValueError(f"scale: expected S or (Smin, Smax), got {original!r}")
        lo, hi = values
    if lo < 1 or hi < lo:
        raise ValueError(f"scale: expected 1 <= Smin <= Smax, got {original!r}")
    return lo, hi


def rescaled_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """(height, width) after the isotropic rescale that makes the smallest side `scale`."""
    if height <= width:
        return scale, max(scale, int(round(width * scale / height)))
    return max(scale, int(round(height * scale / width))), scale


def size_hw(inpt: Any) -> tuple[int, int]:
    if isinstance(inpt, Image.Image):
        return inpt.height, inpt.width
    if isinstance(inpt, tv_tensors.BoundingBoxes):
        return tuple(inpt.canvas_size)  # type: ignore[return-value]
    return int(inpt.shape[-2]), int(inpt.shape[-1])


def rescale_smallest_side(img: Any, S: int) -> Any:
    """Isotropic rescale so the smallest side is exactly S (bilinear, antialiased).

    Accepts a Pillow image, an image tensor (..., H, W) or `tv_tensors.BoundingBoxes`
    (rescaled from their canvas); returns the same type.
    """
    h, w = size_hw(img)
    return F.resize(img, list(rescaled_size(h, w, int(S))), antialias=True)


def _as_uint8_tensor(inpt: Any) -> Any:
    # Pillow -> (3, H, W) uint8 tensor viewing the (H, W, 3) pixels (channels-last
    # strides). torch's antialiased bilinear resize has a vectorised path for exactly
    # this layout, about 3x faster than Pillow's resize of the same image.
    if isinstance(inpt, Image.Image):
        return tv_tensors.Image(uint8_chw(inpt))
    return inpt


class RescaleSmallestSide(v2.Transform):
    """Isotropically rescale so the smallest side is S; S fixed or uniform on the integers [Smin, Smax]."""

    def __init__(self, scale: int | Sequence[int]) -> None:
        super().__init__()
        self.scale = parse_scale(scale)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.scale
        s = lo if lo == hi else int(torch.randint(lo, hi + 1, ()).item())
        h, w = v2.query_size(flat_inputs)
        return {"size": list(rescaled_size(h, w, s))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Pillow images come out as uint8 tensors (3, H, W); tensors and boxes keep their type."""
        return F.resize(_as_uint8_tensor(inpt), params["size"], antialias=True)


class RandomRescaleCrop(v2.Transform):
    """§3.1: rescale the smallest side to S (sampled per image from [Smin, Smax]),
    then take a random crop_size x crop_size crop.

    The same as `RescaleSmallestSide` followed by `RandomCrop`, with the crop drawn
    from the rescaled size. Pillow images come out as uint8 tensors (3, crop, crop).
    Boxes are rescaled and cropped exactly as the pixels, then clamped to the crop
    (a box outside the crop becomes degenerate, zero width or height, and is kept,
    so boxes stay aligned with their labels).
    """

    def __init__(self, scale: int | Sequence[int], crop_size: int) -> None:
        super().__init__()
        self.scale = parse_scale(scale)
        self.crop_size = int(crop_size)
        if self.scale[0] < self.crop_size:
            raise ValueError(f"scale: Smin must be >= crop_size so that the crop fits; "
                             f"got scale={self.scale} and crop_size={self.crop_size}")

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return self.params_for(*v2.query_size(flat_inputs))

    def params_for(self, h: int, w: int) -> dict[str, Any]:
        """The random S and crop position for an image of h x w pixels."""
        lo, hi = self.scale
        s = lo if lo == hi else int(torch.randint(lo, hi + 1, ()).item())
        sh, sw = rescaled_size(h, w, s)
        c = self.crop_size
        top = int(torch.randint(0, sh - c + 1, ()).item())
        left = int(torch.randint(0, sw - c + 1, ()).item())
        return {"S": s, "scaled": (sh, sw), "top": top, "left": left}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        c, top, left, scaled = self.crop_size, params["top"], params["left"], params["scaled"]
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            boxes = F.resize(inpt, list(scaled))
            boxes = F.crop(boxes, top, left, c, c)
            return F.clamp_bounding_boxes(boxes)
        out = F.resize(_as_uint8_tensor(inpt), list(scaled), antialias=True)
        return F.crop(out, top, left, c, c)


class ToFloat01(v2.Transform):
    """Pillow image or uint8 tensor -> float32 (3, H, W) in [0, 1]; boxes pass through."""

    _transformed_types = (Image.Image, torch.Tensor)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return inpt
        x = uint8_chw(inpt)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
        return tv_tensors.Image(x)


def uint8_chw(inpt: Any) -> torch.Tensor:
    if isinstance(inpt, Image.Image):
        # (H, W, 3) array viewed as (3, H, W): no copy until the float conversion
        return torch.from_numpy(np.array(inpt, dtype=np.uint8)).permute(2, 0, 1)
    return inpt.as_subclass(torch.Tensor)


class PCALighting(v2.Transform):
    """AlexNet's colour augmentation (Krizhevsky et al. 2012, §4.1), used by the paper (§3.1).

    Adds `sum_i alpha_i * eigval_i * eigvec_i` to every pixel, alpha_i ~ N(0, std)
    drawn once per image. `eigval` and `eigvec` (row i = eigenvector i) come from
    `data.stats.compute_stats` in 0-255 units; the shift is converted to the [0, 1]
    image it is applied to here, so the pixel scale of the model does not matter.
    """

    def __init__(self, eigval: Sequence[float], eigvec: Sequence[Sequence[float]], std: float = 0.1) -> None:
        super().__init__()
        self.eigval = torch.as_tensor(eigval, dtype=torch.float32).reshape(3)
        self.eigvec = torch.as_tensor(eigvec, dtype=torch.float32).reshape(3, 3)
        self.std = float(std)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        alpha = torch.randn(3) * self.std
        # (3,) RGB shift in 0-255 units: eigvec.T @ (alpha * eigval) = sum_i alpha_i lambda_i p_i
        return {"shift": (self.eigvec.T @ (alpha * self.eigval)) / 255.0}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.BoundingBoxes) or not isinstance(inpt, torch.Tensor):
            return inpt
        out = inpt.as_subclass(torch.Tensor) + params["shift"].to(inpt.dtype).view(3, 1, 1)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out


def _pca_arrays(pca: Any) -> tuple[Any, Any] | None:
    if pca is None:
        return None
    if isinstance(pca, Mapping):
        try:
            return pca["eigval"], pca["eigvec"]
        except KeyError as exc:
            raise ValueError(f"pca: expected a mapping with 'eigval' and 'eigvec' (see vgg stats), missing {exc}") from None
    eigval, eigvec = pca
    return eigval, eigvec


class ToNormalizedTensor(v2.Transform):
    """`ToFloat01`, `PCALighting` and `Preprocessing` in one arithmetic pass.

    The colour shift is constant over the image, so it folds into the mean:
    out = (x255 * s/255 + shift * s/255 - mean) / std = x255 * a + b per channel,
    computed while converting uint8 to float. This is what makes the §3.1 pipeline
    with lighting cost less than torchvision's ToTensor + Normalize.
    """

    _transformed_types = (Image.Image, torch.Tensor)

    def __init__(self, preprocessing: Preprocessing, pca: Mapping[str, Any] | Sequence[Any] | None = None,
                 pca_std: float = 0.1) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        arrays = _pca_arrays(pca)
        self.lighting = PCALighting(*arrays, std=pca_std) if arrays is not None and pca_std > 0 else None
        s = preprocessing.pixel_scale
        std = torch.tensor(preprocessing.std, dtype=torch.float32)
        self._a = (s / 255.0 / std).view(3, 1, 1)  # per channel, applied to 0-255 values
        self._mean = torch.tensor(preprocessing.mean, dtype=torch.float32)
        self._std = std

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        shift01 = self.lighting.make_params(flat_inputs)["shift"] if self.lighting is not None else torch.zeros(3)
        s = self.preprocessing.pixel_scale
        return {"b": ((shift01 * s - self._mean) / self._std).view(3, 1, 1)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return inpt
        return tv_tensors.Image(self.affine(uint8_chw(inpt), params["b"]))

    def affine(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x * a + b per channel, as float32: a uint8 (0-255) or float ([0, 1]) image on any device."""
        a, b = self._a.to(x.device), b.to(x.device)
        if x.dtype == torch.uint8:
            out = x.to(torch.float32, memory_format=torch.contiguous_format).mul_(a)
        else:  # a float image in [0, 1]
            out = x.to(torch.float32) * (a * 255.0)
        return out.add_(b)


# --------------------------------------------------------------------------- presets


class Preset:
    transforms: v2.Compose
    decode_side: int | None

    def __call__(self, image: Any, boxes: tv_tensors.BoundingBoxes | None = None) -> Any:
        """image: a (lazily opened) Pillow image, a path, or a uint8/float tensor.
        Returns the tensor, or `(tensor, boxes)` when boxes are given."""
        image = ensure_decoded(image, self.decode_side)
        if boxes is None:
            if DIRECT and self.direct and isinstance(image, (Image.Image, torch.Tensor)):
                x = uint8_chw(image)
                if x.dtype == torch.uint8 and x.ndim == 3:
                    return self._direct(x)
            return self.transforms(image).as_subclass(torch.Tensor)
        if not boxes.is_floating_point():
            boxes = boxes.to(torch.float32)  # integer boxes would be truncated at every rescale
        hw = size_hw(image)
        if tuple(boxes.canvas_size) != hw:
            # boxes are annotated on the full-size image; JPEG draft decoding made it smaller
            boxes = F.resize(boxes, list(hw))
        out, boxes = self.transforms(image, boxes)
        return out.as_subclass(torch.Tensor), boxes

    direct = False  # whether `_direct` applies: the steps are the ones it calls

    def _direct(self, x: torch.Tensor) -> torch.Tensor:
        """`self.transforms(x)` for a (3, H, W) uint8 image, its steps' kernels called directly with the same
        random draws in the same order (only where `direct`)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms})"


class TrainPreset(Preset):
    """§3.1 training input: rescale to S (fixed or jittered), random crop, random flip,
    PCA lighting (when `pca` statistics are given), normalisation.

    `scale` is S (int) or (Smin, Smax); `pca` is `{"eigval", "eigvec"}` from
    `compute_stats` (or a pair); `pca_std` is the standard deviation of alpha.
    """

    def __init__(self, *, crop_size: int, scale: int | Sequence[int], preprocessing: Preprocessing,
                 pca: Mapping[str, Any] | Sequence[Any] | None = None, pca_std: float = 0.1,
                 hflip: bool = True, auto_augment: str = "none") -> None:
        self.scale = parse_scale(scale)
        self.crop_size = int(crop_size)
        self.preprocessing = preprocessing
        # decode JPEGs no smaller than the largest S we might sample
        self.decode_side = self.scale[1]
        steps: list[v2.Transform] = [RandomRescaleCrop(self.scale, self.crop_size)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip(0.5))
        # an extension beyond the paper (torchvision's references' order: crop, flip, then the policy on uint8)
        policies = {"randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide}
        if auto_augment != "none":
            if auto_augment not in policies:
                raise ValueError(f"auto_augment: expected none, {' or '.join(policies)}, got {auto_augment!r}")
            steps.append(policies[auto_augment]())
        steps.append(ToNormalizedTensor(preprocessing, pca, pca_std))  # = ToFloat01, PCALighting, normalise
        self.transforms = v2.Compose(steps)
        self.hflip = hflip
        self.plain = auto_augment == "none"  # crop, flip, colour: what `draw` and `apply` do
        self.direct = self.plain

    def _direct(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.draw(int(x.shape[-2]), int(x.shape[-1])))

    def draw(self, height: int, width: int) -> dict[str, Any]:
        """This image's augmentation: S, the crop, the flip and the colour shift, drawn from torch's RNG in the
        order v2.Compose draws them (so `apply(x, draw(h, w))` is bitwise `self(x)`). With `apply`, this is how
        `--decode-device cuda` draws in the loader workers and transforms on the GPU."""
        if not self.plain:
            raise ValueError("TrainPreset.draw: a preset with auto_augment runs through its Compose only")
        crop, normalize = self.transforms.transforms[0], self.transforms.transforms[-1]
        params = crop.params_for(height, width)
        params["flip"] = self.hflip and bool(torch.rand(1) < 0.5)  # v2.RandomHorizontalFlip(0.5)'s draw
        params["b"] = normalize.make_params([])["b"]
        return params

    def apply(self, x: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        """A (3, H, W) uint8 image (on any device) -> the network's float32 (3, crop, crop) input."""
        c = self.crop_size
        out = F.crop_image(F.resize_image(x, list(params["scaled"]), antialias=True),
                           params["top"], params["left"], c, c)
        if params["flip"]:
            out = F.horizontal_flip_image(out)
        normalize = self.transforms.transforms[-1]
        return normalize.affine(out, params["b"])


class DenseEvalPreset(Preset):
    """§3.2 dense evaluation input: rescale the smallest side to Q, no crop; one
    (3, H, W) tensor of the whole image."""

    def __init__(self, *, scale: int, preprocessing: Preprocessing) -> None:
        lo, hi = parse_scale(scale)
        if lo != hi:
            raise ValueError(f"scale: a test scale Q is one integer, got {scale!r}")
        self.scale = lo
        self.preprocessing = preprocessing
        self.decode_side = lo
        self.transforms = v2.Compose([RescaleSmallestSide(lo), ToNormalizedTensor(preprocessing)])

    direct = True

    def _direct(self, x: torch.Tensor) -> torch.Tensor:
        rescale, normalize = self.transforms.transforms
        out = F.resize_image(x, rescale.make_params([x])["size"], antialias=True)
        return normalize.affine(out, normalize.make_params([])["b"])


def _grid_offsets(length: int, crop: int, grid: int) -> list[int]:
    if grid == 1:
        return [(length - crop) // 2]
    return [int(round(i * (length - crop) / (grid - 1))) for i in range(grid)]


def grid_crops(image: torch.Tensor, crop_size: int, grid: int = 5) -> torch.Tensor:
    """The grid x grid regular grid of crops covering the image (§3.2 multi-crop),
    corners included: (grid*grid, C, crop, crop), row-major (top-left first)."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    if h < crop_size or w < crop_size:
        raise ValueError(f"grid_crops: the image ({h}x{w}) is smaller than crop_size={crop_size}; "
                         f"rescale it to a smallest side >= crop_size first")
    tops, lefts = _grid_offsets(h, crop_size, grid), _grid_offsets(w, crop_size, grid)
    return torch.stack([image[..., t:t + crop_size, l:l + crop_size] for t in tops for l in lefts])


class MultiCropEvalPreset(Preset):
    """§3.2 multi-crop input at one scale Q: the grid x grid crops and, with `flip`,
    their mirror images: (2*grid*grid, 3, crop, crop), unflipped crops first."""

    def __init__(self, *, scale: int, crop_size: int, preprocessing: Preprocessing, grid: int = 5,
                 flip: bool = True) -> None:
        self.dense = DenseEvalPreset(scale=scale, preprocessing=preprocessing)
        if self.dense.scale < crop_size:
            raise ValueError(f"scale: Q={self.dense.scale} must be >= crop_size={crop_size} for multi-crop")
        self.scale, self.crop_size, self.grid, self.flip = self.dense.scale, int(crop_size), int(grid), flip
        self.preprocessing = preprocessing
        self.decode_side = self.dense.scale
        self.transforms = self.dense.transforms

    def __call__(self, image: Any, boxes: tv_tensors.BoundingBoxes | None = None) -> Any:
        if boxes is not None:
            raise ValueError("MultiCropEvalPreset does not transform boxes; use DenseEvalPreset")
        crops = grid_crops(self.dense(image), self.crop_size, self.grid)
        return torch.cat([crops, crops.flip(-1)]) if self.flip else crops


def center_resize(crop_size: int, crop_pct: float = CROP_PCT) -> int:
    """The size the smallest side is resized to before the centre crop: floor(crop / crop_pct) (256 for 224)."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"--crop-pct must be in (0, 1], got {crop_pct}")
    return int(math.floor(crop_size / crop_pct + 1e-9))


def deployment_config(
    build: Mapping[str, Any],
    preprocessing: Mapping[str, Any],
    classes: Sequence[str] | None,
    *,
    crop_pct: float = CROP_PCT,
) -> dict[str, Any]:
    """The centre-crop evaluation (`vgg predict --method center`) spelled out in timm's `pretrained_cfg`
    field names, so that an exported file can be run without vggnet.

    Decode to RGB; resize the smallest side to `resize` (= floor(crop / crop_pct); the other side
    int(resize * long / short)) with Pillow's antialiased bilinear filter; take the central
    `input_size` square (top = round((h - crop) / 2), left likewise); scale to [0, 1]; subtract
    `mean` and divide by `std` (both on that [0, 1] scale, RGB order); lay out as NCHW float32.
    """
    pre = Preprocessing.from_dict(preprocessing)
    crop = int(build.get("crop_size", 224))
    s = pre.pixel_scale
    return {
        "architecture": f"vgg_{build.get('name', '?')}" + ("_bn" if build.get("batch_norm") else ""),
        "input_size": [3, crop, crop],
        "fixed_input_size": True,  # the crop classifier; the dense ONNX form takes any size >= crop
        "crop_pct": float(crop_pct),
        "crop_mode": "center",
        "resize": center_resize(crop, crop_pct),
        "resize_rule": "smallest side to resize, aspect kept (other side truncated to an integer)",
        "interpolation": "bilinear",
        "antialias": True,
        "mean": [m / s for m in pre.mean],
        "std": [d / s for d in pre.std],
        "channel_order": "RGB",
        "layout": "NCHW",
        "num_classes": int(build.get("num_classes", len(classes or []))),
        "label_names": list(classes) if classes is not None else None,
        "output": "logits (apply softmax for probabilities)",
    }
