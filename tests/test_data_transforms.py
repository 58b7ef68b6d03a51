"""Geometry and colour of the paper's input pipeline (§3.1, §3.2): exact sizes, crops
inside the image, scale jittering, boxes travelling with the pixels, PCA lighting
statistics, mean subtraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision import tv_tensors

from vggnet.data.transforms import CAFFE_MEAN, DenseEvalPreset, MultiCropEvalPreset, PCALighting, Preprocessing, RandomRescaleCrop, TrainPreset, grid_crops, parse_scale, rescale_smallest_side, rescaled_size
from vggnet.data.images import decode_image, open_image

PLAIN = Preprocessing(pixel_scale=255.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # output = 0-255 pixels


def _rect_image(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    """Black image with a white rectangle exactly covering box (x0, y0, x1, y1), exclusive."""
    img = Image.new("RGB", (w, h), (0, 0, 0))
    ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255))
    return img


def _bright_box(x: torch.Tensor, threshold: float = 128.0) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1), exclusive, of pixels brighter than threshold in a (3, H, W) 0-255 tensor."""
    mask = x.mean(0) > threshold
    if not mask.any():
        return None
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("size", [(37, 91), (91, 37), (50, 50), (333, 500)])
@pytest.mark.parametrize("S", [32, 64, 256])
def test_rescale_smallest_side_is_exactly_S(size, S):
    w, h = size
    out = rescale_smallest_side(Image.new("RGB", (w, h)), S)
    assert min(out.size) == S
    # isotropic: the aspect ratio is kept to within rounding of one pixel
    assert abs(max(out.size) - max(w, h) * S / min(w, h)) <= 0.5 + 1e-9
    t = rescale_smallest_side(torch.zeros(3, h, w), S)
    assert (t.shape[-1], t.shape[-2]) == out.size


def test_rescale_boxes_follow_the_canvas():
    boxes = tv_tensors.BoundingBoxes([[10, 20, 30, 40]], format="XYXY", canvas_size=(100, 200))
    out = rescale_smallest_side(boxes, 50)  # factor 0.5
    assert tuple(out.canvas_size) == (50, 100)
    assert out.tolist() == [[5, 10, 15, 20]]


def test_parse_scale():
    assert parse_scale(256) == (256, 256)
    assert parse_scale("256:512") == (256, 512)
    assert parse_scale((384, 384)) == (384, 384)
    with pytest.raises(ValueError, match="Smin <= Smax"):
        parse_scale("512:256")
    with pytest.raises(ValueError, match="scale"):
        parse_scale("big")


def test_train_preset_refuses_scale_below_crop():
    with pytest.raises(ValueError, match="crop_size"):
        TrainPreset(crop_size=64, scale=(48, 96), preprocessing=PLAIN)


def test_jittered_scale_is_uniform_over_the_integer_range():
    t = RandomRescaleCrop((64, 72), 32)
    img = Image.new("RGB", (80, 120))
    torch.manual_seed(0)
    seen = [t.make_params([img])["S"] for _ in range(900)]
    assert min(seen) == 64 and max(seen) == 72  # both ends reachable
    counts = np.bincount(np.array(seen) - 64, minlength=9)
    assert len(counts) == 9 and counts.min() > 60  # every S drawn, none starved (expected 100 each)
    fixed = RandomRescaleCrop(64, 32)
    assert {fixed.make_params([img])["S"] for _ in range(20)} == {64}


def test_crops_always_inside_the_rescaled_image():
    # over many image shapes and jittered S: smallest side = S, crop window inside, every position reachable
    t = RandomRescaleCrop((32, 48), 32)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    where = []  # crop position as a fraction of the free range along the long side
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(20, 200, 2))
        img = Image.new("RGB", (w, h))
        p = t.make_params([img])
        sh, sw = p["scaled"]
        assert min(sh, sw) == p["S"] and 32 <= p["S"] <= 48
        assert 0 <= p["top"] <= sh - 32 and 0 <= p["left"] <= sw - 32
        if max(sh, sw) - 32 >= 20:
            where.append((p["left"] if sw >= sh else p["top"]) / (max(sh, sw) - 32))
        assert t.transform(img, p).shape == (3, 32, 32)
    assert min(where) < 0.05 and max(where) > 0.95  # from one edge to the other


