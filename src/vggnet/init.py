"""Initialisation schemes of §3.1, and pre-initialisation of deeper nets from net A.

The paper trains net A from weights "sampled from a normal distribution with the
zero mean and 10^-2 variance" and zero biases, then starts the deeper nets from
A's first four conv layers and its three FC layers, the rest random. Read
literally, variance 1e-2 is std 0.1 (`gaussian-var`); the authors' released
Caffe prototxts (and most reproductions) use std 0.01, variance 1e-4
(`gaussian`, the default reading here: with std 0.1 the activations of 0-255
inputs grow 3-5 times per conv layer of net A; docs/training.md). After submission it found that Glorot & Bengio's initialisation trains
the deeper nets from scratch, without the chain; and torchvision uses He
(Kaiming) initialisation. All four are here, by name.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

# A net here is any `nn.Module` laid out as `vggnet.models.VGG` (`features`, `classifier`): this module
# does not import models.py, which calls `init_weights` when it builds a net.
VGG = nn.Module

__all__ = ["SCHEMES", "GAUSSIAN_STD", "init_weights", "init_from_a", "conv_positions"]

SCHEMES = ("gaussian", "glorot", "kaiming", "gaussian-var")
# The standard deviation of each reading of §3.1's "zero mean and 10^-2 variance".
GAUSSIAN_STD = {"gaussian": 0.01, "gaussian-var": 0.1}


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str = "glorot") -> nn.Module:
    """Initialise every conv, linear and batch-norm layer of `model` in place.

    - ``gaussian``: weights N(0, 0.01^2), biases 0 (the paper, §3.1, as its Caffe
      prototxts read it: std 10^-2).
    - ``gaussian-var``: weights N(0, 0.1^2), biases 0 (§3.1's words read literally:
      variance 10^-2).
    - ``glorot``: Glorot & Bengio (2010) uniform, biases 0 (the paper's note that
      it trains deep nets without pre-training).
    - ``kaiming``: He et al. fan-out normal for convs, N(0, 0.01^2) for FC layers,
      biases 0 (torchvision's VGG).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown initialisation {scheme!r}; expected one of {', '.join(SCHEMES)} "
                         f"(or from:CKPT to start from a trained net A)")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme in GAUSSIAN_STD:
                nn.init.normal_(m.weight, 0.0, GAUSSIAN_STD[scheme])
            elif scheme == "glorot":
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def conv_positions(model: VGG) -> list[tuple[int, int, str]]:
    """(stage, position-in-stage, module name) of every conv layer, in order."""
    out = []
    stage, pos = 1, 0
    for i, m in enumerate(model.features):
        if isinstance(m, nn.MaxPool2d):
            stage, pos = stage + 1, 0
        elif isinstance(m, nn.Conv2d):
            out.append((stage, pos, f"features.{i}"))
            pos += 1
    return out


def _following_bn(model: VGG, conv_name: str) -> str | None:
    idx = int(conv_name.split(".")[1])
    nxt = model.features[idx + 1] if idx + 1 < len(model.features) else None
    return f"features.{idx + 1}" if isinstance(nxt, nn.BatchNorm2d) else None


@torch.no_grad()
def init_from_a(model: VGG, source: VGG | Mapping[str, torch.Tensor], *, source_name: str = "net A") -> list[str]:
    """Copy net A's first four conv layers and its three FC layers into `model` (§3.1).

    Each of A's first four convs goes to the same (stage, position in stage) of
    the deeper net — stage 1 #1, stage 2 #1, stage 3 #1 and #2 — so the copied
    filters see the same inputs they were trained on. The rest of `model` is
    left as it is (initialise it first). Returns the state-dict keys copied.
    """
    if isinstance(source, nn.Module):
        a_state = source.state_dict()
    else:
        a_state = dict(source)
    # Rebuild A's geometry from its state dict: its convs are features.K.weight with 4-d shapes.
    a_convs = sorted((int(k.split(".")[1]) for k, v in a_state.items()
                      if k.startswith("features.") and k.endswith(".weight") and v.dim() == 4))
    if len(a_convs) != 8:
        raise ValueError(f"{source_name} is not configuration A: it has {len(a_convs)} conv layers, expected 8")
    a_bn = any(k.endswith("running_mean") for k in a_state)
    # A's stage positions, from Table 1: conv, pool, conv, pool, conv, conv, ...
    a_positions = [(1, 0), (2, 0), (3, 0), (3, 1)]
    target = {(s, p): name for s, p, name in conv_positions(model)}
    own = model.state_dict()
    pairs: list[tuple[str, str]] = []
    for (stage, pos), a_idx in zip(a_positions, a_convs[:4]):
        dst = target.get((stage, pos))
        if dst is None:
            raise ValueError(f"{model.name} has no conv layer at stage {stage} position {pos + 1} to take "
                             f"{source_name}'s features.{a_idx}")
        pairs.append((f"features.{a_idx}", dst))
        dst_bn = _following_bn(model, dst)
        if a_bn and dst_bn is not None:
            pairs.append((f"features.{a_idx + 1}", dst_bn))
    fc = [f"classifier.{i}" for i in (0, 3, 6)]
    pairs += [(name, name) for name in fc]

    copied: list[str] = []
    updates: dict[str, torch.Tensor] = {}
    for src, dst in pairs:
        for key in [k[len(src) + 1:] for k in a_state if k.startswith(src + ".")]:
            s, d = f"{src}.{key}", f"{dst}.{key}"
            if d not in own:
                continue
            if a_state[s].shape != own[d].shape:
                raise ValueError(f"cannot initialise {d} {tuple(own[d].shape)} from {source_name}'s {s} "
                                 f"{tuple(a_state[s].shape)}: build both nets with the same width, fc_width, "
                                 f"crop_size and num_classes")
            updates[d] = a_state[s]
            copied.append(d)
    for key, value in updates.items():
        own[key].copy_(value)
    return copied
