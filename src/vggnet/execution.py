"""How a net runs on a device: precision (`--amp`) and memory layout (`--channels-last`).

The paper trains and tests in fp32 (§3.3, Caffe on GPUs). Mixed precision
changes the arithmetic, not the method: autocast runs the convolutions and
matrix multiplies in bf16 (fp16) and keeps the weights, the loss and the
optimizer in fp32, so a checkpoint holds fp32 weights whatever `--amp` was.

`choose_execution` is the one decision every command takes (`vgg train`,
`vgg eval`, `vgg predict`, `vgg localize`, `vgg features`):

- CUDA: bf16 autocast (fp16 with a gradient scaler where bf16 is missing) and
  channels_last, which select cuDNN's tensor-core NHWC kernels.
- a CPU that computes bf16 natively (AVX512-BF16 or AMX on x86; the BF16
  extension on Arm): bf16 autocast and channels_last. On a 2-core AMD EPYC with
  AVX512-BF16, torchvision's vgg16 trained 1.51x faster in bf16 and 1.55x with
  channels_last as well; inference at 224 px ran 2.05x faster (docs/benchmarks.md).
- any other CPU: fp32 and NCHW. Without those instructions oneDNN emulates
  bf16 (converting to fp32 around every multiply), which is slower than fp32,
  and NHWC fp32 convolutions were no faster than NCHW for the full-width net.

The decision is a function of `cpu_bf16_native()`, which tests replace to
check both branches on any machine.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass

import torch

__all__ = ["Execution", "cpu_bf16_native", "choose_execution", "AMP_CHOICES", "CHANNELS_LAST_CHOICES",
           "add_threads_argument", "set_threads"]

# the flags themselves are defined once, torch-free, in vggnet.arguments
from vggnet.arguments import AMP_CHOICES, CHANNELS_LAST_CHOICES, add_threads_argument  # noqa: E402

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def cpu_bf16_native() -> tuple[bool, str]:
    """(whether this CPU computes bf16 in hardware, the instructions found or missing, in words).

    Asked of torch, never of the CPU's name: `torch.cpu._is_avx512_bf16_supported()`
    and `torch.cpu._is_amx_tile_supported()` on x86. `torch.ops.mkldnn._is_mkldnn_bf16_supported()`
    is not enough there: it is also true on AVX512 chips without AVX512-BF16,
    where oneDNN emulates bf16. On Arm it is true exactly when the CPU has the
    BF16 extension.
    """
    if platform.machine().lower() in _X86:
        found = []
        if _probe(lambda: torch.cpu._is_avx512_bf16_supported()):
            found.append("AVX512-BF16")
        if _probe(lambda: torch.cpu._is_amx_tile_supported()):
            found.append("AMX")
        return (True, "/".join(found)) if found else (False, "no AVX512-BF16/AMX")
    if _probe(lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return True, "Arm BF16"
    return False, "no BF16 instructions"


def _probe(check) -> bool:
    try:
        return bool(check())
    except (AttributeError, RuntimeError):  # an older torch without the probe: assume not
        return False


@dataclass(frozen=True)
class Execution:
    """The resolved settings and why: `amp` is "bf16", "fp16" or "off"."""

    amp: str
    channels_last: bool
    reason: str  # one line for the run log

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def choose_execution(amp: str = "auto", channels_last: str | bool = "auto",
                     device: torch.device | str = "cpu", *, flag: str = "--amp") -> Execution:
    """`--amp` (auto | bf16 | fp16 | off) and `--channels-last` (auto | on | off, or a bool) on `device`."""
    device = torch.device(device)
    if amp not in AMP_CHOICES:
        raise ValueError(f"{flag} must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if isinstance(channels_last, bool):
        channels_last = "on" if channels_last else "off"
    if channels_last not in CHANNELS_LAST_CHOICES:
        raise ValueError(f"--channels-last must be one of {', '.join(CHANNELS_LAST_CHOICES)}, got {channels_last!r}")
    fast = False  # whether auto picked reduced precision for speed (then channels_last auto follows it)
    if amp != "auto":
        why = f"amp {amp}: set by {flag} {amp}"
    elif device.type == "cuda":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        why = (f"amp bf16: {torch.cuda.get_device_name(device)} computes bf16 in its tensor cores" if amp == "bf16"
               else "amp fp16: this GPU has no bf16, fp16 with a gradient scaler")
        fast = True
    elif device.type == "cpu":
        native, what = cpu_bf16_native()
        if native:
            amp, why, fast = "bf16", f"amp bf16: the CPU computes bf16 natively ({what})", True
        else:
            amp, why = "off", f"amp off: this CPU emulates bf16 ({what}), fp32 is faster"
    else:
        amp, why = "off", f"amp off: no mixed-precision default for device {device.type}"
    if channels_last == "auto":
        cl = fast or device.type == "cuda"
        why += f"; channels_last {'on' if cl else 'off'}" + (" (NHWC kernels)" if cl else "")
    else:
        cl = channels_last == "on"
        why += f"; channels_last {channels_last}: set by --channels-last"
    return Execution(amp=amp, channels_last=cl, reason=why)


def set_threads(threads: int | None) -> None:
    """Apply `--threads` (None: leave PyTorch's default), or a `UserError` naming the flag."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        from vggnet.errors import UserError

        raise UserError(f"--threads must be a positive integer, got {threads!r}")
    torch.set_num_threads(threads)
