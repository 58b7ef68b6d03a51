"""The VGG network family: Table 1 and Table 2 of the paper, and dense scoring (§3.2).

Table 1 is data (`CONFIGS`); one loop turns a column of it into layers. The
state dict keeps torchvision's layout (`features.N`, `classifier.N`) so that
torchvision checkpoints load unchanged, and `VGG.dense` views the very same
Linear weights as convolution kernels to apply the net to a whole image (the
paper's "fully-convolutional" test, §3.2) — one set of weights, two ways to apply
them.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CONFIGS",
    "ALIASES",
    "NAMES",
    "VGG",
    "vgg",
    "resolve_name",
    "count_parameters",
    "count_macs",
    "weight_layers",
]

# Table 1 of the paper, column by column, in its own notation. "convK-N" is a
# KxK convolution with N output channels, stride 1, padding K//2, followed by
# ReLU; "maxpool" is 2x2 with stride 2; "LRN" is Krizhevsky's local response
# normalisation. Every configuration ends in FC-4096, FC-4096, FC-classes.
CONFIGS: dict[str, list[str]] = {
    # 11 weight layers, 133M parameters
    "A": ["conv3-64", "maxpool",
          "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "maxpool"],
    # A with LRN after the first layer (§4.1: it does not help)
    "A-LRN": ["conv3-64", "LRN", "maxpool",
              "conv3-128", "maxpool",
              "conv3-256", "conv3-256", "maxpool",
              "conv3-512", "conv3-512", "maxpool",
              "conv3-512", "conv3-512", "maxpool"],
    # 13 weight layers, 133M
    "B": ["conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "maxpool"],
    # §4.1's shallow net: B with each pair of 3x3 convs replaced by one 5x5
    "B-5x5": ["conv5-64", "maxpool",
              "conv5-128", "maxpool",
              "conv5-256", "maxpool",
              "conv5-512", "maxpool",
              "conv5-512", "maxpool"],
    # 16 weight layers with 1x1 convs in stages 3-5, 134M
    "C": ["conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv1-256", "maxpool",
          "conv3-512", "conv3-512", "conv1-512", "maxpool",
          "conv3-512", "conv3-512", "conv1-512", "maxpool"],
    # 16 weight layers, 138M ("VGG16")
    "D": ["conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "maxpool"],
    # 19 weight layers, 144M ("VGG19")
    "E": ["conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "conv3-512", "maxpool"],
}

# The names torchvision and timm use for the same nets.
ALIASES: dict[str, str] = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
NAMES: list[str] = list(CONFIGS) + list(ALIASES)

_CONV = re.compile(r"conv(\d+)-(\d+)$")

# Krizhevsky et al. (2012): b = a / (k + alpha * sum a^2) ** beta with alpha per
# element. PyTorch's LocalResponseNorm divides alpha by size, so pass alpha*size.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


def resolve_name(name: str) -> str:
    """The paper's letter for `name` (a letter or a torchvision alias), case-insensitive."""
    if isinstance(name, str):
        key = name.strip()
        if key.lower() in ALIASES:
            return ALIASES[key.lower()]
        for letter in CONFIGS:
            if key.upper() == letter.upper():
                return letter
    raise ValueError(f"unknown VGG configuration {name!r}; expected one of {', '.join(NAMES)}")


