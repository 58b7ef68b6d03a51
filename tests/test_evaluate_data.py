"""Evaluation on image folders: known answers, fusion, crop geometry, `vgg eval` / `vgg predict`, torch.distributed."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vggnet.checkpoint import make_checkpoint, save_checkpoint
from vggnet.cli import main
from vggnet.data.datasets import build_dataset
from vggnet.data.synthetic import SyntheticShapes, write_synthetic
from vggnet.classification.evaluate import evaluate, load_posteriors, validate
from vggnet.models import vgg

TINY = dict(width=1 / 16, fc_width=16, crop_size=32, dropout=0.0)
CLASSES = SyntheticShapes(0, classes=7).classes  # the synthetic generator's first 7 shapes
N = 15  # validation images (odd: the 2 ranks of the distributed test get 8 and 7), sides 40-72 px
# 0-255 pixels minus a mean, divided by a std so that the tiny net's class scores stay O(1)
CAFFE = {"pixel_scale": 255.0, "mean": [120.0, 110.0, 100.0], "std": [60.0, 60.0, 60.0]}
TORCHVISION = {"pixel_scale": 1.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def lively(model):
    for m in model.classifier:  # He-scaled FC weights: O(1) class scores in a tiny net
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=(2.0 / m.in_features) ** 0.5)
            torch.nn.init.normal_(m.bias, std=0.1)
    return model.eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The synthetic shapes as JPEG class folders: root/val/<shape>/*.jpg."""
    root = tmp_path_factory.mktemp("data")
    params = write_synthetic(root / "synth", classes=7, train=0, val=N, image_size=(40, 72))
    assert params["classes"] == CLASSES
    return root / "synth"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(3)
    model = lively(vgg("A", num_classes=7, **TINY))
    path = tmp_path_factory.mktemp("ckpt") / "a.pt"
    save_checkpoint(path, make_checkpoint(model, preprocessing=CAFFE, classes=CLASSES, meta={"scale": 40}))
    return path


def known_answer_checkpoint(path):
    """Class scores independent of the image: bias ranks class c at place c+1 (c0 wins)."""
    model = vgg("A", num_classes=7, **TINY)
    with torch.no_grad():
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.copy_(torch.arange(7, 0, -1, dtype=torch.float32))
    save_checkpoint(path, make_checkpoint(model, preprocessing=CAFFE, classes=CLASSES, meta={"scale": 40}))
    return model.classifier[-1].bias.detach().softmax(0)


def test_known_answer_gives_exact_errors(data, tmp_path):
    posterior = known_answer_checkpoint(tmp_path / "k.pt")
    res = evaluate(tmp_path / "k.pt", data, method="both", batch_size=3)
    n = res.overall["images"]
    assert n == N and res.nets[0]["test_scales"] == [32, 40, 72]  # {S-32, S, S+32}, raised to crop_size
    # classes 0-4 are in the top 5; only class 0 is top-1
    labels = res.labels
    expect1 = 100.0 * int((labels != 0).sum()) / n
    expect5 = 100.0 * int((labels >= 5).sum()) / n
    for row in res.rows:
        assert (row["top1_error"], row["top5_error"]) == (pytest.approx(expect1), pytest.approx(expect5)), row
    torch.testing.assert_close(res.final_posterior(), posterior.expand(n, 7), rtol=1e-5, atol=1e-6)
    per_class = res.overall["per_class_accuracy"]
    assert per_class[CLASSES[0]] == 100.0 and per_class[CLASSES[3]] == 0.0


def test_dense_multi_crop_and_both_rows(data, ckpt):
    res = evaluate(ckpt, data, method="both", scales=[32, 48], batch_size=4)
    methods = [(r["test_scale"], r["method"]) for r in res.rows]
    assert methods == [("32", "dense"), ("48", "dense"), ("32,48", "dense"),
                       ("32", "multi-crop"), ("48", "multi-crop"), ("32,48", "multi-crop"),
                       ("32,48", "dense & multi-crop")]
    dense = (res.posteriors[(0, "dense", 32)] + res.posteriors[(0, "dense", 48)]) / 2
    crops = (res.posteriors[(0, "multi-crop", 32)] + res.posteriors[(0, "multi-crop", 48)]) / 2
    torch.testing.assert_close(res.final_posterior(), (dense + crops) / 2)
    assert not torch.allclose(dense, crops, atol=1e-4)  # the two methods do differ
    assert set(res.to_dict()["nets"][0]["results"]) == {"dense", "multi-crop", "both"}