def test_rescale_crop_is_rescale_then_crop_and_matches_pillow():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)).resize((260, 180))
    t = RandomRescaleCrop(100, 64)
    torch.manual_seed(0)
    params = t.make_params([img])
    assert params["scaled"] == (100, 144) == rescaled_size(180, 260, 100)
    out = t.transform(img, params)
    assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)
    top, left = params["top"], params["left"]
    # the same pixels as Pillow's resize of the whole image, then the crop (up to rounding)
    ref = np.asarray(rescale_smallest_side(img, 100), dtype=np.int16)[top:top + 64, left:left + 64]
    assert np.abs(out.permute(1, 2, 0).numpy().astype(np.int16) - ref).max() <= 2


@pytest.mark.parametrize("seed", range(6))
def test_train_crop_boxes_travel_with_pixels(seed):
    # a white rectangle and its box go through rescale, crop and flip: they must agree
    w, h, box = 150, 100, (60, 30, 100, 70)
    img = _rect_image(w, h, box)
    boxes = tv_tensors.BoundingBoxes([box], format="XYXY", canvas_size=(h, w))
    preset = TrainPreset(crop_size=64, scale=(64, 96), preprocessing=PLAIN)
    torch.manual_seed(seed)
    x, out_boxes = preset(img, boxes)
    assert x.shape == (3, 64, 64)
    b = out_boxes[0].tolist()
    assert tuple(out_boxes.canvas_size) == (64, 64)
    assert all(0 <= v <= 64 for v in b)  # clamped inside the crop
    found = _bright_box(x)
    if b[2] - b[0] < 1 or b[3] - b[1] < 1:
        assert found is None or (found[2] - found[0]) * (found[3] - found[1]) <= 4
    else:
        assert found is not None
        assert max(abs(f - e) for f, e in zip(found, b)) <= 1.5


def test_flip_mirrors_boxes_and_pixels():
    # square image of exactly the crop size: rescale and crop are identities, only the flip acts
    box = (4, 10, 20, 30)
    img = _rect_image(48, 48, box)
    boxes = tv_tensors.BoundingBoxes([box], format="XYXY", canvas_size=(48, 48))
    preset = TrainPreset(crop_size=48, scale=48, preprocessing=PLAIN)
    outcomes = set()
    torch.manual_seed(1)
    for _ in range(30):
        x, b = preset(img, boxes)
        b = tuple(int(round(v)) for v in b[0].tolist())
        assert b in {box, (48 - 20, 10, 48 - 4, 30)}
        assert _bright_box(x) == b
        outcomes.add(b)
    assert len(outcomes) == 2  # both flipped and unflipped occur
    no_flip = TrainPreset(crop_size=48, scale=48, preprocessing=PLAIN, hflip=False)
    assert all(tuple(no_flip(img, boxes)[1][0].int().tolist()) == box for _ in range(10))


def test_random_crops_vary_and_stay_inside():
    # a horizontal ramp: the crop's left edge value reveals its position in the rescaled image
    ramp = np.tile(np.linspace(0, 255, 200, dtype=np.float32), (100, 1))
    img = Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8))
    preset = TrainPreset(crop_size=64, scale=100, preprocessing=PLAIN, hflip=False)
    torch.manual_seed(0)
    lefts = [float(preset(img)[0, 50, 0]) for _ in range(40)]
    assert max(lefts) - min(lefts) > 100  # positions vary across the 200-64 range
    assert min(lefts) >= 0 and max(lefts) <= 255 * (200 - 64) / 199 + 2


def test_mean_subtraction_and_std():
    img = Image.new("RGB", (70, 50), (200, 100, 50))
    caffe = Preprocessing.caffe(mean=(120.0, 110.0, 100.0))
    x = TrainPreset(crop_size=32, scale=(40, 60), preprocessing=caffe)(img)
    expected = torch.tensor([80.0, -10.0, -50.0]).view(3, 1, 1)
    assert torch.allclose(x, expected.expand_as(x), atol=1e-3)
    tv = Preprocessing.torchvision()
    y = DenseEvalPreset(scale=40, preprocessing=tv)(img)
    rgb = torch.tensor([200, 100, 50]) / 255.0
    want = (rgb - torch.tensor(tv.mean)) / torch.tensor(tv.std)
    assert torch.allclose(y[:, 10, 10], want, atol=1e-4)
    # __call__ and the v2.Normalize form are the same map
    z = torch.rand(3, 5, 7)
    assert torch.allclose(tv(z), tv.normalize()(z), atol=1e-5)
    assert torch.allclose(caffe(z), caffe.normalize()(z), atol=1e-4)


