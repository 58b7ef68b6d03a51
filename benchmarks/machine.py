"""The machine a benchmark ran on, in the words its numbers need: the CPU model and the
instructions that decide CPU speed (AVX2, AVX512F, AVX512-BF16, AMX), what torch
makes of them, and what `--amp auto` / `--channels-last auto` resolve to there.

    python benchmarks/machine.py
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from vggnet.execution import choose_execution, cpu_bf16_native

# /proc/cpuinfo flag -> how docs/benchmarks.md names it
FLAGS = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16",
         "amx_tile": "AMX"}


def cpu_flags() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo, what `lscpu` prints; ("unknown", set()) where it is missing."""
    model, flags = platform.processor() or platform.machine() or "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", "unknown", platform.machine()):
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def describe_machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    device = torch.device(device)
    model, flags = cpu_flags()
    native, what = cpu_bf16_native()
    chosen = choose_execution("auto", "auto", device)
    out: dict[str, Any] = {
        "cpu": model, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "cpu_flags": {name: flag in flags for flag, name in FLAGS.items()},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native, "native_bf16_detail": what,
        "auto": {"amp": chosen.amp, "channels_last": chosen.channels_last, "reason": chosen.reason},
        "torch": torch.__version__,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def machine_line(info: dict[str, Any]) -> str:
    flags = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in info["cpu_flags"].items())
    gpu = f"; GPU {info['gpu']}" if "gpu" in info else ""
    return (f"machine: {info['cpu']} ({info['cpus']} CPUs, {info['threads']} threads; {flags}; torch "
            f"{info['torch']}, capability {info['torch_cpu_capability']}){gpu}; load average "
            f"{info['load_average']:.1f}\nexecution --amp auto: {info['auto']['reason']}")


if __name__ == "__main__":
    print(machine_line(describe_machine()))
