"""Dataset layouts and annotation formats on files the tests write, and bad files:
skipped and counted in training, an error naming the file in evaluation."""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vggnet.cli import main
from vggnet.data import (
    BadImageWarning, Batch, DenseEvalPreset, Preprocessing, TrainPreset, build_dataset, check_bad_fraction,
    collate_skip_bad, make_loader, read_synsets,
)
from vggnet.errors import DataError

from test_data_decode import write_corrupt_png  # tests/ is on sys.path (rootdir conftest)

PLAIN = Preprocessing(pixel_scale=255.0, mean=(0, 0, 0), std=(1, 1, 1))


def _jpg(path, colour=(90, 120, 150), size=(40, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)
    return path


def _folders(root, spec):
    """spec: {class: number of images}"""
    for cls, n in spec.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _jpg(root / cls / f"{cls}_{i}.JPEG")


def test_class_folders_sorted_and_stable(tmp_path):
    _folders(tmp_path / "train", {"zebra": 2, "ant": 3, "moth": 1})
    _jpg(tmp_path / "train" / "ant" / "nested" / "deep.jpg")  # images in sub-folders belong to the class
    (tmp_path / "train" / "ant" / "readme.txt").write_text("not an image")
    (tmp_path / "train" / ".cache").mkdir()  # hidden folders are not classes
    ds = build_dataset(tmp_path, split="train")
    assert ds.classes == ["ant", "moth", "zebra"]
    assert ds.targets == [0, 0, 0, 0, 1, 2, 2]
    assert len(ds.samples) == 7 and all(p.endswith((".JPEG", ".jpg")) for p, _ in ds.samples)
    assert ds.strict is False  # training default
    img, label = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and label == 0
    # the split folder itself works too, and the order does not depend on the listing
    assert build_dataset(tmp_path / "train").samples == ds.samples


def test_given_classes_fix_the_index_order(tmp_path):
    _folders(tmp_path / "val", {"b": 1, "a": 1})
    ds = build_dataset(tmp_path, split="val", classes=["b", "c", "a"])
    assert ds.classes == ["b", "c", "a"]
    assert sorted(ds.targets) == [0, 2]
    assert ds.strict is True  # evaluation default
    with pytest.raises(DataError, match="'?x'? are not among the 2 known classes|x are not among"):
        _folders(tmp_path / "val", {"x": 1})
        build_dataset(tmp_path, split="val", classes=["a", "b"])


def test_empty_class_folder_is_an_error_at_startup(tmp_path):
    _folders(tmp_path / "train", {"a": 2})
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(DataError, match=r"train[/\\]b: empty class folder"):
        build_dataset(tmp_path)


def test_missing_root_and_no_labels(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        build_dataset(tmp_path / "absent")
    _folders(tmp_path / "only" / "train", {"a": 1})
    with pytest.raises(DataError, match=r"only: no val/ folder \(found train/\)"):
        build_dataset(tmp_path / "only", split="val")
    _jpg(tmp_path / "val" / "x.jpg")
    with pytest.raises(DataError, match="no class folders and no labels file"):
        build_dataset(tmp_path, split="val")
    with pytest.raises(DataError, match="labels file not found"):
        build_dataset(tmp_path, split="val", labels_file=tmp_path / "nope.csv")


@pytest.mark.parametrize("header", [True, False])
def test_flat_val_with_csv_labels(tmp_path, header):
    for name in ("img1.jpg", "img2.jpg", "img3.jpg"):
        _jpg(tmp_path / "val" / name)
    rows = ["img1.jpg,cat", "img2,dog", "img3.jpg,cat"]
    (tmp_path / "labels.csv").write_text("\n".join((["image,label"] if header else []) + rows) + "\n")
    ds = build_dataset(tmp_path, split="val", labels_file=tmp_path / "labels.csv", classes=["cat", "dog"])
    assert [(p.split("/")[-1], t) for p, t in ds.samples] == [("img1.jpg", 0), ("img2.jpg", 1), ("img3.jpg", 0)]
    # the labels file is found on its own when named like one (here val.csv in the dataset root)
    (tmp_path / "labels.csv").rename(tmp_path / "val.csv")
    auto = build_dataset(tmp_path, split="val")
    assert auto.classes == ["cat", "dog"] and auto.samples == ds.samples


def test_csv_label_not_a_known_class(tmp_path):
    _jpg(tmp_path / "val" / "a.jpg")
    (tmp_path / "l.csv").write_text("a.jpg,unicorn\n")
    with pytest.raises(DataError, match=r"l\.csv: label 'unicorn' of 'a\.jpg' is not among the 2 known classes"):
        build_dataset(tmp_path, split="val", labels_file=tmp_path / "l.csv", classes=["cat", "dog"])


def test_csv_and_folder_must_agree(tmp_path):
    _jpg(tmp_path / "val" / "a.jpg")
    _jpg(tmp_path / "val" / "b.jpg")
    (tmp_path / "l.csv").write_text("a.jpg,cat\nc.jpg,dog\n")
    with pytest.raises(DataError, match=r"1 labelled image\(s\) are not in .*c\.jpg"):
        build_dataset(tmp_path, split="val", labels_file=tmp_path / "l.csv")
    (tmp_path / "l.csv").write_text("a.jpg,cat\n")
    with pytest.raises(DataError, match=r"1 image\(s\) have no label .*b\.jpg"):
        build_dataset(tmp_path, split="val", labels_file=tmp_path / "l.csv")
    (tmp_path / "l.csv").write_text("a.jpg\n")
    with pytest.raises(DataError, match=r"l\.csv, line 1: expected 'image,label'"):
        build_dataset(tmp_path, split="val", labels_file=tmp_path / "l.csv")


def test_ilsvrc_devkit_ground_truth_with_synset_list(tmp_path):
    # devkit order differs from sorted-wnid order: ID 1 is n02, ID 2 is n01
    (tmp_path / "synsets.txt").write_text("n02000002 kit fox\nn01000001 tench, Tinca tinca\nn03000003 x\n")
    for k in range(1, 5):
        _jpg(tmp_path / "val" / f"ILSVRC2012_val_{k:08d}.JPEG")
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\n2\n2\n3\n")
    classes = ["n01000001", "n02000002", "n03000003"]  # sorted train folders = model outputs
    ds = build_dataset(tmp_path, split="val", labels_file=gt, synsets=tmp_path / "synsets.txt", classes=classes)
    assert ds.targets == [1, 0, 0, 2]
    with pytest.raises(DataError, match="needs the devkit's synset list"):
        build_dataset(tmp_path, split="val", labels_file=gt, classes=classes)
    gt.write_text("1\n2\n2\n9\n")
    with pytest.raises(DataError, match=r"line 4: class index 9 is outside 1..3"):
        build_dataset(tmp_path, split="val", labels_file=gt, synsets=tmp_path / "synsets.txt", classes=classes)


def test_devkit_meta_mat_found_beside_ground_truth(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O")]
    # IDs deliberately out of file order; a non-leaf synset (children > 0) is not a class
    rows = [(2, "n01000001", "tench", "", 0), (1, "n02000002", "fox", "", 0), (1001, "n09999999", "animal", "", 5)]
    scipy_io.savemat(tmp_path / "meta.mat", {"synsets": np.array(rows, dtype=dt)})
    assert read_synsets(tmp_path / "meta.mat") == ["n02000002", "n01000001"]
    _jpg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    _jpg(tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG")
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("2\n1\n")
    ds = build_dataset(tmp_path, split="val", labels_file=gt)
    assert ds.classes == ["n01000001", "n02000002"] and ds.targets == [0, 1]


def test_kaggle_loc_val_solution_labels_and_boxes(tmp_path):
    for k in (1, 2):
        _jpg(tmp_path / "val" / f"ILSVRC2012_val_{k:08d}.JPEG", size=(100, 80))
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000002,n01000001 11 21 50 60 n01000001 1 1 100 80 \n"
        "ILSVRC2012_val_00000001,n02000002 5 6 7 8\n")
    ds = build_dataset(tmp_path, split="val", classes=["n01000001", "n02000002"], boxes=True)
    assert ds.targets == [1, 0]
    boxes, names = ds.raw_boxes(1)
    assert boxes.tolist() == [[10, 20, 50, 60], [0, 0, 100, 80]]  # 1-based inclusive -> continuous
    assert names == ["n01000001", "n01000001"]
    x, label, b = ds[1]
    assert label == 0 and b.tolist() == [[10, 20, 50, 60], [0, 0, 100, 80]] and tuple(b.canvas_size) == (80, 100)
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n02 5 6 7\n")
    with pytest.raises(DataError, match=r"LOC_val_solution\.csv, line 2: PredictionString must be groups"):
        build_dataset(tmp_path, split="val")


def test_kaggle_loc_label_not_a_known_class(tmp_path):
    _jpg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n09999999 5 6 7 8\n")
    with pytest.raises(DataError, match=r"LOC_val_solution\.csv: label 'n09999999' .* not among the 2 known"):
        build_dataset(tmp_path, split="val", classes=["n01000001", "n02000002"])


def test_loc_train_solution_boxes_for_class_folders(tmp_path):
    # Kaggle's train layout: class folders named by wnid, boxes in LOC_train_solution.csv
    _jpg(tmp_path / "train" / "n01000001" / "n01000001_7.JPEG", size=(60, 40))
    _jpg(tmp_path / "train" / "n01000001" / "n01000001_8.JPEG", size=(60, 40))
    (tmp_path / "LOC_train_solution.csv").write_text(
        "ImageId,PredictionString\nn01000001_7,n01000001 3 4 30 20 \n")
    ds = build_dataset(tmp_path, DenseEvalPreset(scale=20, preprocessing=PLAIN), boxes=True)
    x, label, boxes = ds[0]
    assert x.shape == (3, 20, 30) and label == 0
    assert boxes.tolist() == [[1.0, 1.5, 15.0, 10.0]]  # (2, 3, 30, 20) at half size
    assert ds.raw_boxes(1)[0].shape == (0, 4)  # not in the CSV: no boxes


def _voc(path, boxes, name="a"):
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
    path.write_text(f"<annotation><filename>x</filename>{objs}</annotation>")


@pytest.mark.parametrize("where", ["mirrored", "flat", "beside"])
def test_voc_xml_boxes(tmp_path, where):
    _folders(tmp_path / "train", {"a": 2})
    xml = {"mirrored": tmp_path / "annotations" / "train" / "a" / "a_1.xml",
           "flat": tmp_path / "annotations" / "train" / "a_1.xml",
           "beside": tmp_path / "train" / "a" / "a_1.xml"}[where]
    _voc(xml, [(11, 6, 30, 20), (1, 1, 40, 32)])
    ds = build_dataset(tmp_path, split="train", boxes=True)
    assert len(ds) == 2  # XML files are not images
    assert ds.raw_boxes(0)[0].shape == (0, 4)  # a_0 has no annotation: no boxes, not an error
    assert ds.raw_boxes(1)[0].tolist() == [[10, 5, 30, 20], [0, 0, 40, 32]]
    x, label, b = build_dataset(tmp_path, DenseEvalPreset(scale=16, preprocessing=PLAIN), boxes=True)[1]
    assert x.shape == (3, 16, 20) and b.tolist() == [[5, 2.5, 15, 10], [0, 0, 20, 16]]


def test_boxes_requested_but_none_found(tmp_path):
    _folders(tmp_path / "train", {"a": 1})
    with pytest.raises(DataError, match="no boxes found"):
        build_dataset(tmp_path, boxes=True)
    with pytest.raises(DataError, match="boxes not found"):
        build_dataset(tmp_path, boxes=tmp_path / "nowhere")
    _voc(tmp_path / "annotations" / "train" / "a" / "a_0.xml", [(5, 5, 2, 9)])
    # a broken annotation is a bad sample: an error naming it in evaluation (strict), named and skipped in training
    with pytest.raises(DataError, match=r"a_0\.xml: <bndbox> of 'a' has xmin > xmax"):
        build_dataset(tmp_path, boxes=True, strict=True)[0]
    with pytest.warns(BadImageWarning, match=r"a_0\.JPEG: its annotation cannot be used: .*a_0\.xml: <bndbox>"):
        assert build_dataset(tmp_path, boxes=True, strict=False)[0] is None


def _with_bad_files(root):
    _folders(root / "train", {"a": 3, "b": 3})
    (root / "train" / "a" / "empty.jpg").write_bytes(b"")
    (root / "train" / "b" / "text.jpg").write_text("hello")
    good = (root / "train" / "a" / "a_0.JPEG").read_bytes()
    (root / "train" / "b" / "cut.jpg").write_bytes(good[: len(good) // 2])
    return root


def _truncated(path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


# Each kind of bad file the issue names: (file name, how to make it, what the error says).
# The bomb is 100x100 = 10,000 pixels against a limit the test lowers to 5,000.
BAD_FILES = {
    "truncated": ("cut.jpg", _truncated, "truncated"),
    "zero-byte": ("empty.jpg", lambda p: p.write_bytes(b""), "empty file"),
    "not an image": ("notes.jpg", lambda p: p.write_text("hello, not a picture"), "not an image"),
    "corrupt": ("broken.png", write_corrupt_png, "cannot decode"),
    "bomb": ("bomb.png", lambda p: Image.new("RGB", (100, 100)).save(p), "decompression bomb"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_each_bad_file_skipped_in_training_and_an_error_in_evaluation(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    name, make, reason = BAD_FILES[kind]
    _folders(tmp_path / "train", {"a": 2, "b": 1})
    make(tmp_path / "train" / "b" / name)
    train = build_dataset(tmp_path, TrainPreset(crop_size=16, scale=(20, 28), preprocessing=PLAIN))
    bad = [i for i, (p, _) in enumerate(train.samples) if p.endswith(name)]
    assert len(bad) == 1  # the file is listed like any image: the problem shows when it is read
    with pytest.warns(BadImageWarning) as record:
        items = [train[i] for i in range(len(train))]
    assert [i for i, item in enumerate(items) if item is None] == bad
    assert len(record) == 1 and str(tmp_path / "train" / "b" / name) in str(record[0].message)
    assert reason in str(record[0].message)
    batch = collate_skip_bad(items)
    assert batch.skipped == 1 and batch[0].shape == (3, 3, 16, 16)
    # evaluation: the same file is an error naming it, never a smaller test set
    val = build_dataset(tmp_path, DenseEvalPreset(scale=16, preprocessing=PLAIN), split="train", strict=True)
    with pytest.raises(DataError, match=reason) as info:
        val[bad[0]]
    assert str(tmp_path / "train" / "b" / name) in str(info.value)


def _odd_files(folder):
    """One file per awkward-but-valid kind; returns {name: displayed (width, height)}."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (30, 20), 77).save(folder / "grey.jpg")
    Image.new("CMYK", (30, 20), (0, 255, 0, 0)).save(folder / "cmyk.jpg")
    pal = Image.new("P", (30, 20), 1)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(folder / "palette.png", transparency=0)
    Image.new("RGBA", (30, 20), (10, 20, 30, 128)).save(folder / "rgba.png")
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(folder / "deep.png")
    rot = Image.new("RGB", (30, 20), (0, 200, 0))
    exif = rot.getexif()
    exif[0x0112] = 6
    rot.save(folder / "rotated.jpg", exif=exif)
    return {"grey.jpg": (30, 20), "cmyk.jpg": (30, 20), "palette.png": (30, 20), "rgba.png": (30, 20),
            "deep.png": (30, 20), "rotated.jpg": (20, 30)}


def test_every_image_mode_loads_in_training_and_evaluation(tmp_path):
    sizes = _odd_files(tmp_path / "train" / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these is a bad file
        train = build_dataset(tmp_path, TrainPreset(crop_size=16, scale=(16, 24), preprocessing=PLAIN))
        assert len(train) == 6
        batch = collate_skip_bad([train[i] for i in range(len(train))])
        assert batch.skipped == 0 and batch[0].shape == (6, 3, 16, 16)
        dense = build_dataset(tmp_path, DenseEvalPreset(scale=16, preprocessing=PLAIN), strict=True)
        for i, (path, _) in enumerate(dense.samples):
            w, h = sizes[path.rsplit("/", 1)[-1]]
            x, _ = dense[i]
            assert x.shape == (3, 16 * h // min(w, h), 16 * w // min(w, h))  # EXIF rotation swaps the sides
    by_name = {p.rsplit("/", 1)[-1]: i for i, (p, _) in enumerate(dense.samples)}
    centre = {name: dense[i][0][:, 8, 8].round().tolist() for name, i in by_name.items()}
    assert centre["grey.jpg"] == pytest.approx([77] * 3, abs=2)
    assert centre["palette.png"] == [0, 0, 255]
    assert centre["rgba.png"] == pytest.approx([132, 137, 142], abs=1)  # over white
    assert centre["deep.png"] == pytest.approx([156] * 3, abs=1)  # 40000 / 257, not clipped to 255
    assert centre["rotated.jpg"] == pytest.approx([0, 200, 0], abs=4)
    assert centre["cmyk.jpg"] == pytest.approx([255, 0, 255], abs=12)  # magenta


def test_exif_rotated_image_with_boxes_and_draft_decoding(tmp_path):
    # stored 400x200, shown 200x400 (orientation 6); the VOC box is in the displayed
    # image's pixels, as annotation tools save it. The preset decodes at 1/4 (draft),
    # rotates, and the box must still sit on the white rectangle.
    shown = Image.new("RGB", (200, 400), (0, 0, 0))
    ImageDraw.Draw(shown).rectangle([40, 240, 119, 359], fill=(255, 255, 255))  # box (40, 240, 120, 360)
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # what a camera writes before tagging orientation 6
    exif = stored.getexif()
    exif[0x0112] = 6
    path = tmp_path / "train" / "a" / "r.jpg"
    path.parent.mkdir(parents=True)
    stored.save(path, exif=exif, quality=95)
    _voc(tmp_path / "annotations" / "train" / "a" / "r.xml", [(41, 241, 120, 360)])
    ds = build_dataset(tmp_path, DenseEvalPreset(scale=50, preprocessing=PLAIN), boxes=True)
    x, _, boxes = ds[0]
    assert x.shape == (3, 100, 50) and tuple(boxes.canvas_size) == (100, 50)
    assert boxes.tolist() == [[10.0, 60.0, 30.0, 90.0]]
    ys, xs = torch.nonzero(x.mean(0) > 128, as_tuple=True)
    found = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    assert max(abs(f - e) for f, e in zip(found, boxes[0].tolist())) <= 1.5


def test_dataset_hands_our_presets_an_undecoded_image(tmp_path):
    # so that the preset can choose the JPEG draft scale; a foreign transform gets decoded RGB
    _jpg(tmp_path / "train" / "a" / "big.jpg", size=(800, 600))
    seen = []

    class Spy(DenseEvalPreset):
        def __call__(self, image, boxes=None):
            seen.append(bool(image.tile))
            out = super().__call__(image, boxes)
            seen.append(tuple(out.shape))
            return out

    build_dataset(tmp_path, Spy(scale=100, preprocessing=PLAIN))[0]
    assert seen == [True, (3, 100, 133)]


def test_training_skips_bad_files_with_a_warning_naming_them(tmp_path):
    ds = build_dataset(_with_bad_files(tmp_path), TrainPreset(crop_size=16, scale=24, preprocessing=PLAIN))
    with pytest.warns(BadImageWarning) as record:
        items = [ds[i] for i in range(len(ds))]
    assert sum(item is None for item in items) == 3
    messages = " ".join(str(w.message) for w in record)
    for name in ("empty.jpg", "text.jpg", "cut.jpg"):
        assert name in messages
    batch = collate_skip_bad(items)
    assert isinstance(batch, Batch) and batch.skipped == 3
    images, labels = batch
    assert images.shape == (6, 3, 16, 16) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    empty = collate_skip_bad([None, None])
    assert not empty and len(empty) == 0 and empty.skipped == 2  # an all-bad batch still counts


def test_evaluation_raises_on_bad_file_naming_it(tmp_path):
    ds = build_dataset(_with_bad_files(tmp_path), DenseEvalPreset(scale=16, preprocessing=PLAIN), split="train",
                       strict=True)
    bad = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("cut.jpg")][0]
    with pytest.raises(DataError, match=r"cut\.jpg: truncated"):
        ds[bad]


def test_loader_counts_bad_files_across_workers(tmp_path):
    ds = build_dataset(_with_bad_files(tmp_path), TrainPreset(crop_size=16, scale=24, preprocessing=PLAIN))
    loader = make_loader(ds, batch_size=4, workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        batches = [b for b in loader]
    # batches of 4 over 9 files: the last one (text.jpg) is all bad and must still be counted
    assert [b.skipped for b in batches] == [1, 1, 1]
    assert not batches[-1]
    assert sum(len(b[1]) for b in batches if b) == 6
    assert loader.persistent_workers and not loader.pin_memory
    # on a GPU the batches go to pinned memory (only built here, not iterated: no GPU needed)
    assert make_loader(ds, batch_size=4, workers=0, device="cuda").pin_memory


def test_batch_survives_pickling():
    b = Batch((torch.zeros(2, 3), torch.tensor([1, 2])), skipped=5)
    c = pickle.loads(pickle.dumps(b))
    assert c.skipped == 5 and torch.equal(c[1], b[1])
    images, labels = c
    assert images.shape == (2, 3)


def test_bad_fraction_stops_training():
    check_bad_fraction(1, 100, 0.01)
    with pytest.raises(DataError, match=r"2 of 100 images \(2\.00%\) in DIR could not be decoded"):
        check_bad_fraction(2, 100, 0.01, where="DIR")


def test_foreign_transform_gets_decoded_rgb(tmp_path):
    p = tmp_path / "train" / "a" / "g.png"
    p.parent.mkdir(parents=True)
    Image.new("L", (10, 6), 3).save(p)
    ds = build_dataset(tmp_path, transform=lambda img: (img.mode, img.size))
    assert ds[0] == (("RGB", (10, 6)), 0)


def test_cli_stats_and_synth_share_layout(tmp_path, capsys):
    _folders(tmp_path / "data" / "train", {"a": 2, "b": 2})
    assert main(["stats", str(tmp_path / "data"), "--all"]) == 0
    assert (tmp_path / "data" / "stats.json").is_file()
    assert main(["stats", str(tmp_path / "data")]) == 2
    assert "stats.json: exists; pass --force" in capsys.readouterr().err
    (tmp_path / "data" / "train" / "c").mkdir()
    assert main(["stats", str(tmp_path / "data"), "--force"]) == 2
    assert "empty class folder" in capsys.readouterr().err
