"""Faults and hostile inputs (docs/reliability.md): each test reproduces one case and checks what happens now."""

from __future__ import annotations

import argparse
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vggnet.cli import main
from vggnet.arguments import add_model_arguments, load_config_file, parse_args_with_config
from vggnet.data.datasets import LeftOutWarning, build_dataset, image_file_problem
from vggnet.errors import CheckpointError, DataError, UserError
from vggnet.models import vgg

TINY = dict(width=1 / 16, fc_width=16, crop_size=32, dropout=0.0)
PLAIN = {"pixel_scale": 255.0, "mean": [120.0, 110.0, 100.0], "std": [60.0, 60.0, 60.0]}


def _images(folder: Path, n: int, size: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    out = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


@pytest.fixture
def no_hang():
    """A test that would block forever (reading a FIFO) fails after 30 s instead."""
    def timeout(*_):
        raise TimeoutError("blocked: a FIFO was opened")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _checkpoint(path: Path, *, classes=None, nan=False) -> Path:
    from vggnet.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = vgg("A", num_classes=3, **TINY)
    ckpt = make_checkpoint(model, preprocessing=PLAIN, classes=["a", "b", "c"], meta={"scale": 40})
    if classes is not None:
        ckpt["classes"] = classes
    if nan:
        ckpt["state_dict"]["classifier.0.weight"][0, 0] = float("nan")
    save_checkpoint(path, ckpt)
    return path


# --------------------------------------------------------------------------- listing files (2, 7, 11)


def test_symlink_loop_is_walked_once_and_named(tmp_path):
    """`ln -s .. train/circle/loop` used to list every image 40 times, the other classes' as "circle"."""
    _images(tmp_path / "train" / "circle", 3)
    _images(tmp_path / "train" / "square", 2)
    elsewhere = _images(tmp_path / "elsewhere" / "tri", 2)[0].parent
    (tmp_path / "train" / "circle" / "loop").symlink_to("..")         # a loop through the split folder
    (tmp_path / "train" / "circle" / "self").symlink_to(".")          # a loop onto itself
    (tmp_path / "train" / "square" / "circle").symlink_to("../circle")  # another class's folder
    (tmp_path / "train" / "tri").symlink_to(elsewhere)                # a linked class folder: followed
    with pytest.warns(LeftOutWarning) as record:
        ds = build_dataset(tmp_path)
    assert len(ds) == 7
    by_class = {c: sorted(Path(p).name for p, t in ds.samples if t == i) for i, c in enumerate(ds.classes)}
    assert by_class == {"circle": ["img0.png", "img1.png", "img2.png"], "square": ["img0.png", "img1.png"],
                        "tri": ["img0.png", "img1.png"]}
    message = str(record[0].message)
    assert "loop" in message and "self" in message and "symlink loop" in message
    assert sorted(Path(p).name for p, _ in ds.left_out) == ["circle", "loop", "self"]


def test_fifo_and_other_non_regular_files_are_left_out_and_named(tmp_path, no_hang):
    _images(tmp_path / "train" / "a", 2)
    os.mkfifo(tmp_path / "train" / "a" / "pipe.jpg")
    (tmp_path / "train" / "a" / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image name: not reported")
    with pytest.warns(LeftOutWarning, match=r"pipe\.jpg: a FIFO"):
        ds = build_dataset(tmp_path)
    assert [Path(p).name for p, _ in ds.samples] == ["img0.png", "img1.png"]
    assert dict((Path(p).name, r) for p, r in ds.left_out) == {
        "dangling.jpg": "a broken symbolic link", "pipe.jpg": "a FIFO (named pipe), not a regular file"}


def test_predict_refuses_a_fifo_instead_of_hanging(tmp_path, capsys, no_hang):
    ckpt = _checkpoint(tmp_path / "c.pt")
    good = _images(tmp_path / "img", 1)[0]
    os.mkfifo(tmp_path / "pipe.jpg")
    assert main(["predict", str(ckpt), str(tmp_path / "pipe.jpg"), str(good), "--test-scales", "40"]) == 1
    cap = capsys.readouterr()
    assert "pipe.jpg: a FIFO" in cap.err and str(good) in cap.out


def test_permission_denied_class_folder_is_named_as_such(tmp_path, monkeypatch):
    """(Tests run as root, where chmod 000 denies nothing: the OS's refusal is simulated.)"""
    _images(tmp_path / "train" / "a", 1)
    _images(tmp_path / "train" / "b", 1)
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "b":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"train[/\\]b: permission denied") as info:
        build_dataset(tmp_path)
    assert "empty class folder" not in str(info.value)


def _animated_gif(path: Path) -> None:
    frames = [Image.new("RGB", (40, 48), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


def test_one_rule_for_gif_and_heic_in_training_and_predict(tmp_path, capsys):
    """Training used to drop GIFs and HEICs silently while predict read GIFs: now both read GIFs
    (first frame) and both name a format this Pillow cannot read."""
    from vggnet.data.datasets import _pillow_suffixes

    _images(tmp_path / "train" / "a", 1)
    _animated_gif(tmp_path / "train" / "a" / "anim.gif")
    (tmp_path / "train" / "a" / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    heic_readable = ".heic" in _pillow_suffixes()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = build_dataset(tmp_path)
    names = sorted(Path(p).name for p, _ in ds.samples)
    assert "anim.gif" in names
    if not heic_readable:
        assert names == ["anim.gif", "img0.png"]
        assert any("phone.heic" in str(w.message) and "pillow-heif" in str(w.message) for w in record)
        assert image_file_problem(tmp_path / "train" / "a" / "phone.heic").startswith(".heic images cannot")
    ckpt = _checkpoint(tmp_path / "c.pt")
    gif, heic = tmp_path / "train" / "a" / "anim.gif", tmp_path / "train" / "a" / "phone.heic"
    assert main(["predict", str(ckpt), str(gif), str(heic), "--test-scales", "40"]) == 1
    cap = capsys.readouterr()
    assert str(gif) in cap.out and "phone.heic" in cap.err


# --------------------------------------------------------------------------- predict (10, 11)


def test_predict_refuses_nan_weights_naming_the_checkpoint(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "diverged.pt", nan=True)
    img = _images(tmp_path / "img", 1)[0]
    assert main(["predict", str(ckpt), str(img), "--test-scales", "40"]) == 2
    err = capsys.readouterr().err
    assert "diverged.pt" in err and "NaN" in err and "classifier.0.weight" in err and "Traceback" not in err
    from vggnet.classification.evaluate import evaluate

    with pytest.raises(CheckpointError, match="diverged.pt.*NaN"):
        evaluate(ckpt, tmp_path / "img", scales=[40])


def test_predict_with_a_class_list_shorter_than_the_outputs(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "short.pt", classes=["a", "b"])
    img = _images(tmp_path / "img", 1)[0]
    assert main(["predict", str(ckpt), str(img), "--test-scales", "40"]) == 2
    err = capsys.readouterr().err
    assert "short.pt: lists 2 class names for the net's 3 outputs" in err and "IndexError" not in err


def test_dense_pass_memory_estimate_by_hand():
    """Net A at 1/16 width: the peak is conv1's input (3 channels) + output (4) at Q x Q, for the image and its flip."""
    from vggnet.inference import dense_pass_bytes

    model = vgg("A", num_classes=3, **TINY)
    assert dense_pass_bytes(model, 64, 64) == (3 + 4) * 64 * 64 * 2 * 4
    assert dense_pass_bytes(model, 64, 64, images=1, bytes_per_value=2) == (3 + 4) * 64 * 64 * 2


def test_test_scales_that_cannot_fit_are_refused_with_the_estimate(tmp_path, capsys, monkeypatch):
    import vggnet.inference as inference

    ckpt = _checkpoint(tmp_path / "c.pt")
    img = _images(tmp_path / "img", 1)[0]
    monkeypatch.setattr(inference, "available_bytes", lambda device: 2 * 2**30)  # a 2 GiB machine
    assert main(["predict", str(ckpt), str(img), "--test-scales", "50000", "--amp", "off"]) == 2
    err = capsys.readouterr().err
    # (3 + 4) * 50000^2 * 2 images * 4 bytes of activations + 15 bytes per pixel of the image = 177.5e9 bytes = 165.3 GiB
    assert "Q=50000 needs at least 165.3 GiB" in err and "2.0 GiB free on cpu" in err
    assert "up to about 5499" in err
    assert main(["predict", str(ckpt), str(img), "--test-scales", "40"]) == 0  # a sane Q still runs
    capsys.readouterr()


# --------------------------------------------------------------------------- YAML settings (9)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vgg train")
    p.add_argument("--config-file")
    p.add_argument("--data", metavar="DIR")
    p.add_argument("--val-scale", type=int, default=None)
    p.add_argument("--amp", default="off")
    p.add_argument("--scale", default=256, metavar="S|Smin:Smax")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_model_arguments(p)
    return p


def _parse_yaml(tmp_path: Path, text: str | bytes) -> argparse.Namespace:
    path = tmp_path / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return parse_args_with_config(_parser(), ["--config-file", str(path)])


@pytest.mark.parametrize("text,value", [("true", True), ("false", False), ('"no"', False), ("no", False),
                                        ("yes", True), ('"off"', False), ("On", True)])
def test_yaml_booleans_are_read_strictly(tmp_path, text, value):
    assert _parse_yaml(tmp_path, f"batch_norm: {text}\n").batch_norm is value


@pytest.mark.parametrize("text,match", [
    ('batch_norm: "yes please"\n', "'batch_norm' is on or off: expected true or false, got 'yes please'"),
    ("batch_norm: 1\n", "'batch_norm' is on or off"),
    ("no_progress: maybe\n", "unknown setting"),
    ("progress: maybe\n", "'progress' is on or off"),
    ("val_scale: 40.0\n", "bad value for 'val_scale'.*expected an integer, got 40.0"),
    ("fc_width: true\n", "'fc_width' is not an on/off setting: expected an integer, got true"),
    ("width: [1, 2]\n", "bad value for 'width'.*expected a number"),
    ("model: {name: D}\n", "'model' expects a single value"),
    ("1: 2\n", "setting names are text"),
])
def test_yaml_wrong_types_are_named(tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        _parse_yaml(tmp_path, text)


def test_yaml_number_for_a_text_flag_is_the_text(tmp_path):
    """`data: 12` used to reach Path(12) (a TypeError traceback): it is the folder named 12."""
    assert _parse_yaml(tmp_path, "data: 12\n").data == "12"
    assert main(["eval", "--checkpoint", "x.pt", "--config-file", str(tmp_path / "run.yaml")]) == 2


def test_yaml_words_stay_words_and_numbers_where_numbers_belong(tmp_path):
    args = _parse_yaml(tmp_path, "amp: off\nscale: 256\nwidth: 1\nval_scale: 288\nmodel: D\ndata: /x\n")
    assert (args.amp, args.scale, args.width, args.val_scale, args.model, args.data) == ("off", 256, 1.0, 288,
                                                                                        "D", "/x")
    assert isinstance(args.width, float)


def test_yaml_billion_laughs_is_refused(tmp_path):
    """Nine levels of ten aliases: 10^9 strings from a 400-byte file."""
    lines = ['a0: &a0 "lol"'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 700
    with pytest.raises(UserError, match=r"laughs.yaml: not valid YAML: aliases \(\*name\) are not allowed"):
        load_config_file(path)


def test_yaml_invalid_utf8_and_oversized_files(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("lr: 0.01\nmodel: D  # café\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 on line 2\)"):
        load_config_file(path)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    with pytest.raises(UserError, match="big.yaml: larger than 1 MiB"):
        load_config_file(big)


def test_yaml_errors_reach_the_command_line_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text('batch_norm: "yes please"\n')
    assert main(["train", "--config-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: 'batch_norm' is on or off" in err and "Traceback" not in err


# --------------------------------------------------------------------------- foreign files (11)


@pytest.mark.parametrize("value,match", [(5, r"its 'layer_names' attribute is 5, not a list of layer names"),
                                         ([1, 2], r"its 'layer_names' attribute is \[1, 2\], not a list")])
def test_keras_file_with_non_string_layer_names(tmp_path, value, match):
    h5py = pytest.importorskip("h5py")
    from vggnet.interop.keras import import_keras

    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array(value) if isinstance(value, list) else value
    with pytest.raises(CheckpointError, match=rf"odd.h5 is not a Keras h5 weights file: {match}"):
        import_keras(path)


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_predict_and_eval_given_safetensors_suggest_vgg_import_safetensors(tmp_path, capsys, command):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file(vgg("A", num_classes=3, **TINY).state_dict(), str(path))
    img = _images(tmp_path / "img", 1)[0]
    argv = (["predict", str(path), str(img)] if command == "predict"
            else ["eval", "--checkpoint", str(path), "--data", str(tmp_path / "img"), "--workers", "0"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"vgg import safetensors {path} --output CKPT.pt" in err and "import torchvision" not in err


def test_a_checkpoint_that_pickles_code_is_refused_without_running_it(tmp_path, capsys):
    """A .pt whose pickle would call a function on load (the classic malicious checkpoint)."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"format": "vggnet.checkpoint", "payload": Payload()}, path)
    img = _images(tmp_path / "img", 1)[0]
    assert main(["predict", str(path), str(img)]) == 2
    err = capsys.readouterr().err
    assert "evil.pt cannot be read" in err and "weights_only" in err and not marker.exists()


def test_predict_on_a_folder_lists_it_by_the_training_rule(tmp_path, capsys, no_hang):
    ckpt = _checkpoint(tmp_path / "c.pt")
    folder = tmp_path / "photos"
    good = _images(folder, 1)[0]
    os.mkfifo(folder / "pipe.jpg")
    (folder / "loop").symlink_to(".")
    with pytest.warns(LeftOutWarning, match=r"loop: a link to .*pipe\.jpg: a FIFO"):
        assert main(["predict", "--checkpoint", str(ckpt), str(folder), "--test-scales", "40"]) == 0
    out = capsys.readouterr().out
    assert str(good) in out and "pipe.jpg" not in out
