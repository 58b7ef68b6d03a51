"""TorchCodec where it wins, Pillow everywhere else (vggnet.data.decode): the pipeline gives the same pixels,
or the same named error, with TorchCodec on as with Pillow alone; and the --decode-device choice."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import vggnet.data.decode as decode
from vggnet.data.datasets import build_dataset
from vggnet.data.images import BadImageError, open_image
from vggnet.data.transforms import DenseEvalPreset, Preprocessing, TrainPreset
from vggnet.errors import UserError

needs_torchcodec = pytest.mark.skipif(not decode.torchcodec_available(), reason="TorchCodec does not load here")


def photo(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 10, w // 10, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)).astype(int)
    return np.clip(big + rng.integers(-20, 20, big.shape), 0, 255).astype(np.uint8)


def files(tmp_path):
    """One file per case the decoder must get right, in class folders (one class)."""
    d = tmp_path / "data" / "c"
    d.mkdir(parents=True)
    Image.fromarray(photo()).save(d / "rgb.jpg", quality=90)
    Image.fromarray(photo()).save(d / "progressive.jpg", quality=90, progressive=True)
    Image.fromarray(photo()).convert("L").save(d / "grey.jpg", quality=90)
    Image.fromarray(photo(seed=1)).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    Image.fromarray(photo(200, 240, seed=2)).save(d / "large.jpg", quality=90)  # >= 2 x S: Pillow's draft
    rot = Image.fromarray(photo(seed=3))
    exif = rot.getexif()
    exif[0x0112] = 6
    rot.save(d / "rotated.jpg", quality=90, exif=exif)
    Image.fromarray(photo(seed=4)).save(d / "png.png")
    return d


def spy(monkeypatch):
    calls = []
    real = decode.fast_jpeg

    def counted(img, min_side, orientation):
        out = real(img, min_side, orientation)
        calls.append((img.filename.rsplit("/", 1)[-1], out is not None))
        return out

    monkeypatch.setattr(decode, "fast_jpeg", counted)
    return calls


@needs_torchcodec
def test_same_pixels_as_pillow_and_torchcodec_only_where_it_wins(tmp_path, monkeypatch):
    d = files(tmp_path)
    pre = Preprocessing.caffe()
    presets = {"dense": DenseEvalPreset(scale=48, preprocessing=pre),
               "train": TrainPreset(crop_size=32, scale=(48, 64), preprocessing=pre)}
    for name, preset in presets.items():
        ds = build_dataset(d.parent, preset, split="train", strict=True)
        calls = spy(monkeypatch)
        torch.manual_seed(0)
        fast = [ds[i][0] for i in range(len(ds))]
        monkeypatch.setattr(decode, "DECODER", "pillow")
        torch.manual_seed(0)
        slow = [ds[i][0] for i in range(len(ds))]
        monkeypatch.setattr(decode, "DECODER", "auto")
        for (path, _), a, b in zip(ds.samples, fast, slow):
            assert a.shape == b.shape and torch.equal(a, b), (name, path)
        used = {f for f, hit in calls[:len(ds)] if hit}
        assert used == {"rgb.jpg", "progressive.jpg", "grey.jpg"}, name


@needs_torchcodec
def test_truncated_jpeg_gives_pillows_named_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(photo()).save(buf, "JPEG", quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert decode.fast_jpeg(open_image(p), 48, 1) is None  # no end-of-image marker: left to Pillow
    with pytest.raises(BadImageError, match=r"cut.jpg: truncated file"):
        DenseEvalPreset(scale=48, preprocessing=Preprocessing.caffe())(open_image(p))


@needs_torchcodec
def test_a_file_torchcodec_refuses_falls_back_to_pillow(tmp_path, monkeypatch):
    p = tmp_path / "x.jpg"
    Image.fromarray(photo()).save(p, quality=90)
    import torchcodec.decoders

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported")

    monkeypatch.setattr(torchcodec.decoders, "decode_jpeg", refuse)
    img = open_image(p)
    assert decode.fast_jpeg(img, 48, 1) is None
    out = DenseEvalPreset(scale=48, preprocessing=Preprocessing.caffe())(img)
    assert out.shape == (3, 48, 64)


def test_decode_device_choice():
    choose = decode.choose_decode_device
    assert choose("cpu", "cuda", cuda_decoder=True) == "cpu"
    assert choose("auto", "cpu", cuda_decoder=True) == "cpu"
    assert choose("auto", "cuda", cuda_decoder=True) == "cuda"
    assert choose("auto", "cuda", cuda_decoder=False) == "cpu"
    assert choose("cuda", "cuda:1", cuda_decoder=True) == "cuda"
    with pytest.raises(UserError, match="--decode-device cuda decodes on the training GPU, but the device is cpu"):
        choose("cuda", "cpu", cuda_decoder=True)
    with pytest.raises(UserError, match="--decode-device cuda needs TorchCodec with CUDA support"):
        choose("cuda", "cuda", cuda_decoder=False)
    with pytest.raises(UserError, match="--decode-device must be cpu, cuda or auto, got 'gpu'"):
        choose("gpu", "cuda")
