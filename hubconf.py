"""torch.hub entry points for vggnet: the nets of Table 1, with local weights.

    model = torch.hub.load("path/to/vggnet", "vgg16", source="local", weights="vgg16.safetensors")
    model = torch.hub.load("path/to/vggnet", "vgg", "C", source="local", num_classes=10, width=0.25)

`weights` is a vggnet checkpoint (.pt), a safetensors export or a torchvision or
timm .pth state dict; nothing is downloaded. Each entry point builds its own
variant: `vgg11` refuses `vgg11_bn` weights (and the other way round) instead of
building another model. Every other
keyword goes to `vggnet.hub.create_model` (`num_classes`, `freeze_features`,
`width`, `crop_size`, `fc_width`, `dropout`).
"""

import os
import sys

dependencies = ["torch"]

try:
    from vggnet.hub import create_model
except ImportError:  # a checkout that is not installed: the package lives in src/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
    from vggnet.hub import create_model


def vgg(name="D", weights=None, **kwargs):
    """Any configuration of Table 1 by the paper's letter (A, A-LRN, B, B-5x5, C, D, E) or alias."""
    return create_model(name, pretrained=weights, **kwargs)


def vgg11(weights=None, **kwargs):
    """Configuration A, 11 weight layers."""
    return create_model("A", pretrained=weights, batch_norm=False, **kwargs)


def vgg11_bn(weights=None, **kwargs):
    """Configuration A with BatchNorm after every conv (beyond the paper)."""
    return create_model("A", pretrained=weights, batch_norm=True, **kwargs)


def vgg13(weights=None, **kwargs):
    """Configuration B, 13 weight layers."""
    return create_model("B", pretrained=weights, batch_norm=False, **kwargs)


def vgg13_bn(weights=None, **kwargs):
    """Configuration B with BatchNorm after every conv (beyond the paper)."""
    return create_model("B", pretrained=weights, batch_norm=True, **kwargs)


def vgg16(weights=None, **kwargs):
    """Configuration D, 16 weight layers."""
    return create_model("D", pretrained=weights, batch_norm=False, **kwargs)


def vgg16_bn(weights=None, **kwargs):
    """Configuration D with BatchNorm after every conv (beyond the paper)."""
    return create_model("D", pretrained=weights, batch_norm=True, **kwargs)


def vgg19(weights=None, **kwargs):
    """Configuration E, 19 weight layers."""
    return create_model("E", pretrained=weights, batch_norm=False, **kwargs)


def vgg19_bn(weights=None, **kwargs):
    """Configuration E with BatchNorm after every conv (beyond the paper)."""
    return create_model("E", pretrained=weights, batch_norm=True, **kwargs)
