"""`--amp auto` / `--channels-last auto`: one decision (vggnet.execution) for train, eval and predict,
tested with the CPU's bf16 capability replaced either way, so both branches run on any machine."""

from __future__ import annotations

import json

import pytest
import torch

import vggnet.execution as execution
from vggnet.checkpoint import make_checkpoint, save_checkpoint
from vggnet.cli import main
from vggnet.data.synthetic import write_synthetic
from vggnet import TrainConfig, train
from vggnet.engine import resolve_execution
from vggnet.classification.evaluate import evaluate
from vggnet.classification.predict import predict
from vggnet.execution import choose_execution, cpu_bf16_native
from vggnet.models import vgg

CAFFE = {"pixel_scale": 255.0, "mean": [120.0, 110.0, 100.0], "std": [60.0, 60.0, 60.0]}


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setattr(execution, "cpu_bf16_native", lambda: (True, "AVX512-BF16"))


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(execution, "cpu_bf16_native", lambda: (False, "no AVX512-BF16/AMX"))


def test_auto_on_a_cpu_with_native_bf16_picks_bf16_and_channels_last(native):
    chosen = choose_execution("auto", "auto", "cpu")
    assert (chosen.amp, chosen.channels_last, chosen.dtype) == ("bf16", True, torch.bfloat16)
    assert chosen.reason.startswith("amp bf16: the CPU computes bf16 natively (AVX512-BF16)")
    assert resolve_execution("auto", "auto", torch.device("cpu")) == ("bf16", True)


def test_auto_on_a_cpu_that_emulates_bf16_stays_fp32_nchw(emulated):
    chosen = choose_execution("auto", "auto", "cpu")
    assert (chosen.amp, chosen.channels_last, chosen.dtype) == ("off", False, None)
    assert chosen.reason.startswith("amp off: this CPU emulates bf16 (no AVX512-BF16/AMX)")
    assert resolve_execution("auto", "auto", torch.device("cpu")) == ("off", False)


def test_explicit_flags_win_over_the_capability(native):
    assert (choose_execution("off", "auto", "cpu").amp, choose_execution("off", "auto", "cpu").channels_last) == (
        "off", False)
    assert choose_execution("off", "auto", "cpu").reason.startswith("amp off: set by --amp off")
    assert choose_execution("auto", "off", "cpu").channels_last is False
    assert choose_execution("auto", False, "cpu").channels_last is False
    with pytest.raises(ValueError, match="--amp must be one of auto, bf16, fp16, off, got 'fp8'"):
        choose_execution("fp8", "auto", "cpu")


def test_detection_asks_torch_for_avx512_bf16_or_amx_not_for_avx512(monkeypatch):
    """An AVX512 chip without AVX512-BF16 emulates bf16: oneDNN's own bf16 check is true there and
    must not count on x86."""
    monkeypatch.setattr(execution.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cpu_bf16_native() == (False, "no AVX512-BF16/AMX")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_bf16_native() == (True, "AMX")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert cpu_bf16_native() == (True, "AVX512-BF16/AMX")
    monkeypatch.setattr(execution.platform, "machine", lambda: "aarch64")
    assert cpu_bf16_native() == (True, "Arm BF16")


TINY_RUN = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=32, synthetic_classes=3,
                synthetic_train=8, synthetic_val=4, synthetic_image_size=[32, 40], batch_size=4, epochs=1,
                max_steps=1, workers=0, progress=False, stats_sample=8, device="cpu", dropout=0.0)


def test_train_auto_logs_the_choice_and_bf16_checkpoints_hold_fp32_weights(native, tmp_path):
    result = train(TrainConfig(**TINY_RUN, output_dir=str(tmp_path / "bf16")))
    log = (tmp_path / "bf16" / "train.log").read_text()
    assert "execution: amp bf16: the CPU computes bf16 natively (AVX512-BF16); channels_last on" in log
    ckpt = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["train"]["config"]["amp"] == "auto"
    dtypes = {t.dtype for t in ckpt["state_dict"].values() if t.is_floating_point()}
    assert dtypes == {torch.float32}  # autocast only: the weights and the optimizer stay fp32