def test_batching_does_not_change_dense_posteriors(data, ckpt):
    a = evaluate(ckpt, data, scales=[40], batch_size=1)
    b = evaluate(ckpt, data, scales=[40], batch_size=5, workers=1)
    torch.testing.assert_close(a.posteriors[(0, "dense", 40)], b.posteriors[(0, "dense", 40)], rtol=1e-5, atol=1e-6)
    assert torch.equal(a.labels, b.labels)


def test_channels_last_and_bf16_autocast(data, ckpt):
    ref = evaluate(ckpt, data, method="both", scales=[40])
    cl = evaluate(ckpt, data, method="both", scales=[40], channels_last=True)
    torch.testing.assert_close(cl.final_posterior(), ref.final_posterior(), rtol=1e-4, atol=1e-5)
    bf = evaluate(ckpt, data, method="both", scales=[40], amp="bf16")
    assert bf.final_posterior().dtype == torch.float32  # posteriors are averaged in float32
    assert (bf.final_posterior() - ref.final_posterior()).abs().max() < 0.05


def test_fusion_with_itself_equals_the_net(data, ckpt):
    one = evaluate(ckpt, data, scales=[40, 48])
    two = evaluate([ckpt, ckpt], data, scales=[40, 48])
    torch.testing.assert_close(two.final_posterior(), one.final_posterior())
    assert two.overall["top1_error"] == one.overall["top1_error"]
    assert two.fusion["dense"] == one.results[0]["dense"]["all"]
    assert [n["name"] for n in two.nets] == ["A#1", "A#2"]


def test_each_net_is_fed_its_own_preprocessing(data, ckpt, tmp_path):
    other = torch.load(ckpt, weights_only=True)
    other["preprocessing"] = TORCHVISION
    save_checkpoint(tmp_path / "tv.pt", other)
    a = evaluate(ckpt, data, scales=[40])
    b = evaluate(tmp_path / "tv.pt", data, scales=[40])
    fused = evaluate([ckpt, tmp_path / "tv.pt"], data, scales=[40])
    assert not torch.allclose(a.final_posterior(), b.final_posterior(), atol=1e-3)
    torch.testing.assert_close(fused.final_posterior(), (a.final_posterior() + b.final_posterior()) / 2)


class Recorder(torch.nn.Module):
    """A stand-in net that records what it is given: crops (forward) and whole images (dense)."""

    name, crop_size, num_classes = "rec", 32, 2

    def __init__(self):
        super().__init__()
        self.crops, self.images = [], []

    def forward(self, x):
        self.crops.append(x.clone())
        return torch.zeros(x.shape[0], 2)

    def dense(self, x):
        self.images.append(x.clone())
        return torch.zeros(x.shape[0], 2, 1, 1)