def test_preprocessing_dict_roundtrip_and_errors():
    p = Preprocessing.caffe(mean=(1, 2, 3))
    assert Preprocessing.from_dict(p.to_dict()) == p
    assert p.to_dict() == {"pixel_scale": 255.0, "mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]}
    assert Preprocessing().mean == CAFFE_MEAN
    with pytest.raises(ValueError, match="missing keys"):
        Preprocessing.from_dict({"pixel_scale": 1, "mean": [0, 0, 0]})
    with pytest.raises(ValueError, match="'mean'"):
        Preprocessing.from_dict({"pixel_scale": 1, "mean": [0, 0], "std": [1, 1, 1]})
    with pytest.raises(ValueError, match="'std'"):
        Preprocessing(std=(1, 0, 1))


def test_pca_lighting_statistics():
    # eigen-pairs along a rotated basis; alpha_i ~ N(0, 0.1): the shift's coordinate along p_i
    # must have standard deviation 0.1 * eigval_i, zero mean, and be uncorrelated across i
    q, _ = torch.linalg.qr(torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [2.0, 0.1, -0.7]]))
    eigvec = q.T  # rows are the axes
    eigval = torch.tensor([60.0, 12.0, 3.0])
    t = PCALighting(eigval.tolist(), eigvec.tolist(), std=0.1)
    torch.manual_seed(0)
    shifts = torch.stack([t.make_params([])["shift"] for _ in range(4000)]) * 255.0  # (n, 3) in 0-255
    coords = shifts @ eigvec.T  # (n, 3) coordinates along p_i
    sd = coords.std(0)
    assert torch.allclose(sd, 0.1 * eigval, rtol=0.06)
    assert coords.mean(0).abs().max() < 0.1 * 60 * 4 / math.sqrt(4000)
    corr = torch.corrcoef(coords.T)
    assert (corr - torch.eye(3)).abs().max() < 0.06


def test_pca_lighting_shifts_every_pixel_equally_and_varies_per_image():
    img = Image.new("RGB", (40, 40), (128, 128, 128))
    pca = {"eigval": [30.0, 0.0, 0.0], "eigvec": [[1 / math.sqrt(3)] * 3, [1, -1, 0], [0, 0, 1]]}
    preset = TrainPreset(crop_size=32, scale=32, preprocessing=PLAIN, pca=pca, pca_std=0.1, hflip=False)
    torch.manual_seed(0)
    outs = [preset(img) for _ in range(50)]
    for x in outs:
        shift = x - 128.0
        assert torch.allclose(shift, shift[:, :1, :1].expand_as(shift), atol=1e-3)  # one colour shift per image
        s = shift[:, 0, 0]
        assert torch.allclose(s, s.mean().expand(3), atol=1e-3)  # along the given axis (grey) only
    per_image = torch.stack([x[0, 0, 0] - 128.0 for x in outs])
    assert 1.0 < per_image.std() < 2.7  # 0.1 * 30 / sqrt(3) = 1.73 per channel
    off = TrainPreset(crop_size=32, scale=32, preprocessing=PLAIN, pca=None, hflip=False)
    assert torch.allclose(off(img), torch.full((3, 32, 32), 128.0))


def test_dense_eval_keeps_whole_image_at_Q():
    img = Image.new("RGB", (90, 60), (10, 20, 30))
    x = DenseEvalPreset(scale=48, preprocessing=PLAIN)(img)
    assert x.shape == (3, 48, 72)
    boxes = tv_tensors.BoundingBoxes([[30, 15, 60, 45]], format="XYXY", canvas_size=(60, 90))
    x, b = DenseEvalPreset(scale=48, preprocessing=PLAIN)(img, boxes)
    assert b.tolist() == [[24.0, 12.0, 48.0, 36.0]]
    with pytest.raises(ValueError, match="one integer"):
        DenseEvalPreset(scale=(32, 64), preprocessing=PLAIN)


def test_several_test_scales():
    # §3.2 multi-scale: the same image at each Q in {S-32, S, S+32} (here scaled down)
    img = Image.new("RGB", (90, 60), (10, 20, 30))
    for q in (32, 48, 64):
        x = DenseEvalPreset(scale=q, preprocessing=PLAIN)(img)
        assert x.shape == (3, q, int(round(q * 1.5)))
        crops = MultiCropEvalPreset(scale=q, crop_size=32, preprocessing=PLAIN)(img)
        assert crops.shape == (50, 3, 32, 32)
    with pytest.raises(ValueError, match="Q=24 must be >= crop_size=32"):
        MultiCropEvalPreset(scale=24, crop_size=32, preprocessing=PLAIN)


