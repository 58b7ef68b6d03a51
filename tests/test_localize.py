"""Localisation (Appendix A): boxes through the transforms, targets and loss, protocol 1,
dense boxes, the greedy merge and its reference rows, top-5 localisation error,
bad input, checkpoint kinds, and `vgg localize eval|predict` end to end.

Nets are tiny (A at 1/16 width, FC 32, 32-pixel crops) and random: every
property tested here is a property of the geometry or the bookkeeping, not of
a trained net (training is tested in test_localize_train.py).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import box_iou

from vggnet import vgg
from vggnet.cli import main
from vggnet.data.datasets import build_dataset
from vggnet.data.synthetic import voc_xml, write_synthetic
from vggnet.data.transforms import Preprocessing, TrainPreset
from vggnet.classification.task import ClassificationTask
from vggnet.errors import CheckpointError, DataError
from vggnet.localisation.task import (BoxWarning, CentralCropPreset, LocalisationTask, LocalisationTrainTransform,
                             boxes_to_params, class_params, euclidean_loss, load_localiser, localisation_targets,
                             make_localisation_checkpoint, mean_box_error, params_to_boxes, protocol1,
                             sanitize_boxes, select_target)
from vggnet.localisation.full_protocol import (best_per_class, dense_boxes, greedy_merge, nms_clusters,
                                  top5_localisation_error)
from vggnet.checkpoint import make_checkpoint, save_checkpoint

IDENTITY = Preprocessing(pixel_scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def boxes(rows, hw):
    return tv_tensors.BoundingBoxes(torch.tensor(rows, dtype=torch.float32).reshape(-1, 4), format="XYXY",
                                    canvas_size=hw)


# --------------------------------------------------------------------------- boxes through the transforms


def _white_rectangle(w, h, box):
    img = Image.new("RGB", (w, h))
    img.paste((255, 255, 255), tuple(int(v) for v in box))
    return img


def test_boxes_travel_with_the_pixels_through_rescale_crop_and_flip():
    """The transformed box, clipped to the crop, is where the white pixels are; a crop that
    misses the object gets no target, one that cuts it keeps the whole box outside [0, crop]."""
    transform = LocalisationTrainTransform(TrainPreset(crop_size=32, scale=(64, 80), preprocessing=IDENTITY))
    box = (56, 20, 72, 38)
    img = _white_rectangle(128, 64, box)
    seen = {"cut": 0, "missed": 0, "inside": 0}
    for seed in range(60):
        torch.manual_seed(seed)
        x, b = transform(img, boxes([box], (64, 128)))
        assert tuple(b.canvas_size) == (32, 32) and b.shape == (1, 4)
        white = (x.mean(0) > 0.5).nonzero()
        k = select_target(b.as_subclass(torch.Tensor), 32)
        if white.numel() == 0:
            assert k == -1
            seen["missed"] += 1
            continue
        assert k == 0
        ys, xs = white[:, 0], white[:, 1]
        pixels = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        clipped = b[0].as_subclass(torch.Tensor).clamp(0, 32)
        assert torch.allclose(clipped, pixels, atol=1.5), (seed, clipped, pixels)
        whole = b[0].as_subclass(torch.Tensor)
        if (whole < -0.5).any() or (whole > 32.5).any():
            seen["cut"] += 1
            # kept whole: the width is the object's at this scale, not the visible part's
            assert float(whole[2] - whole[0]) > float(pixels[2] - pixels[0]) + 1 or \
                float(whole[3] - whole[1]) > float(pixels[3] - pixels[1]) + 1
        else:
            seen["inside"] += 1
    assert all(seen.values()), seen  # every case happened


def test_central_crop_preset_moves_boxes_with_the_crop():
    preset = CentralCropPreset(scale=64, crop_size=32, preprocessing=IDENTITY)
    x, b = preset(_white_rectangle(128, 64, (0, 0, 128, 64)), boxes([[0, 0, 128, 64]], (64, 128)))
    # 128x64 -> Q=64 gives 128x64 unchanged; the central 32x32 crop starts at (48, 16)
    assert torch.equal(b.as_subclass(torch.Tensor), torch.tensor([[-48.0, -16.0, 80.0, 48.0]]))
    assert x.shape == (3, 32, 32)


# --------------------------------------------------------------------------- targets and loss


def test_box_parameters_are_in_units_of_the_crop_side():
    p = boxes_to_params(torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 4.0, 24.0, 12.0]]), 32)
    assert torch.allclose(p, torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.5, 0.25, 0.5, 0.25]]))
    assert torch.allclose(params_to_boxes(p, 32), torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 4.0, 24.0, 12.0]]))
    # a negative width is an empty box, not an inverted one
    assert torch.equal(params_to_boxes(torch.tensor([0.5, 0.5, -1.0, 1.0]), 32), torch.tensor([16.0, 0.0, 16.0, 32.0]))


def test_target_choice_clip_and_empty_crops():
    crop = 32
    big_outside = [-40.0, -40.0, 2.0, 2.0]     # largest box, 4 px^2 inside the crop
    small_inside = [10.0, 10.0, 20.0, 20.0]    # 100 px^2 inside
    b = torch.tensor([big_outside, small_inside])
    assert select_target(b, crop, "overlap") == 1
    assert select_target(b, crop, "largest") == 0
    assert select_target(torch.tensor([[40.0, 0.0, 50.0, 10.0]]), crop) == -1   # misses the crop
    assert select_target(torch.zeros(0, 4), crop) == -1                         # no box at all
    cut = torch.tensor([[-16.0, 8.0, 16.0, 24.0]])
    whole, valid = localisation_targets([cut, torch.tensor([[40.0, 0.0, 50.0, 10.0]])], crop)
    assert valid.tolist() == [True, False]
    assert torch.allclose(whole[0], torch.tensor([0.0, 0.5, 1.0, 0.5]))
    assert torch.equal(whole[1], torch.zeros(4))
    clipped, _ = localisation_targets([cut], crop, box_mode="clip")
    assert torch.allclose(clipped[0], torch.tensor([0.25, 0.5, 0.5, 0.5]))


def test_scr_and_pcr_loss():
    labels = torch.tensor([2, 0])
    target = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.2, 0.3, 0.4, 0.5]])
    valid = torch.tensor([True, True])
    # SCR: 1/2 ||p - t||^2 summed over the images
    out = torch.zeros(2, 4)
    assert float(euclidean_loss(out, labels, target, valid, "scr")) == pytest.approx(0.5 * float(target.pow(2).sum()))
    # PCR: only the true class's four outputs enter, and only they get a gradient
    out = torch.randn(2, 3 * 4, requires_grad=True)
    loss = euclidean_loss(out, labels, target, valid, "pcr")
    per_class = out.detach().view(2, 3, 4)
    expected = 0.5 * ((per_class[0, 2] - target[0]).pow(2).sum() + (per_class[1, 0] - target[1]).pow(2).sum())
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    nonzero = (out.grad.view(2, 3, 4).abs().sum(-1) > 0)
    assert nonzero.tolist() == [[False, False, True], [True, False, False]]
    assert torch.equal(class_params(out.detach(), labels, "pcr"), torch.stack([per_class[0, 2], per_class[1, 0]]))
    # a crop without the object is masked out
    masked = euclidean_loss(out.detach(), labels, target, torch.tensor([True, False]), "pcr")
    assert float(masked) == pytest.approx(0.5 * float((per_class[0, 2] - target[0]).pow(2).sum()), rel=1e-6)


def test_task_collate_counts_empty_crops_and_sizes_the_head():
    task = LocalisationTask("pcr")
    assert task.output_size(10) == 40 and LocalisationTask("scr").output_size(10) == 4
    items = [(torch.zeros(3, 32, 32), 1, boxes([[0, 0, 16, 16]], (32, 32))),
             None,                                                            # a bad file
             (torch.zeros(3, 32, 32), 0, boxes([[40, 40, 50, 50]], (32, 32)))]  # misses the crop
    batch = task.collate(items)
    assert batch.skipped == 1
    images, (labels, params, valid) = task.inputs_targets(batch, torch.device("cpu"))
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [1, 0] and valid.tolist() == [True, False]
    assert torch.allclose(params[0], torch.tensor([0.25, 0.25, 0.5, 0.5]))
    assert (task._crops, task._empty) == (2, 1)
    labels, params, valid = task.empty_targets(3, torch.device("cpu"))
    assert float(task.loss(torch.randn(3, 40), (labels, params, valid))) == 0.0
    assert task.settings() == {"head": "pcr", "box_mode": "whole", "target": "overlap"}


# --------------------------------------------------------------------------- bad input


def test_zero_area_and_outside_boxes_are_skipped_with_a_named_warning_partial_ones_clipped():
    b = boxes([[-10, 5, 20, 30], [50, 50, 60, 60], [5, 5, 5, 20]], (40, 40))
    with pytest.warns(BoxWarning, match=r"photo\.jpg: skipping 2 box\(es\) with zero area"):
        out = sanitize_boxes(b, "photo.jpg")
    assert torch.equal(out.as_subclass(torch.Tensor), torch.tensor([[0.0, 5.0, 20.0, 30.0]]))
    assert out.clamping_mode is None


def _write_images(root: Path, split: str, specs, *, annotate=True):
    """specs: [(class, (w, h), [box, ...])]; VOC XML in root/annotations/split/<class>/."""
    for i, (cls, (w, h), bxs) in enumerate(specs):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        _white_rectangle(w, h, bxs[0] if bxs else (0, 0, 1, 1)).save(root / split / cls / f"{cls}_{i}.png")
        if annotate and bxs is not None:
            (root / "annotations" / split / cls).mkdir(parents=True, exist_ok=True)
            (root / "annotations" / split / cls / f"{cls}_{i}.xml").write_text(
                voc_xml(f"{cls}_{i}.png", (w, h), [(cls, b) for b in bxs]))


def _checkpoints(tmp_path, classes, *, head="pcr", bias=None, scale=32):
    torch.manual_seed(0)
    pre = IDENTITY.to_dict()
    cls = vgg("A", len(classes), crop_size=32, width=1 / 16, fc_width=32)
    loc = vgg("A", 4 if head == "scr" else 4 * len(classes), crop_size=32, width=1 / 16, fc_width=32)
    if bias is not None:  # a net that predicts the same box everywhere
        with torch.no_grad():
            loc.classifier[-1].weight.zero_()
            loc.classifier[-1].bias.copy_(torch.tensor(bias).repeat(loc.num_classes // 4))
    save_checkpoint(tmp_path / "cls.pt", make_checkpoint(cls, preprocessing=pre, classes=classes,
                                                         meta={"scale": scale}))
    save_checkpoint(tmp_path / "loc.pt", make_localisation_checkpoint(loc, head=head, classes=classes,
                                                                      preprocessing=pre, scale=scale))
    return tmp_path / "cls.pt", tmp_path / "loc.pt"


def test_protocol1_scores_a_constant_box_exactly(tmp_path):
    """A net that always predicts the whole crop: right on images whose object fills the
    central crop, wrong on those whose object is in a corner."""
    root = tmp_path / "data"
    _write_images(root, "val", [("a", (32, 32), [(0, 0, 32, 32)]), ("a", (32, 32), [(0, 0, 16, 16)]),
                                ("b", (64, 32), [(16, 0, 48, 32)]), ("b", (64, 32), [(0, 0, 40, 32)])])
    _, loc_path = _checkpoints(tmp_path, ["a", "b"], bias=[0.5, 0.5, 1.0, 1.0])
    loc = load_localiser(loc_path)
    val = build_dataset(root, split="val", boxes=True, classes=loc.classes)
    r = protocol1(loc.model, val, head="pcr", preprocessing=IDENTITY, scale=32, batch_size=3)
    # IoU: 1, 0.25, 1, 32*24/(40*32) = 0.6 -> one wrong of four
    assert r["localisation_error"] == pytest.approx(25.0) and r["images"] == 4
    # targets (0.5,0.5,1,1), (0.25,0.25,0.5,0.5), (0.5,0.5,1,1), (0.125,0.5,1.25,1): whole, in crop units
    assert r["loss"] == pytest.approx(0.5 * ((0.25 ** 2 * 2 + 0.5 ** 2 * 2) + (0.375 ** 2 + 0.25 ** 2)) / 4)


def test_validation_images_without_boxes_are_an_error_naming_how_many(tmp_path):
    root = tmp_path / "data"
    _write_images(root, "val", [("a", (32, 32), [(0, 0, 32, 32)]), ("a", (32, 32), None),
                                ("b", (32, 32), [(0, 0, 8, 8)])])
    _write_images(root, "train", [("a", (32, 32), [(0, 0, 32, 32)]), ("b", (32, 32), [(0, 0, 8, 8)])])
    _, loc_path = _checkpoints(tmp_path, ["a", "b"])
    code = main(["localize", "eval", "--checkpoint", str(loc_path), "--data", str(root), "--workers", "0"])
    assert code == 2
    with pytest.raises(DataError, match=r"1 of 3 validation images have no box \(e\.g\. .*a_1\.png\)"):
        from vggnet.localisation.cli import evaluate_localisation
        evaluate_localisation([str(loc_path)], str(root))


def test_checkpoint_kinds_are_refused_with_clear_messages(tmp_path, capsys):
    cls_path, loc_path = _checkpoints(tmp_path, ["a", "b"])
    cls_ckpt = torch.load(cls_path, weights_only=True)
    loc_ckpt = torch.load(loc_path, weights_only=True)
    task = LocalisationTask("pcr")
    with pytest.raises(CheckpointError, match="classification checkpoint and cannot resume a localisation run"):
        task.check_checkpoint(cls_ckpt, str(cls_path), purpose="resume")
    task.check_checkpoint(cls_ckpt, str(cls_path), purpose="init")    # the paper's start
    task.check_checkpoint(loc_ckpt, str(loc_path), purpose="resume")
    with pytest.raises(CheckpointError, match="PCR localisation checkpoint and this run trains SCR"):
        LocalisationTask("scr").check_checkpoint(loc_ckpt, str(loc_path), purpose="resume")
    with pytest.raises(CheckpointError, match="not a classification net"):
        ClassificationTask().check_checkpoint(loc_ckpt, str(loc_path), purpose="init")
    with pytest.raises(CheckpointError, match="is a classification checkpoint, not a localisation net"):
        load_localiser(cls_path)
    assert main(["localize", "predict", "--checkpoint", str(loc_path), "--classifier", str(loc_path),
                 str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--classifier" in err and "is a localisation checkpoint, not a classification net" in err
    with pytest.raises(CheckpointError, match="--classifier .* is a localisation checkpoint"):
        from vggnet.localisation.task import load_classifier_checkpoint
        load_classifier_checkpoint(str(loc_path))


# --------------------------------------------------------------------------- dense boxes


def test_dense_box_of_a_crop_sized_image_is_the_crops_box():
    torch.manual_seed(0)
    model = vgg("A", 12, crop_size=32, width=1 / 16, fc_width=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = params_to_boxes(model(x).view(2, 3, 4), 32)
    d = dense_boxes(model, x)
    assert d.shape == (2, 1, 1, 3, 4)
    assert torch.allclose(d[:, 0, 0], expected, atol=1e-5)
    # scaled back to an original image twice the size: every coordinate doubles
    assert torch.allclose(dense_boxes(model, x, image_size=(64, 64))[:, 0, 0], 2 * expected, atol=1e-4)


def test_dense_boxes_are_translated_by_their_window_offset():
    """A net that predicts the whole window everywhere: position (i, j) is the window at (32 j, 32 i)."""
    model = vgg("A", 4, crop_size=32, width=1 / 16, fc_width=32).eval()
    with torch.no_grad():
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.copy_(torch.tensor([0.5, 0.5, 1.0, 1.0]))
    d = dense_boxes(model, torch.randn(1, 3, 64, 96))[0, :, :, 0]        # (2, 3, 4)
    assert d.shape == (2, 3, 4)
    for i in range(2):
        for j in range(3):
            assert d[i, j].tolist() == [32.0 * j, 32.0 * i, 32.0 * j + 32, 32.0 * i + 32]


# --------------------------------------------------------------------------- merge, NMS, best window


def test_merge_two_near_boxes_become_their_average_and_scores_add():
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    s = torch.tensor([0.5, 0.25, 0.125])
    merged, scores, cls, count = greedy_merge(b, s, torch.zeros(3, dtype=torch.long), 0.5)
    order = scores.argsort(descending=True)
    assert torch.allclose(merged[order], torch.tensor([[0.5, 0.5, 10.5, 10.5], [50.0, 50.0, 60.0, 60.0]]))
    assert scores[order].tolist() == [0.75, 0.125] and count[order].tolist() == [2, 1]
    # the threshold is honoured: IoU of the near pair is 81/119 = 0.68
    assert greedy_merge(b, s, torch.zeros(3, dtype=torch.long), 0.7)[0].shape[0] == 3
    # boxes of different classes never merge
    assert greedy_merge(b, s, torch.tensor([0, 1, 0]), 0.5)[0].shape[0] == 3


def _reference_merge(boxes, scores, idxs, t):
    """Plain Python: the definition of the merge, pair by pair."""
    items = [[list(map(float, b)), float(s), int(c), 1] for b, s, c in zip(boxes, scores, idxs)]
    while True:
        best, pair = -1.0, None
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                if items[i][2] != items[j][2]:
                    continue
                v = float(box_iou(torch.tensor([items[i][0]]), torch.tensor([items[j][0]])))
                if v > best:
                    best, pair = v, (i, j)
        if pair is None or best < t:
            break
        i, j = pair
        a, b = items[i], items[j]
        n = a[3] + b[3]
        items[i] = [[(x * a[3] + y * b[3]) / n for x, y in zip(a[0], b[0])], a[1] + b[1], a[2], n]
        del items[j]
    return sorted((round(s, 4), [round(v, 3) for v in b]) for b, s, _, _ in items)


def test_vectorised_merge_equals_the_pairwise_definition():
    rng = random.Random(0)
    for trial in range(6):
        n = 30
        centres = [(rng.uniform(0, 100), rng.uniform(0, 100)) for _ in range(4)]
        rows = []
        for k in range(n):
            cx, cy = centres[k % 4]
            w, h = rng.uniform(20, 40), rng.uniform(20, 40)
            cx, cy = cx + rng.gauss(0, 4), cy + rng.gauss(0, 4)
            rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        b = torch.tensor(rows)
        s = torch.tensor([rng.random() for _ in range(n)])
        c = torch.tensor([rng.randrange(2) for _ in range(n)])
        merged, scores, _, count = greedy_merge(b, s, c, 0.5)
        ours = sorted((round(float(v), 4), [round(float(x), 3) for x in m]) for m, v in zip(merged, scores))
        ref = _reference_merge(b, s, c, 0.5)
        assert [v for v, _ in ours] == [v for v, _ in ref], trial
        assert torch.allclose(torch.tensor([m for _, m in ours]), torch.tensor([m for _, m in ref]), atol=2e-3)
        assert int(count.sum()) == n
        assert float(scores.sum()) == pytest.approx(float(s.sum()), rel=1e-5)


def test_nms_clusters_and_best_window():
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0],
                      [51.0, 51.0, 61.0, 61.0], [50.5, 50.5, 60.5, 60.5]])
    s = torch.tensor([0.4, 0.3, 0.35, 0.2, 0.2])
    c = torch.zeros(5, dtype=torch.long)
    kept, cluster, kc = nms_clusters(b, s, c, 0.5)
    # NMS keeps the top window of each cluster; the cluster score is the sum of its windows'
    assert kept.tolist() == [[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]
    assert cluster.tolist() == pytest.approx([0.7, 0.75])
    best = best_per_class(kept, cluster, kc, [0])
    assert best == [(0, [50.0, 50.0, 60.0, 60.0], pytest.approx(0.75))]
    # the best window alone picks the other one
    assert best_per_class(b, s, c, [0])[0][1] == [0.0, 0.0, 10.0, 10.0]


def test_top5_localisation_error_on_constructed_predictions():
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
          torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    labels = [1, 2, 3, 4]
    preds = [
        [(0, [0, 0, 10, 10]), (1, [0, 0, 10, 7])],        # right class 2nd, IoU 0.7: correct
        [(2, [21, 21, 30, 30])],                          # second ground-truth box, IoU 0.81: correct
        [(3, [0, 0, 10, 4])],                             # right class, IoU 0.4: wrong
        [(0, [0, 0, 10, 10]), (5, [0, 0, 10, 10])],       # boxes right, classes wrong: wrong
    ]
    assert top5_localisation_error(preds, labels, gt) == 50.0


def test_mean_box_error():
    gt = [torch.tensor([[25.0, 25.0, 75.0, 75.0]]), torch.tensor([[0.0, 0.0, 20.0, 20.0]])]
    box = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert mean_box_error(box, gt, [(100, 100), (100, 100)]) == 50.0


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_synthetic(root, classes=3, train=9, val=6, seed=0, force=True, image_size=(40, 64))
    return root


def test_cli_eval_central_full_and_predict(tmp_path, synthetic, capsys):
    classes = json.loads((synthetic / "synthetic.json").read_text())["classes"]
    cls_path, loc_path = _checkpoints(tmp_path, classes, scale=40)
    base = ["--checkpoint", str(loc_path), "--data", str(synthetic), "--workers", "0"]
    assert main(["localize", "eval", *base, "--json", "--output", str(tmp_path / "r.md")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"] == "central" and report["images"] == 6
    assert 0.0 <= report["localisation_error"] <= 100.0
    assert [r["method"] for r in report["rows"]] == ["central crop", "mean training box"]
    assert "| localisation net" in (tmp_path / "r.md").read_text()

    assert main(["localize", "eval", *base, "--protocol", "full", "--test-scales", "40,48"]) == 2
    assert "--classifier" in capsys.readouterr().err
    assert main(["localize", "eval", *base, "--protocol", "full", "--classifier", str(cls_path),
                 "--test-scales", "40,48", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"] == "full" and report["test_scales"] == [40, 48]
    assert [r["method"] for r in report["rows"]] == ["greedy merge", "NMS (cluster score)", "best window",
                                                     "mean training box"]
    assert report["localisation_error"] == report["rows"][0]["localisation_error"]
    assert report["classification_top5_error"] == 0.0      # 3 classes: the true one is always in the top 5
    assert main(["localize", "eval", *base, "--protocol", "full", "--classifier", str(cls_path),
                 "--max-images", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    # Table 9's ranking: the classifiers at their own scales and method (the best classification system)
    assert main(["localize", "eval", *base, "--protocol", "full", "--classifier", str(cls_path), "--classifier",
                 str(cls_path), "--classifier-method", "both", "--classifier-scales", "40,56", "--test-scales", "48",
                 "--max-images", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classification_scales"] == [40, 56] and report["classification_method"] == "both"
    assert report["test_scales"] == [48] and len(report["classifiers"]) == 2

    out = tmp_path / "pred"
    assert main(["localize", "predict", "--checkpoint", str(loc_path), "--classifier", str(cls_path),
                 str(synthetic / "val" / classes[0]), "--output-dir", str(out), "--workers", "0"]) == 0
    written = json.loads((out / "predictions.json").read_text())
    assert len(written["images"]) == 2
    for item in written["images"]:
        assert len(item["predictions"]) == 3 and Path(item["drawn"]).is_file()
        drawn, source = Image.open(item["drawn"]).size, Image.open(item["image"]).size
        assert min(drawn) >= 384 and abs(drawn[0] / drawn[1] - source[0] / source[1]) < 0.02  # upscaled, legible
        for p in item["predictions"]:  # clipped to the image
            x0, y0, x1, y1 = p["box"]
            assert 0 <= x0 <= x1 <= source[0] and 0 <= y0 <= y1 <= source[1], p
        assert sorted(p["class"] for p in item["predictions"]) == sorted(classes)


def test_full_protocol_runs_each_localisation_net_at_its_own_scales(tmp_path, synthetic, capsys, monkeypatch):
    """Table 9's fusion: `--test-scales` once per `--checkpoint`; each net's boxes come from its own Q
    only, and the memory estimate is made for each net at its own Q."""
    import vggnet.inference as inference
    import vggnet.localisation.full_protocol as full_protocol

    classes = json.loads((synthetic / "synthetic.json").read_text())["classes"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    cls_path, loc_a = _checkpoints(tmp_path / "a", classes, scale=40)
    _, loc_b = _checkpoints(tmp_path / "b", classes, scale=48)
    passes, estimates = [], []
    real_dense, real_fit = full_protocol.dense_boxes, inference.check_scales_fit

    def dense(model, x, **kw):  # (which net, Q) of every dense pass
        passes.append((id(model), min(x.shape[-2:])))
        return real_dense(model, x, **kw)

    def fit(model, scales, *args, **kw):
        estimates.append((id(model), list(scales)))
        return real_fit(model, scales, *args, **kw)

    monkeypatch.setattr(full_protocol, "dense_boxes", dense)
    monkeypatch.setattr(inference, "check_scales_fit", fit)
    base = ["localize", "eval", "--classifier", str(cls_path), "--data", str(synthetic), "--protocol", "full",
            "--max-images", "2", "--workers", "0", "--json"]
    assert main([*base, "--checkpoint", str(loc_a), "--test-scales", "40", "--checkpoint", str(loc_b),
                 "--test-scales", "56,48"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [n["test_scales"] for n in report["nets"]] == [[40], [48, 56]]
    assert report["test_scales"] == [40, 48, 56] and report["rows"][0]["test_scale"] == "40 / 48,56"
    first, second = estimates[0][0], estimates[1][0]
    assert estimates == [(first, [40]), (second, [48, 56])]
    assert sorted(set(passes)) == sorted({(first, 40), (second, 48), (second, 56)})
    assert len(passes) == 2 * 3   # 2 images, 3 (net, Q) pairs: no net at another net's Q
    # one --test-scales: every net at the same Q; neither once nor once per net: refused, naming the flag
    passes.clear()
    assert main([*base, "--checkpoint", str(loc_a), "--checkpoint", str(loc_b), "--test-scales", "40"]) == 0
    capsys.readouterr()
    assert sorted(q for _, q in passes) == [40] * 4 and len({m for m, _ in passes}) == 2
    assert main([*base, "--checkpoint", str(loc_a), "--test-scales", "40", "--checkpoint", str(loc_b),
                 "--test-scales", "48", "--test-scales", "56"]) == 2
    err = capsys.readouterr().err
    assert "--test-scales: given 3 times for 2 localisation nets" in err and "Traceback" not in err


def test_predict_clips_boxes_past_the_image_and_draws_the_ground_truth(tmp_path, synthetic, monkeypatch):
    import numpy as np

    import vggnet.localisation.full_protocol as full_protocol
    from vggnet.data.annotations import read_voc_xml

    classes = json.loads((synthetic / "synthetic.json").read_text())["classes"]
    cls_path, loc_path = _checkpoints(tmp_path, classes, scale=40)
    real = full_protocol.localise_images

    def past_the_image(*args, **kwargs):  # the regressor is unconstrained: push rank 1 past every edge
        res = real(*args, **kwargs)
        for i, preds in enumerate(res.predictions["merge"]):
            h, w = res.sizes[i]
            c, _, score = preds[0]
            preds[0] = (c, [-2.08, -2.42, w + 7.5, h + 3.25], score)
        return res

    monkeypatch.setattr(full_protocol, "localise_images", past_the_image)
    folder = synthetic / "val" / classes[0]
    out = tmp_path / "pred"
    assert main(["localize", "predict", "--checkpoint", str(loc_path), "--classifier", str(cls_path),
                 str(folder), "--out", str(out), "--workers", "0"]) == 0
    written = json.loads((out / "predictions.json").read_text())
    for item in written["images"]:
        w, h = Image.open(item["image"]).size
        assert item["predictions"][0]["box"] == [0.0, 0.0, w, h]  # clipped: the raw box was outside
        stem = Path(item["image"]).stem
        boxes, names = read_voc_xml(synthetic / "annotations" / "val" / classes[0] / f"{stem}.xml")
        assert item["ground_truth"] == [{"class": n, "box": [round(float(v), 2) for v in b]}
                                        for b, n in zip(boxes, names)]
        drawn = np.asarray(Image.open(item["drawn"]).convert("RGB")).astype(int)
        green = (np.abs(drawn - np.array([40, 200, 60])).sum(-1) < 30)
        assert green.sum() > 50  # the truth's dashes (and its label)
    # an image outside any dataset has no ground truth; --annotations names where it is
    lone = tmp_path / "lone"
    lone.mkdir()
    image = next(folder.iterdir())
    (lone / image.name).write_bytes(image.read_bytes())
    assert main(["localize", "predict", "--checkpoint", str(loc_path), "--classifier", str(cls_path),
                 str(lone), "--out", str(tmp_path / "p2"), "--workers", "0"]) == 0
    assert "ground_truth" not in json.loads((tmp_path / "p2" / "predictions.json").read_text())["images"][0]
    assert main(["localize", "predict", "--checkpoint", str(loc_path), "--classifier", str(cls_path),
                 str(lone), "--out", str(tmp_path / "p3"), "--workers", "0",
                 "--annotations", str(synthetic / "annotations" / "val")]) == 0
    assert json.loads((tmp_path / "p3" / "predictions.json").read_text())["images"][0]["ground_truth"]
    assert main(["localize", "predict", "--checkpoint", str(loc_path), "--classifier", str(cls_path),
                 str(lone), "--out", str(tmp_path / "p4"), "--annotations", str(tmp_path / "nowhere")]) == 2