def test_crop_grid_and_dense_input_geometry(tmp_path):
    # One lossless 48x80 image whose pixels encode their coordinates: R = 3x, G = 5y.
    y, x = np.mgrid[0:48, 0:80]
    pixels = np.stack([3 * x, 5 * y, np.zeros_like(x)], axis=-1).astype(np.uint8)
    (tmp_path / "val" / "a").mkdir(parents=True)
    (tmp_path / "val" / "b").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "val" / "a" / "img.png")
    Image.fromarray(pixels[:, :60]).save(tmp_path / "val" / "b" / "img.png")
    identity = {"pixel_scale": 255.0, "mean": [0.0] * 3, "std": [1.0] * 3}
    rec = Recorder()
    evaluate(rec, tmp_path, preprocessing=identity, method="both", scales=[48], batch_size=100)
    # dense: each whole image at its own size (Q = 48 = its smallest side), with its mirror image
    assert sorted(tuple(t.shape) for t in rec.images) == [(2, 3, 48, 60), (2, 3, 48, 80)]
    whole = [t for t in rec.images if t.shape[-1] == 80][0]
    torch.testing.assert_close(whole[0], torch.from_numpy(pixels).permute(2, 0, 1).float())
    torch.testing.assert_close(whole[1], whole[0].flip(-1))
    # multi-crop of the 48x80 image: 5x5 grid, row-major, corners at the image corners, evenly spaced
    wide = [c for c in rec.crops if c.shape[0] == 50 and round(float(c[24, 0, 31, 31])) == 3 * 79]
    assert len(wide) == 1 and len(rec.crops) == 2
    crops = wide[0]
    tops = [round(float(c[1, 0, 0])) // 5 for c in crops[:25]]
    lefts = [round(float(c[0, 0, 0])) // 3 for c in crops[:25]]
    assert tops == [t for t in (0, 4, 8, 12, 16) for _ in range(5)]
    assert lefts == [0, 12, 24, 36, 48] * 5
    assert round(float(crops[24, 1, 31, 31])) == 5 * 47  # the last crop ends at the bottom-right corner
    torch.testing.assert_close(crops[25:], crops[:25].flip(-1))  # then the 25 mirror images


def test_validate_matches_dense_evaluation_and_restores_mode(data, ckpt):
    from vggnet.checkpoint import model_from_checkpoint

    model, c = model_from_checkpoint(ckpt)
    model.train()
    ds = build_dataset(data, None, split="val", classes=CLASSES, strict=True)
    v = validate(model, ds, preprocessing=c["preprocessing"], scale=40, device="cpu", batch_size=4, flip=True)
    assert model.training
    e = evaluate(ckpt, data, scales=[40])
    assert v["images"] == e.overall["images"] == N
    assert v["top1_error"] == e.overall["top1_error"] and v["top5_error"] == e.overall["top5_error"]
    p = e.final_posterior()
    nll = -p.gather(1, e.labels.view(-1, 1)).log().mean().item()
    assert v["loss"] == pytest.approx(nll, rel=1e-5)
    assert set(validate(model, ds, preprocessing=c["preprocessing"], scale=40)) == {
        "top1_error", "top5_error", "loss", "images", "bad_images"}


def test_posteriors_file_recomputes_fusion(data, ckpt, tmp_path):
    res = evaluate(ckpt, data, method="both", scales=[40])
    res.save_posteriors(tmp_path / "p.pt")
    blob = torch.load(tmp_path / "p.pt", weights_only=True)  # plain containers only
    assert blob["posteriors"]["0/dense/40"].shape == (N, 7)
    again = load_posteriors([tmp_path / "p.pt"])
    assert again.rows == res.rows
    fused = load_posteriors([tmp_path / "p.pt", tmp_path / "p.pt"], method="dense")
    assert fused.overall["top1_error"] == res.results[0]["dense"]["all"]["top1_error"]


# --------------------------------------------------------------------------- command line


def test_vgg_eval_end_to_end(data, ckpt, tmp_path, capsys):
    md, js, post = tmp_path / "r.md", tmp_path / "r.json", tmp_path / "p.pt"
    argv = ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--method", "both", "--workers", "0"]
    assert main(argv + ["--output", str(md), "--save-posteriors", str(post)]) == 0
    out = capsys.readouterr().out
    assert "| net" in out and "dense & multi-crop" in out and "overall" in out
    text = md.read_text()
    row = [ln for ln in text.splitlines() if "dense & multi-crop" in ln][0]
    assert [c.strip() for c in row.strip("|").split("|")][:4] == ["A", "40", "32,40,72", "dense & multi-crop"]
    assert "Per-class top-1 accuracy" in text and f"| {CLASSES[6]} |" in text
    assert main(argv + ["--json", "--output", str(js)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(js.read_text())
    assert report["images"] == N and report["nets"][0]["train_scale"] == 40
    assert set(report["nets"][0]["results"]["dense"]) == {"32", "40", "72", "all"}
    for key in ("top1_error", "top5_error"):
        assert 0.0 <= report["overall"][key] <= 100.0
        assert report["overall"][key] == report["nets"][0]["results"]["both"]["all"][key]
    # fusion recomputed from two saved posteriors files, no net run
    assert main(["eval", "--posteriors", str(post), str(post), "--method", "both", "--json"]) == 0
    fused = json.loads(capsys.readouterr().out)
    assert fused["fusion"]["both"]["top1_error"] == report["overall"]["top1_error"]


def test_vgg_eval_flag_errors(data, ckpt, capsys):
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--test-scales", "16,40"]) == 2
    assert "--test-scales" in capsys.readouterr().err
    assert main(["eval", "--data", str(data)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_vgg_eval_corrupt_image_is_an_error_naming_it(data, ckpt, tmp_path, capsys):
    import shutil

    bad_root = tmp_path / "bad"
    shutil.copytree(data, bad_root)
    bad = bad_root / "val" / CLASSES[2] / "broken.jpg"
    bad.write_bytes(sorted((data / "val").glob("*/*.jpg"))[0].read_bytes()[:200])  # a truncated JPEG
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(bad_root), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "Traceback" not in err


def test_vgg_predict(data, ckpt, tmp_path, capsys):
    good = sorted((data / "val").glob("*/*.jpg"))[:2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    argv = ["predict", str(ckpt), str(good[0]), str(bad), str(good[1])]
    assert main(argv) == 1
    cap = capsys.readouterr()
    assert str(good[0]) in cap.out and str(good[1]) in cap.out
    assert cap.out.count(" 5. ") == 2  # top-5 for each readable image
    assert "bad.jpg" in cap.err and "1 of 3" in cap.err
    assert main(argv + ["--json", "--method", "both", "--test-scales", "40"]) == 1
    results = json.loads(capsys.readouterr().out)
    assert [("error" in r) for r in results] == [False, True, False]
    top = results[0]["top"]
    assert len(top) == 5 and all(t["class"] in CLASSES for t in top)
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    assert main(["predict", str(ckpt), str(good[0])]) == 0
    capsys.readouterr()


def test_a_predictor_loads_once_and_answers_as_predict(data, ckpt, tmp_path, monkeypatch):
    import vggnet.checkpoint as checkpoint
    from vggnet.classification.predict import Predictor, predict

    good = [str(p) for p in sorted((data / "val").glob("*/*.jpg"))[:3]]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    loads = []
    real = checkpoint.model_from_checkpoint
    monkeypatch.setattr(checkpoint, "model_from_checkpoint", lambda *a, **k: loads.append(a) or real(*a, **k))
    predictor = Predictor(ckpt, scales=[40, 48], method="both")
    first, second = predictor(good[:2]), predictor([good[2], str(bad)])
    assert len(loads) == 1  # the weights are loaded and checked once for every call
    assert first + second == predict(ckpt, good + [str(bad)], scales=[40, 48], method="both")
    assert len(loads) == 2 and "error" in second[1] and "bad.jpg" in second[1]["error"]


# --------------------------------------------------------------------------- torch.distributed


def _worker(rank, world, rdzv, data, ckpt, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    try:
        from vggnet.checkpoint import model_from_checkpoint

        res = evaluate(ckpt, data, method="both", scales=[40, 48], batch_size=2)
        model, c = model_from_checkpoint(ckpt)
        ds = build_dataset(data, None, split="val", classes=CLASSES, strict=True)
        v = validate(model, ds, preprocessing=c["preprocessing"], scale=40, device="cpu", batch_size=2)
        torch.save({"post": {f"{k}": p for k, p in res.posteriors.items()}, "labels": res.labels,
                    "overall": {k: res.overall[k] for k in ("top1_error", "top5_error", "images")}, "validate": v},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_evaluation_equals_single_process(data, ckpt, tmp_path):
    import torch.multiprocessing as mp

    # fork: the children inherit the imported modules (spawn would re-import torch and vggnet in each)
    mp.start_processes(_worker, args=(2, str(tmp_path / "rdzv"), str(data), str(ckpt), str(tmp_path)), nprocs=2,
                       join=True, start_method="fork")
    single = evaluate(ckpt, data, method="both", scales=[40, 48], batch_size=2)
    from vggnet.checkpoint import model_from_checkpoint

    model, c = model_from_checkpoint(ckpt)
    ds = build_dataset(data, None, split="val", classes=CLASSES, strict=True)
    v = validate(model, ds, preprocessing=c["preprocessing"], scale=40, device="cpu", batch_size=2)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got["labels"], single.labels)
        for key, p in single.posteriors.items():
            torch.testing.assert_close(got["post"][f"{key}"], p, rtol=1e-5, atol=1e-6)
        assert got["overall"] == {k: single.overall[k] for k in ("top1_error", "top5_error", "images")}
        assert got["validate"]["images"] == v["images"] == N
        assert got["validate"]["top1_error"] == v["top1_error"] and got["validate"]["top5_error"] == v["top5_error"]
        assert got["validate"]["loss"] == pytest.approx(v["loss"], rel=1e-6)
