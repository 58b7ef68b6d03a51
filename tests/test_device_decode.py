"""`--decode-device cuda`: JPEGs leave the loader workers encoded with their augmentation drawn, and are
decoded and transformed in batches on the device. Here the device is the CPU, where the split path must give
bitwise the usual path's tensors, bad files included, and a training run the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vggnet.data.decode as decode
from vggnet.data.datasets import build_dataset, collate_skip_bad
from vggnet.data.device_decode import DeferredDecode, EncodedJPEG, collate_deferred, finish_batch
from vggnet.data.transforms import DenseEvalPreset, Preprocessing, TrainPreset
from vggnet.data.images import open_image
from vggnet.engine.data import SeededAugmentation, collate_naming_skips
from vggnet.errors import DataError, UserError

pytestmark = pytest.mark.skipif(not decode.torchcodec_available(), reason="TorchCodec does not load here")

PCA = {"eigval": [55.0, 4.8, 1.2], "eigvec": [[-0.58, -0.58, -0.57], [-0.81, 0.04, 0.59], [0.05, -0.82, 0.57]]}


def photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def mixed_folder(root):
    """Class folders with files of every kind: JPEGs the device takes, and files that stay on the CPU."""
    for c, cls in enumerate(("a", "b")):
        d = root / "train" / cls
        d.mkdir(parents=True)
        for i in range(5):
            Image.fromarray(photo(40 + 4 * i, 56 - 2 * i, seed=10 * c + i)).save(d / f"{i}.jpg", quality=90)
        Image.fromarray(photo(44, 52, seed=20 + c)).save(d / "png.png")
        Image.fromarray(photo(44, 52, seed=30 + c)).convert("CMYK").save(d / "cmyk.jpg", quality=95)
        rot = Image.fromarray(photo(52, 44, seed=40 + c))
        exif = rot.getexif()
        exif[0x0112] = 6
        rot.save(d / "rotated.jpg", quality=90, exif=exif)
    (root / "val").mkdir()
    (root / "val" / "a").symlink_to(root / "train" / "a")
    (root / "val" / "b").symlink_to(root / "train" / "b")
    return root


def preset(scale=(36, 60), **kw):
    return TrainPreset(crop_size=32, scale=scale, preprocessing=Preprocessing.caffe(), pca=PCA, **kw)


def batches(dataset, transform, collate, size=4):
    dataset.transform = transform
    seeded = SeededAugmentation(dataset, seed=3)
    items = [seeded[(i, 1)] for i in range(len(dataset))]
    return [collate_naming_skips(collate)(items[k:k + size]) for k in range(0, len(items), size)]


def test_split_path_is_bitwise_the_workers_path(tmp_path):
    ds = build_dataset(mixed_folder(tmp_path), split="train", strict=False)
    p = preset()
    usual = batches(ds, p, collate_skip_bad)
    split = batches(ds, DeferredDecode(p), collate_deferred)
    encoded = [e.path.rsplit("/", 1)[-1] for (b, _) in split for e in b[0].encoded]
    # only the plain JPEGs wait for the device; PNG, CMYK and EXIF-rotated files are done in the workers
    assert sorted(encoded) == sorted(f"{i}.jpg" for i in range(5) for _ in range(2))
    for (ub, _), (sb, _) in zip(usual, split):
        done, messages = finish_batch(sb, p, "cpu")
        assert messages == []
        assert torch.equal(done[0], ub[0]) and torch.equal(done[1], ub[1])
        assert done.skipped == ub.skipped == 0


def test_the_augmentation_is_drawn_in_the_worker_as_the_preset_draws_it(tmp_path):
    path = tmp_path / "x.jpg"
    Image.fromarray(photo(50, 70, seed=1)).save(path, quality=90)
    p = preset()
    for seed in range(6):
        torch.manual_seed(seed)
        enc = DeferredDecode(p)(open_image(path))
        after = torch.rand(1)
        assert isinstance(enc, EncodedJPEG) and enc.data.dtype == torch.uint8
        torch.manual_seed(seed)
        assert enc.params["flip"] == (p.draw(50, 70)["flip"])
        assert torch.equal(torch.rand(1), after)  # the worker drew exactly what the preset draws


def test_bad_files_are_named_and_skipped_on_either_side(tmp_path):
    root = mixed_folder(tmp_path)
    d = root / "train" / "a"
    good = (d / "0.jpg").read_bytes()
    # a JPEG whose header reads but whose scan is garbage, ending with the end-of-image marker: it leaves the
    # worker encoded, the device decoder refuses it, and Pillow decodes what it can or names it
    (d / "garbage.jpg").write_bytes(good[:400] + bytes(range(256)) * 8 + b"\xff\xd9")
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])  # no end marker: the worker's Pillow names it
    ds = build_dataset(root, split="train", strict=False)
    p = preset()
    usual = batches(ds, p, collate_skip_bad, size=len(ds))
    split = batches(ds, DeferredDecode(p), collate_deferred, size=len(ds))
    (ub, umsg), (sb, smsg) = usual[0], split[0]
    done, refused = finish_batch(sb, p, "cpu")
    assert any("truncated.jpg" in m for m in umsg) and any("truncated.jpg" in m for m in smsg)
    # whatever Pillow makes of the garbage file on the CPU path, the split path makes the same
    assert done.skipped == ub.skipped and len(done[0]) == len(ub[0])
    assert sorted(umsg) == sorted(smsg + refused)
    assert torch.equal(done[0], ub[0]) and torch.equal(done[1], ub[1])
    # evaluation is strict: the garbage file stops it, named (it once reached the transforms undecoded)
    strict = build_dataset(root, DenseEvalPreset(scale=36, preprocessing=Preprocessing.caffe()), split="train",
                           strict=True)
    at = next(i for i, (path, _) in enumerate(strict.samples) if path.endswith("garbage.jpg"))
    with pytest.raises(DataError, match="garbage.jpg: cannot decode"):
        strict[at]


def test_an_all_bad_batch_stays_empty_and_counted():
    empty = collate_deferred([None, None])
    done, messages = finish_batch(empty, preset(), "cpu")
    assert len(done) == 0 and done.skipped == 2 and messages == []


def test_policies_and_box_tasks_stay_on_the_workers(monkeypatch):
    from vggnet.engine import TrainConfig, Trainer
    from vggnet.localisation.task import LocalisationTask

    with pytest.raises(ValueError, match="auto_augment"):
        DeferredDecode(preset(auto_augment="randaugment"))
    monkeypatch.setattr(decode, "choose_decode_device", lambda requested, device, **kw: "cuda")
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.device, trainer.task = TrainConfig(decode_device="cuda"), torch.device("cpu"), \
        LocalisationTask("pcr")
    with pytest.raises(UserError, match="--decode-device cuda: the .* task transforms its own items"):
        trainer.resolve_decoding()


def _train(tmp_path, name, monkeypatch=None, **kw):
    from vggnet import TrainConfig, train

    cfg = TrainConfig(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[36, 48],
                      data=str(tmp_path / "data"), batch_size=4, epochs=1, workers=0, progress=False,
                      stats_sample=8, device="cpu", amp="off", output_dir=str(tmp_path / name), **kw)
    result = train(cfg)
    return torch.load(result["checkpoint"], map_location="cpu", weights_only=True)["state_dict"], \
        (tmp_path / name / "train.log").read_text()


def test_a_run_decoding_on_the_device_trains_exactly_as_one_decoding_in_the_workers(tmp_path, monkeypatch):
    mixed_folder(tmp_path / "data")
    plain, plain_log = _train(tmp_path, "cpu")
    assert "JPEGs decoded by the loader workers" in plain_log
    # the device is the CPU here: the choice is mocked to "cuda", so JPEGs are decoded in the main process on
    # the training device, in batches, exactly as on a GPU
    monkeypatch.setattr(decode, "choose_decode_device", lambda requested, device, **kw: "cuda")
    split, split_log = _train(tmp_path, "split", decode_device="cuda")
    assert "JPEGs decoded on cpu in batches of a micro-batch (TorchCodec)" in split_log
    assert plain.keys() == split.keys()
    for k in plain:
        assert torch.equal(plain[k], split[k]), k


def test_the_flag_is_refused_where_it_cannot_work(tmp_path, monkeypatch):
    from vggnet import TrainConfig, train

    mixed_folder(tmp_path / "data")
    base = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[36, 48], data=str(tmp_path / "data"),
                batch_size=4, epochs=1, workers=0, progress=False, stats_sample=8, device="cpu", amp="off")
    with pytest.raises(UserError, match="--decode-device cuda decodes on the training GPU, but the device is cpu"):
        train(TrainConfig(**base, decode_device="cuda", output_dir=str(tmp_path / "r1")))
    assert not (tmp_path / "r1").exists()  # refused before any work: no run folder
    with pytest.raises(UserError, match="--decode-device must be one of cpu, cuda, auto"):
        TrainConfig(**base, decode_device="gpu").validate()
    monkeypatch.setattr(decode, "choose_decode_device", lambda requested, device, **kw: "cuda")
    with pytest.raises(UserError, match="--auto-augment policies run in the loader workers"):
        train(TrainConfig(**base, decode_device="cuda", auto_augment="trivialaugment",
                          output_dir=str(tmp_path / "r2")))