def test_grid_crops_cover_the_image_corners_included():
    x = torch.arange(1 * 10 * 14, dtype=torch.float32).view(1, 10, 14)
    crops = grid_crops(x, 4, grid=5)
    assert crops.shape == (25, 1, 4, 4)
    assert torch.equal(crops[0], x[:, :4, :4])  # top-left
    assert torch.equal(crops[4], x[:, :4, -4:])  # top-right
    assert torch.equal(crops[24], x[:, -4:, -4:])  # bottom-right
    assert torch.equal(crops[12], x[:, 3:7, 5:9])  # centre: offsets round(2 * 6/4)=3, round(2 * 10/4)=5
    with pytest.raises(ValueError, match="smaller than crop_size"):
        grid_crops(x, 12)


def test_multi_crop_is_grid_and_flips():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    dense = DenseEvalPreset(scale=40, preprocessing=PLAIN)(img)
    crops = MultiCropEvalPreset(scale=40, crop_size=32, preprocessing=PLAIN)(img)
    assert crops.shape == (50, 3, 32, 32)
    assert torch.equal(crops[:25], grid_crops(dense, 32))
    assert torch.equal(crops[25:], crops[:25].flip(-1))
    assert MultiCropEvalPreset(scale=40, crop_size=32, preprocessing=PLAIN, grid=3, flip=False)(img).shape[0] == 9


def test_jpeg_draft_decodes_smaller_and_boxes_follow(tmp_path):
    # an 800x600 JPEG rescaled to S=100 is decoded at 1/4 scale (200x150), never below S
    path = tmp_path / "big.jpg"
    box = (400, 200, 600, 400)
    _rect_image(800, 600, box).save(path, quality=95)
    img = decode_image(open_image(path), min_side=100)
    assert img.size == (200, 150)
    assert decode_image(open_image(path), min_side=400).size == (800, 600)  # 600 < 2 * 400: full size
    preset = DenseEvalPreset(scale=100, preprocessing=PLAIN)
    boxes = tv_tensors.BoundingBoxes([box], format="XYXY", canvas_size=(600, 800))
    x, b = preset(open_image(path), boxes)
    assert x.shape == (3, 100, 133)
    assert b[0].tolist() == pytest.approx([400 * 133 / 800, 200 / 6, 600 * 133 / 800, 400 / 6], abs=1e-3)
    assert max(abs(f - e) for f, e in zip(_bright_box(x), b[0].tolist())) <= 1.5


def _both_paths(preset, make_image, seed):
    """The preset's output for a fresh `make_image()` through its direct kernels and through v2.Compose,
    with the same seed, each with the random number drawn next."""
    from vggnet.data import transforms

    out = []
    for direct in (True, False):
        transforms.DIRECT = direct
        try:
            torch.manual_seed(seed)
            out.append((preset(make_image()), torch.rand(1)))  # the next draw shows both consumed the same numbers
        finally:
            transforms.DIRECT = True
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["pillow", "tensor", "jpeg"])
def test_direct_path_is_bitwise_the_compose(tmp_path, seed, kind):
    # images without boxes skip v2.Compose; the crop, flip, lighting and normalisation must not change at all
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (45 + seed, 70 - seed, 3), dtype=np.uint8)
    pca = {"eigval": [55.0, 4.8, 1.2], "eigvec": [[-0.58, -0.58, -0.57], [-0.81, 0.04, 0.59], [0.05, -0.82, 0.57]]}
    presets = [TrainPreset(crop_size=32, scale=(36, 60), preprocessing=Preprocessing.caffe(), pca=pca),
               TrainPreset(crop_size=32, scale=40, preprocessing=PLAIN, hflip=False),
               DenseEvalPreset(scale=40, preprocessing=Preprocessing.caffe())]
    path = tmp_path / "image.jpg"
    Image.fromarray(arr).save(path, quality=90)
    make_image = {"pillow": lambda: Image.fromarray(arr),
                  "tensor": lambda: torch.from_numpy(arr).permute(2, 0, 1),
                  # a lazily opened file, decoded by TorchCodec or Pillow first, as in a dataset
                  "jpeg": lambda: open_image(path)}[kind]
    for preset in presets:
        (direct, after_direct), (compose, after_compose) = _both_paths(preset, make_image, seed)
        assert type(direct) is torch.Tensor and direct.dtype == torch.float32
        assert torch.equal(direct, compose), type(preset).__name__
        assert torch.equal(after_direct, after_compose)
    # a policy (RandAugment) only runs in the Compose: the direct path steps aside
    policy = TrainPreset(crop_size=32, scale=40, preprocessing=PLAIN, auto_augment="randaugment")
    (a, _), (b, _) = _both_paths(policy, make_image, seed)
    assert torch.equal(a, b)
