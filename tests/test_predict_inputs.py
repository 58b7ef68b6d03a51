"""`Predictor`'s inputs: paths, Pillow images, numpy arrays and tensors (batched), threads, method/top-k per call."""

import numpy as np
import pytest
import torch
from PIL import Image

from vggnet.checkpoint import make_checkpoint, save_checkpoint
from vggnet.classification.predict import Predictor, predict
from vggnet.data.synthetic import SyntheticShapes
from vggnet.errors import UserError
from vggnet.models import vgg

TINY = dict(width=1 / 16, fc_width=16, crop_size=32, dropout=0.0)
CAFFE = {"pixel_scale": 255.0, "mean": [120.0, 110.0, 100.0], "std": [60.0, 60.0, 60.0]}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(3)
    model = vgg("A", num_classes=5, **TINY)
    for m in model.classifier:  # O(1) class scores in a tiny net, so the classes are told apart
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=(2.0 / m.in_features) ** 0.5)
            torch.nn.init.normal_(m.bias, std=0.1)
    path = tmp_path_factory.mktemp("ckpt") / "a.pt"
    save_checkpoint(path, make_checkpoint(model, preprocessing=CAFFE, classes=list("abcde"), meta={"scale": 40}))
    return path


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """Two lossless files of equal size (a batch) and their pixels."""
    root = tmp_path_factory.mktemp("png")
    shapes = SyntheticShapes(2, classes=5, split="val", image_size=(48, 48))
    paths, arrays = [], []
    for i in range(2):
        img = shapes[i][0].resize((56, 44))
        paths.append(str(root / f"{i}.png"))
        img.save(paths[-1])
        arrays.append(np.asarray(img))
    return paths, arrays


def tops(results):
    return [[(t["class"], round(t["probability"], 6)) for t in r["top"]] for r in results]


@pytest.mark.parametrize("method", ["dense", "center", "both"])
def test_every_kind_of_input_gives_the_file_s_numbers(ckpt, pngs, method):
    paths, arrays = pngs
    predictor = Predictor(ckpt, method=method, scales=[40, 48] if method != "center" else None)
    expected = predictor(paths)
    batch_u8 = np.stack(arrays)                                        # (N, H, W, 3) uint8
    chw = torch.from_numpy(batch_u8).permute(0, 3, 1, 2)               # (N, 3, H, W) uint8
    inputs = {
        "pil": [Image.open(p) for p in paths],                         # lazily opened files
        "pil_loaded": [Image.fromarray(a) for a in arrays],
        "array_list": arrays,
        "array_batch": batch_u8,
        "tensor_batch": chw,
        "tensor_float": chw.float() / 255.0,                           # float in [0, 1]
        "tensor_list": list(chw),
    }
    for name, images in inputs.items():
        got = predictor(images)
        assert tops(got) == tops(expected), name
        assert [r["image"] for r in got][0].startswith("<"), name
    assert predictor(paths[0]) == expected[:1]  # one path, not a list
    single = predictor(chw[0])                  # one (3, H, W) tensor
    assert tops(single) == tops(expected[:1])


def test_method_and_topk_per_call_equal_a_predictor_built_for_them(ckpt, pngs):
    paths, _ = pngs
    dense = Predictor(ckpt, scales=[40, 48])
    center = Predictor(ckpt, method="center", scales=[40, 48])  # given scales hold for every method
    assert dense(paths, method="center", topk=2) == center(paths, topk=2)
    assert len(dense(paths, topk=2)[0]["top"]) == 2 and len(dense(paths)[0]["top"]) == 5
    assert dense(paths, method="dense") == dense(paths)
    assert dense(paths, method="center") != dense(paths)
    with pytest.raises(UserError, match="method must be one of"):
        dense(paths, method="sideways")
    with pytest.raises(UserError, match="top_k must be a positive integer"):
        dense(paths, topk=0)


def test_batched_posteriors_equal_one_image_at_a_time(ckpt, pngs):
    paths, arrays = pngs
    predictor = Predictor(ckpt, scales=[40, 48], method="both")
    images = [Image.fromarray(a) for a in arrays] + [Image.fromarray(arrays[0][:40, :50])]  # two sizes
    batched = predictor.posteriors(images)
    one_by_one = torch.cat([predictor.posteriors([img]) for img in images])
    assert batched.shape == (3, 5)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.sum(1), torch.ones(3), atol=1e-5, rtol=0)


def test_threads_and_bad_inputs(ckpt, pngs, tmp_path):
    paths, arrays = pngs
    before = torch.get_num_threads()
    try:
        predictor = Predictor(ckpt, threads=1, scales=[40])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(UserError, match="--threads must be a positive integer"):
        Predictor(ckpt, threads=0)
    with pytest.raises(UserError, match=r"images\[0\]: expected a \(3, H, W\)"):
        predictor(torch.zeros(2, 8, 8))
    with pytest.raises(UserError, match=r"images\[0\]: float pixels must lie in \[0, 1\]"):
        predictor(np.full((40, 40, 3), 2.0))
    with pytest.raises(UserError, match=r"images\[1\]: expected a path, a Pillow image"):
        predictor([paths[0], 3])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    out = predictor([str(bad), arrays[0]])
    assert "error" in out[0] and "bad.png" in out[0]["error"] and out[1]["image"] == "<array 1>"
    assert predict(ckpt, arrays[0], scales=[40], threads=1)[0]["top"] == predictor(arrays[0])[0]["top"]