def test_train_auto_on_an_emulating_cpu_logs_fp32(emulated, tmp_path):
    train(TrainConfig(**TINY_RUN, output_dir=str(tmp_path / "fp32")))
    log = (tmp_path / "fp32" / "train.log").read_text()
    assert "amp off, channels_last off" in log
    assert "execution: amp off: this CPU emulates bf16 (no AVX512-BF16/AMX), fp32 is faster" in log


@pytest.fixture(scope="module")
def folder_and_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("exec")
    classes = write_synthetic(root / "synth", classes=3, train=0, val=4, image_size=(40, 48))["classes"]
    torch.manual_seed(0)
    model = vgg("A", num_classes=3, width=1 / 16, fc_width=16, crop_size=32, dropout=0.0).eval()
    for m in model.classifier:  # O(1) class scores, so that bf16 rounding shows in the posteriors
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=(2.0 / m.in_features) ** 0.5)
    ckpt = save_checkpoint(root / "a.pt", make_checkpoint(model, preprocessing=CAFFE, classes=classes,
                                                          meta={"scale": 40}))
    return root / "synth", ckpt


def test_evaluate_and_predict_auto_follow_the_capability(folder_and_ckpt, monkeypatch):
    data, ckpt = folder_and_ckpt
    fp32 = evaluate(ckpt, data, scales=[40], amp="off").final_posterior()
    monkeypatch.setattr(execution, "cpu_bf16_native", lambda: (False, "none"))
    assert torch.equal(evaluate(ckpt, data, scales=[40], amp="auto").final_posterior(), fp32)
    monkeypatch.setattr(execution, "cpu_bf16_native", lambda: (True, "AMX"))
    bf16 = evaluate(ckpt, data, scales=[40], amp="auto", channels_last="auto").final_posterior()
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # ran in bf16: rounded differently
    assert (bf16 - fp32).abs().max() < 0.05
    image = str(sorted(data.glob("val/*/*.jpg"))[0])
    top_bf16 = predict(ckpt, [image], scales=[40], amp="auto", channels_last="auto")[0]["top"]
    top_fp32 = predict(ckpt, [image], scales=[40], amp="off")[0]["top"]
    assert [t["probability"] for t in top_bf16] != [t["probability"] for t in top_fp32]
    assert top_bf16[0]["probability"] == pytest.approx(top_fp32[0]["probability"], abs=0.05)


def test_vgg_eval_and_predict_say_what_auto_chose(folder_and_ckpt, native, capsys):
    data, ckpt = folder_and_ckpt
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--test-scales", "40", "--workers", "0",
                 "--json"]) == 0
    cap = capsys.readouterr()
    assert "vgg eval: amp bf16: the CPU computes bf16 natively (AVX512-BF16); channels_last on" in cap.err
    assert json.loads(cap.out)["images"] == 4
    image = str(sorted(data.glob("val/*/*.jpg"))[0])
    assert main(["predict", str(ckpt), image, "--test-scales", "40", "--amp", "off", "--channels-last"]) == 0
    assert "vgg predict: amp off: set by --amp off; channels_last on: set by --channels-last" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["eval"], ["predict"], ["features"], ["transfer"], ["localize", "eval"],
                                     ["localize", "predict"]])
def test_every_command_that_runs_a_net_takes_threads(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert "--threads N" in capsys.readouterr().out


def test_threads_are_applied_and_checked(folder_and_ckpt, capsys):
    data, ckpt = folder_and_ckpt
    image = str(sorted(data.glob("val/*/*.jpg"))[0])
    before = torch.get_num_threads()
    try:
        assert main(["predict", str(ckpt), image, "--test-scales", "40", "--threads", "1", "--json"]) == 0
        assert torch.get_num_threads() == 1
        with pytest.raises(SystemExit) as exc:  # a usage error, answered before any work
            main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--test-scales", "40", "--workers", "0",
                  "--threads", "0"])
        assert exc.value.code == 2
        assert "argument --threads: expected a positive integer, got '0'" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