def _channels(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


def _make_features(config: list[str], width: float, batch_norm: bool) -> tuple[nn.Sequential, list[dict]]:
    """Turn one column of Table 1 into layers; record feature_info at each pooling."""
    layers: list[nn.Module] = []
    info: list[dict] = []
    in_channels, stride, stage = 3, 1, 1
    for spec in config:
        if spec == "maxpool":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            stride *= 2
            info.append({"num_chs": in_channels, "reduction": stride, "module": f"features.{len(layers) - 1}",
                         "stage": stage})
            stage += 1
        elif spec == "LRN":
            layers.append(nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K))
        else:
            match = _CONV.match(spec)
            if match is None:
                raise ValueError(f"unknown layer {spec!r} in configuration; expected convK-N, maxpool or LRN")
            k, n = int(match.group(1)), _channels(int(match.group(2)), width)
            layers.append(nn.Conv2d(in_channels, n, kernel_size=k, padding=k // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(n))
            layers.append(nn.ReLU(inplace=True))
            in_channels = n
    return nn.Sequential(*layers), info


class VGG(nn.Module):
    """A VGG net: `features` (the conv stack) then `classifier` (FC-FC-FC).

    `forward` classifies crops of exactly `crop_size`; `dense` applies the same
    weights fully convolutionally to images of any size >= `crop_size`.
    """

    def __init__(
        self,
        name: str,
        num_classes: int = 1000,
        *,
        crop_size: int = 224,
        width: float = 1.0,
        fc_width: int = 4096,
        dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        letter = resolve_name(name)
        _check_int("num_classes", num_classes, minimum=1)
        _check_int("crop_size", crop_size, minimum=32)
        if crop_size % 32:
            raise ValueError(f"crop_size must be a positive multiple of 32 (the net downsamples by 32), got {crop_size}")
        if not isinstance(width, (int, float)) or isinstance(width, bool) or not math.isfinite(width) or width <= 0:
            raise ValueError(f"width must be a positive number (1.0 = the paper's channels), got {width!r}")
        _check_int("fc_width", fc_width, minimum=1)
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.build_args: dict[str, Any] = {
            "name": letter, "num_classes": int(num_classes), "crop_size": int(crop_size), "width": float(width),
            "fc_width": int(fc_width), "dropout": float(dropout), "batch_norm": bool(batch_norm),
        }
        self.name = letter
        self.crop_size = int(crop_size)
        self.features, self.feature_info = _make_features(CONFIGS[letter], float(width), bool(batch_norm))
        channels = self.feature_info[-1]["num_chs"]
        self.grid = crop_size // 32  # FC1 sees grid x grid positions of the last conv map (7 at 224)
        self.classifier = nn.Sequential(
            nn.Linear(channels * self.grid * self.grid, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, num_classes),
        )
        from vggnet.init import init_weights  # local import: keeps `import vggnet.models` light

        init_weights(self, "kaiming")

    @property
    def num_classes(self) -> int:
        return self.classifier[-1].out_features

    def extra_repr(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.build_args.items())
        return args

    def _check_size(self, x: torch.Tensor, where: str) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{where} expects a batch of RGB images (N, 3, H, W), got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `(N, classes)` for crops of exactly `crop_size` x `crop_size`."""
        self._check_size(x, "VGG.forward")
        if x.shape[-2:] != (self.crop_size, self.crop_size):
            raise ValueError(
                f"VGG.forward classifies {self.crop_size}x{self.crop_size} crops (crop_size={self.crop_size}), "
                f"got {x.shape[-2]}x{x.shape[-1]}; use model.dense(x) to score a whole image of any size")
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))

    def _dense_head(self, x: torch.Tensor, stop_before_last: bool) -> torch.Tensor:
        # FC layers as convolutions over the conv map: FC1 -> grid x grid conv,
        # the others -> 1x1, with kernels that are views of the Linear weights.
        modules = list(self.classifier)
        linear_idx = [i for i, m in enumerate(modules) if isinstance(m, nn.Linear)]
        end = linear_idx[-1] if stop_before_last else len(modules)
        first = True
        for module in modules[:end]:
            if isinstance(module, nn.Linear):
                k = self.grid if first else 1
                weight = module.weight.view(module.out_features, -1, k, k)
                x = _window_conv(x, weight, module.bias) if first and k > 1 else F.conv2d(x, weight, module.bias)
                first = False
            elif isinstance(module, nn.Dropout) and stop_before_last:
                continue  # descriptors are deterministic whatever the mode: no dropout (FC1's or FC2's)
            else:
                x = module(x)
        return x

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Class-score map `(N, classes, H/32 - grid + 1, W/32 - grid + 1)` for images >= crop_size.

        At exactly `crop_size` the map is 1x1 and equals `forward(x)`.
        """
        self._check_size(x, "VGG.dense")
        if min(x.shape[-2:]) < self.crop_size:
            raise ValueError(
                f"VGG.dense needs images at least crop_size={self.crop_size} on each side, "
                f"got {x.shape[-2]}x{x.shape[-1]}; rescale the image first")
        return self._dense_head(self.features(x), stop_before_last=False)

    def features_map(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer applied densely: `(N, fc_width, H', W')`, FC2 after ReLU (Appendix B).

        Always computed as in eval mode (no dropout, BatchNorm's running statistics),
        whatever the module's mode: a descriptor is a fixed function of the image.
        """
        self._check_size(x, "VGG.features_map")
        if min(x.shape[-2:]) < self.crop_size:
            raise ValueError(
                f"VGG.features_map needs images at least crop_size={self.crop_size} on each side, "
                f"got {x.shape[-2]}x{x.shape[-1]}")
        was_training = self.training
        self.train(False)
        try:
            return self._dense_head(self.features(x), stop_before_last=True)
        finally:
            self.train(was_training)


# FC1 as a k x k convolution: on a CPU, oneDNN reorders its whole weight (400 MB at full width) on every call,
# which costs more than the arithmetic when the conv map holds few windows. Up to this many windows (images x
# positions) it runs as one matrix product over the unfolded windows instead: 1.8-2.7x faster for FC1 at
# Q=256 with 1-16 images, and slower from about 300 windows on (benchmarks/inference.py; docs/benchmarks.md).
GEMM_WINDOWS = 256


def _window_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.conv2d(x, weight, bias)` (stride 1, no padding): as one matrix product on a CPU when the map holds at
    most `GEMM_WINDOWS` windows, else (and on GPUs, and while tracing or exporting) the convolution itself."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    windows = n * (h - kh + 1) * (w - kw + 1)
    if (x.device.type != "cpu" or windows > GEMM_WINDOWS or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()):
        return F.conv2d(x, weight, bias)
    cols = F.unfold(x, (kh, kw))                                     # (n, c*kh*kw, L): one column per window
    positions = cols.shape[-1]
    cols = cols.transpose(0, 1).reshape(cols.shape[1], n * positions)  # every window of every image
    flat = weight.reshape(weight.shape[0], -1)                       # (out, c*kh*kw), the conv's own order
    out = torch.mm(flat, cols) if bias is None else torch.addmm(bias.view(-1, 1), flat, cols)
    return out.view(-1, n, positions).transpose(0, 1).reshape(n, -1, h - kh + 1, w - kw + 1)


def _check_int(flag: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{flag} must be an integer >= {minimum}, got {value!r}")


def vgg(
    name: str,
    num_classes: int = 1000,
    *,
    crop_size: int = 224,
    width: float = 1.0,
    fc_width: int = 4096,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> VGG:
    """Build configuration `name` of Table 1 ('A', 'A-LRN', 'B', 'B-5x5', 'C', 'D', 'E' or vgg11/13/16/19).

    `width` scales the conv channels (1.0 = the paper), `fc_width` the two hidden
    FC layers, `crop_size` the training crop (a multiple of 32). `batch_norm`
    inserts BatchNorm after every conv: an extension beyond the paper (it
    postdates it), laid out as torchvision's `vgg*_bn`.
    """
    return VGG(name, num_classes, crop_size=crop_size, width=width, fc_width=fc_width,
               dropout=dropout, batch_norm=batch_norm)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on meta-device models: no memory needed)."""
    return sum(p.numel() for p in model.parameters())


def weight_layers(model: VGG) -> int:
    """Weight layers as the paper counts them: convolutions plus FC layers."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def count_macs(model: VGG, image_size: int | tuple[int, int] | None = None) -> int:
    """Multiply-accumulates of one forward pass at `image_size` (default: crop_size).

    Walks the built layers and tracks the spatial size, so nothing is hard-coded
    and no forward pass is needed. Larger images are counted as the dense net.
    """
    if image_size is None:
        image_size = model.crop_size
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    macs = 0
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            h = (h + 2 * m.padding[0] - kh) // m.stride[0] + 1
            w = (w + 2 * m.padding[1] - kw) // m.stride[1] + 1
            macs += h * w * m.out_channels * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.MaxPool2d):
            h, w = h // 2, w // 2
    # FC layers as convolutions: FC1 is grid x grid over the final map.
    h, w = h - model.grid + 1, w - model.grid + 1
    if h < 1 or w < 1:
        raise ValueError(f"image_size {image_size} is smaller than crop_size={model.crop_size}")
    for m in model.classifier:
        if isinstance(m, nn.Linear):
            macs += h * w * m.in_features * m.out_features
    return macs
