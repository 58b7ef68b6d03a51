"""benchmarks/gpu_check.py: its CPU path (`--device cpu --quick`) runs every section, so the GPU check does
not rot between the rare runs on a GPU machine."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_gpu_check():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_run_writes_one_table_with_every_section(tmp_path):
    gpu_check = load_gpu_check()
    out = tmp_path / "check.md"
    threads = torch.get_num_threads()
    try:
        assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out), "--no-torchrun"]) == 0
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert text.startswith("machine: ") and "execution --amp auto: amp " in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| section")]
    sections = [r.split(" | ")[0].lstrip("| ") for r in rows]
    assert sum(s.startswith("training step 32 px") for s in sections) == 4  # fp32, bf16, bf16+NHWC, compile
    assert sum(s.startswith("evaluation") for s in sections) == 3           # centre, dense, multi-crop
    loop = next(r for r in rows if r.startswith("| `vgg train`"))
    assert "whole loop (0 workers)" in loop and "4 steps" in loop
    cells = [c.strip() for c in loop.strip("|").split("|")]
    assert float(cells[2]) > 0 and cells[3].endswith("x")                  # images/s, and vs the bare step
    jpegs = [r for r in rows if "JPEGs of 40-56 px" in r]
    assert len(jpegs) == 2 and "--decode-device cpu (0 workers)" in jpegs[0]
    assert float([c.strip() for c in jpegs[0].strip("|").split("|")][2]) > 0
    assert "--decode-device cuda" in jpegs[1] and "skipped: needs a GPU" in jpegs[1]
    assert "skipped (--no-torchrun)" in text


def test_torchrun_command_is_one_nccl_process_on_cuda(tmp_path):
    gpu_check = load_gpu_check()
    s = gpu_check.settings(type("A", (), {"quick": False})())
    cmd = gpu_check.torchrun_command(torch.device("cuda"), s, tmp_path)
    at = cmd.index("vggnet.cli")
    assert "--nproc-per-node=1" in cmd[:at] and cmd[at - 1:at + 2] == ["-m", "vggnet.cli", "train"]
    assert cmd[cmd.index("--device") + 1] == "cuda" and cmd[cmd.index("--amp") + 1] == "bf16"
    assert cmd[cmd.index("--crop-size") + 1] == "224" and cmd[cmd.index("--max-steps") + 1] == "10"


def test_a_decode_device_the_machine_cannot_do_is_a_skipped_row(tmp_path, monkeypatch):
    import vggnet.data.decode as decode
    from vggnet.errors import UserError

    gpu_check = load_gpu_check()
    s = gpu_check.settings(type("Args", (), {"quick": True})())

    def refuse(requested, device, **kw):
        if requested == "cuda":
            raise UserError("--decode-device cuda needs TorchCodec with CUDA support")
        return "cpu"

    monkeypatch.setattr(decode, "choose_decode_device", refuse)
    table = gpu_check.Table()
    device = torch.device("cpu")
    # pretend the device is a GPU for the section's own check, so that it asks for --decode-device cuda
    monkeypatch.setattr(gpu_check, "_is_gpu", lambda d: True)
    gpu_check.jpeg_loop(s, device, table, 0, tmp_path)
    rows = dict((r[1], r) for r in table.rows)
    assert float(rows["--decode-device cpu (0 workers)"][2]) > 0
    assert "skipped: --decode-device cuda needs TorchCodec with CUDA support" in rows["--decode-device cuda"][4]
