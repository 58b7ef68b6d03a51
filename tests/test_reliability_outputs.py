"""Reliability of the newer commands: where they write, how loader workers report bad data, what
kind of net a checkpoint holds, checksums through export and import, content-aware caches.

Tiny untrained nets (net A at 1/16 width, 32-pixel crops) and synthetic data: what is tested is
what the commands refuse and name, not what the nets learn.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vggnet.checkpoint import (CAFFE_PREPROCESSING, checkpoint_kind, load_checkpoint, make_checkpoint,
                               save_checkpoint)
from vggnet.cli import main
from vggnet.data.synthetic import write_synthetic
from vggnet.errors import CheckpointError, UserError, plain_message
from vggnet.models import vgg
from vggnet.paths import check_output, distinct_outputs, folder_fingerprint, inside

TINY = dict(width=1 / 16, fc_width=16, crop_size=32)
SRC = str(Path(vgg.__code__.co_filename).resolve().parents[1])  # the vggnet this test imports


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synthetic dataset with boxes, a classifier of its classes, SCR and PCR localisers, and a PCR
    localiser as older vggnet wrote them (no task, no kind)."""
    from vggnet.localisation.task import make_localisation_checkpoint

    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    classes = write_synthetic(data, classes=4, train=8, val=4, seed=0, force=True, image_size=(32, 48))["classes"]
    torch.manual_seed(0)
    cls = save_checkpoint(root / "cls.pt", make_checkpoint(vgg("A", num_classes=4, **TINY),
                                                           preprocessing=CAFFE_PREPROCESSING, classes=classes))
    scr = save_checkpoint(root / "scr.pt", make_localisation_checkpoint(
        vgg("A", num_classes=4, **TINY), head="scr", classes=classes, preprocessing=CAFFE_PREPROCESSING))
    pcr_ckpt = make_localisation_checkpoint(vgg("A", num_classes=16, **TINY), head="pcr", classes=classes,
                                            preprocessing=CAFFE_PREPROCESSING)
    pcr = save_checkpoint(root / "pcr.pt", pcr_ckpt)
    old = dict(pcr_ckpt, meta={})
    torch.save(old, root / "old_pcr.pt")  # no meta task, no kind, no checksum: as older files are
    return dict(root=root, data=data, classes=classes, cls=cls, scr=scr, pcr=pcr, old_pcr=root / "old_pcr.pt")


def run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def vgg_process(argv, *, timeout, cwd=None):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "vggnet.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def flip_a_weight_byte(path: Path, out: Path) -> Path:
    blob = torch.load(path, weights_only=True)
    w = blob["state_dict"]["classifier.0.weight"]
    w.view(torch.uint8)[0] ^= 0x10
    torch.save(blob, out)  # the stored weights_sha256 no longer matches
    return out


# --------------------------------------------------------------------------- 1: loader workers


def test_a_malformed_annotation_with_loader_workers_exits_naming_the_file(world, tmp_path):
    """It used to block forever in multiprocessing's exit join (the worker's DataError, workers that
    ignore SIGTERM). Now a broken XML is a bad sample: named, skipped, counted."""
    import shutil

    data = shutil.copytree(world["data"], tmp_path / "data")
    bad = sorted((data / "annotations" / "train").rglob("*.xml"))[0]
    bad.write_text("<annotation><object>\n")
    result = vgg_process(["localize", "train", "--data", data, "--init", f"from:{world['cls']}", "--model", "A",
                          "--width", "0.0625", "--fc-width", "16", "--crop-size", "32", "--scale", "32:48",
                          "--epochs", "1", "--batch-size", "4", "--workers", "2", "--stats-sample", "8",
                          "--device", "cpu", "--amp", "off", "--no-progress", "--output-dir", tmp_path / "run"],
                         timeout=120)
    assert result.returncode == 2, result.stderr
    said = result.stdout + result.stderr
    assert f"{bad.name}: not a readable PASCAL VOC XML file" in said and "could not be decoded" in result.stderr
    assert "Traceback" not in said


def test_a_worker_error_is_shown_as_its_own_message():
    wrapped = UserError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1\nvggnet.errors.DataError: a.xml: not readable")
    assert plain_message(wrapped) == "a.xml: not readable"
    assert plain_message(UserError("plain")) == "plain"


# --------------------------------------------------------------------------- 2: memory estimate


def test_features_and_localize_eval_refuse_test_scales_that_cannot_fit(world, tmp_path, capsys):
    code, _, err = run(["features", "--checkpoint", world["cls"], "--data", world["data"] / "val", "--output", tmp_path / "f.safetensors",
                        "--test-scales", "200000", "--device", "cpu", "--workers", "0"], capsys)
    assert code == 2 and "--test-scales: Q=200000 needs at least" in err and "use test scales up to" in err
    code, _, err = run(["localize", "eval", "--checkpoint", world["pcr"], "--data", world["data"],
                        "--test-scales", "200000", "--device", "cpu", "--workers", "0"], capsys)
    assert code == 2 and "--test-scales: Q=200000 needs at least" in err


def test_bad_test_scales_in_localize_eval_are_a_message(world, capsys):
    code, _, err = run(["localize", "eval", "--checkpoint", world["pcr"], "--data", world["data"],
                        "--test-scales", "0,abc"], capsys)
    assert code == 2 and "expected comma-separated integers" in err


# --------------------------------------------------------------------------- 3-5: where commands write


def test_a_grid_name_cannot_leave_the_output_folder(world, tmp_path, capsys):
    for name in ("../../x", "/abs/path", "a/b"):
        grid = tmp_path / "g.yaml"
        grid.write_text(f"name: {name}\ncells:\n  A: {{settings: {{model: A, scale: 32}}}}\n")
        code, _, err = run(["experiment", grid, "--data", world["data"], "--output-dir", tmp_path / "out",
                            "--dry-run"], capsys)
        assert code == 2 and "name" in err and repr(name) in err, err
    with pytest.raises(UserError, match="leads out of"):
        os.symlink("/tmp", tmp_path / "link")
        inside(tmp_path, "link", what="name")


def test_an_output_equal_to_an_input_is_refused_and_the_input_kept(world, tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(world["cls"].read_bytes())
    before = ck.read_bytes()
    for argv in (["features", "--checkpoint", ck, "--data", world["data"] / "val", "--output", ck],
                 ["export", "onnx", "--checkpoint", ck, "--output", ck],
                 ["export", "safetensors", "--checkpoint", ck, "--output", tmp_path / "ck.safetensors"],  # fine: another file
                 ["eval", "--checkpoint", ck, "--data", world["data"], "--confusion-matrix", ck],
                 ["import", ck, "--output", ck]):
        code, _, err = run(argv, capsys)
        if argv[1] == "safetensors":
            assert code == 0, err
            continue
        assert code == 2 and f"{ck}: is the input {ck}" in err, (argv, err)
        assert ck.read_bytes() == before
    st = tmp_path / "ck.safetensors"
    before = st.read_bytes()
    code, _, err = run(["import", st, "--output", st], capsys)
    assert code == 2 and "is the input" in err and st.read_bytes() == before


def test_outputs_under_a_file_or_onto_a_folder_are_named(tmp_path):
    note = tmp_path / "file.txt"
    note.write_text("x")
    with pytest.raises(UserError, match=r"--output .*file\.txt/x\.safetensors: .*file\.txt is a file, not a folder"):
        check_output(note / "x.safetensors", flag="--output")
    with pytest.raises(UserError, match="is a folder; give the name of the file"):
        check_output(tmp_path, flag="--confusion-matrix")
    with pytest.raises(UserError, match="is inside the input"):
        check_output(tmp_path / "data" / "f.safetensors", flag="--output", inputs=[tmp_path])


def test_localize_predict_gives_same_name_images_distinct_drawings(world, tmp_path, capsys):
    src = sorted((world["data"] / "val").rglob("*.jpg"))[:2]
    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"
    for s, d in zip(src, (a, b)):
        d.parent.mkdir()
        d.write_bytes(s.read_bytes())
    assert distinct_outputs([a, b], "D", ".png") == [Path("D/a_x.png"), Path("D/b_x.png")]
    assert distinct_outputs(["a/x.jpg", "a/x.png"], "D", ".png") == [Path("D/a_x.png"), Path("D/a_x_2.png")]
    code, _, err = run(["localize", "predict", "--checkpoint", world["pcr"], "--classifier", world["cls"],
                        "--output", tmp_path / "D", a, b, "--device", "cpu"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "D").glob("*.png")) == ["a_x.png", "b_x.png"]
    note = tmp_path / "note.txt"
    note.write_text("x")
    code, _, err = run(["localize", "predict", "--checkpoint", world["pcr"], "--classifier", world["cls"],
                        "--output", note, a], capsys)
    assert code == 2 and "is a file, not a folder" in err


# --------------------------------------------------------------------------- 6: CSV


def test_confusion_matrix_csv_cells_are_never_formulas(tmp_path):
    from vggnet.classification.results import EvalResult

    classes = ["=1+2", "+cmd", "-x", "@SUM(A1)", "plain"]
    result = EvalResult(classes=classes, labels=torch.arange(5), paths=[f"{i}.jpg" for i in range(5)],
                        nets=[{"name": "A", "train_scale": None, "test_scales": [32]}], methods=["dense"], method="dense", flip=False,
                        posteriors={(0, "dense", 32): torch.eye(5)})
    result.write_confusion_matrix(tmp_path / "cm.csv", max_plot_classes=0)
    rows = list(csv.reader((tmp_path / "cm.csv").open()))
    assert rows[0][1:] == ["'=1+2", "'+cmd", "'-x", "'@SUM(A1)", "plain"]
    assert [r[0] for r in rows[1:]] == ["'=1+2", "'+cmd", "'-x", "'@SUM(A1)", "plain"]


# --------------------------------------------------------------------------- 7: boxes


def test_an_image_never_takes_the_annotation_of_another_class_folder(tmp_path):
    from vggnet.data.datasets import build_dataset

    write_synthetic(tmp_path, classes=2, train=4, val=2, seed=0, force=True, image_size=(32, 48))
    train = tmp_path / "train"
    first, second = sorted(p.name for p in train.iterdir())
    img = sorted((train / first).glob("*.jpg"))[0]
    moved = train / second / img.name  # e.g. train/square/circle_00000.jpg, its XML under circle/
    img.rename(moved)
    ds = build_dataset(tmp_path, split="train", boxes=True)
    i = [p for p, _ in ds.samples].index(str(moved))
    assert ds.box_sources[i] is None


# --------------------------------------------------------------------------- 8: checksums and NaN


def test_export_and_import_verify_checksums(world, tmp_path, capsys):
    flipped = flip_a_weight_byte(world["cls"], tmp_path / "flipped.pt")
    for fmt, out in (("safetensors", "f.safetensors"), ("onnx", "f.onnx"), ("torchvision", "f.pth")):
        code, _, err = run(["export", fmt, "--checkpoint", flipped, "--output", tmp_path / out], capsys)
        assert code == 2 and "do not match the checksum" in err and not (tmp_path / out).exists(), (fmt, err)
    code, _, err = run(["export", "safetensors", "--checkpoint", world["cls"], "--output", tmp_path / "ok.safetensors"], capsys)
    assert code == 0, err
    # a weight changed inside the safetensors export (its sidecar removed): the header's checksum refuses it
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ok.safetensors"), framework="pt") as f:
        header = f.metadata()
    state = load_file(tmp_path / "ok.safetensors")
    state["classifier.0.weight"][0, 0] += 1
    save_file(state, tmp_path / "edited.safetensors", metadata=header)
    code, _, err = run(["import", "safetensors", tmp_path / "edited.safetensors", "--output", tmp_path / "e.pt"], capsys)
    assert code == 2 and "checksum stored in its header" in err and not (tmp_path / "e.pt").exists()


def test_nan_weights_are_refused_on_import_and_on_init(world, tmp_path, capsys):
    state = {k: v.clone() for k, v in load_checkpoint(world["cls"])["state_dict"].items()}
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    code, _, err = run(["import", "torchvision", tmp_path / "nan.pth", "--output", tmp_path / "nan.pt", "--model", "A",
                        "--width", "0.0625", "--fc-width", "16", "--crop-size", "32"], capsys)
    assert code == 2 and "NaN or infinite" in err and "features.0.weight" in err
    ckpt = load_checkpoint(world["cls"])
    ckpt["state_dict"]["features.0.weight"][0, 0, 0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan_init.pt", ckpt)
    code, _, err = run(["train", "--data", world["data"], "--init", f"from:{tmp_path / 'nan_init.pt'}", "--model",
                        "A", "--width", "0.0625", "--fc-width", "16", "--crop-size", "32", "--scale", "40",
                        "--epochs", "1", "--workers", "0", "--device", "cpu", "--no-progress", "--output-dir",
                        tmp_path / "run"], capsys)
    assert code == 2 and "--init from:" in err and "NaN or infinite" in err and "learning rate" not in err


# --------------------------------------------------------------------------- 9: kinds


def test_checkpoints_carry_their_kind_and_older_files_are_inferred(world):
    assert load_checkpoint(world["cls"])["kind"] == "classifier"
    assert load_checkpoint(world["scr"])["kind"] == "localiser-scr"
    assert load_checkpoint(world["pcr"])["kind"] == "localiser-pcr"
    old = load_checkpoint(world["old_pcr"])
    assert "kind" not in old and checkpoint_kind(old) == "localiser-pcr"


def test_a_kind_entry_that_contradicts_the_contents_is_refused(world, tmp_path):
    blob = torch.load(world["scr"], weights_only=True)
    blob["kind"] = "classifier"
    torch.save(blob, tmp_path / "lie.pt")
    with pytest.raises(CheckpointError, match="kind entry says 'classifier'.*say 'localiser-scr'"):
        load_checkpoint(tmp_path / "lie.pt")


@pytest.mark.parametrize("which", ["scr", "pcr", "old_pcr"])
def test_eval_predict_and_features_refuse_a_localiser_naming_it(world, which, tmp_path, capsys):
    img = sorted((world["data"] / "val").rglob("*.jpg"))[0]
    head = "SCR" if which == "scr" else "PCR"
    for argv in (["eval", "--checkpoint", world[which], "--data", world["data"], "--workers", "0"],
                 ["predict", "--checkpoint", world[which], img],
                 ["features", "--checkpoint", world[which], "--data", world["data"] / "val", "--output", tmp_path / "f.safetensors"]):
        code, _, err = run(argv, capsys)
        assert code == 2 and f"is a {head} localisation net" in err and "vgg localize" in err, (argv, err)


def test_int8_export_refuses_a_localiser(world, tmp_path, capsys):
    code, _, err = run(["export", "onnx", "--checkpoint", world["pcr"], "--output", tmp_path / "x.onnx", "--int8", "--calibration",
                        world["data"] / "val"], capsys)
    assert code == 2 and "PCR localisation net" in err and "--int8" in err and not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------- 10-11: caches


def test_experiment_cells_are_keyed_by_the_datas_files(world, tmp_path):
    import shutil

    from vggnet.experiments.grid import load_grid
    from vggnet.experiments.runner import plan_grid

    data = shutil.copytree(world["data"], tmp_path / "data")
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndefaults: {crop_size: 32, width: 0.0625, fc_width: 16}\n"
                    "cells:\n  A: {settings: {model: A, scale: 256}}\n"
                    "  A-eval: {kind: eval, nets: [A], settings: {test_scales: [256]}}\n")
    before = {n: c.hash for n, c in plan_grid(load_grid(grid), data=data, root=tmp_path / "out").cells.items()}
    assert before == {n: c.hash for n, c in plan_grid(load_grid(grid), data=data, root=tmp_path / "out").cells.items()}
    fp = folder_fingerprint(data)
    sorted((data / "val").rglob("*.jpg"))[0].unlink()
    assert folder_fingerprint(data) != fp
    after = {n: c.hash for n, c in plan_grid(load_grid(grid), data=data, root=tmp_path / "out").cells.items()}
    assert all(before[n] != after[n] for n in before)


def test_a_damaged_descriptor_chunk_is_computed_again(world, tmp_path, monkeypatch):
    from vggnet.transfer.descriptors import DescriptorExtractor, list_images

    images = list_images(world["data"], "val")
    ex = DescriptorExtractor([world["cls"]], scales=[32], device="cpu", workers=0)
    whole = ex.extract(images, tmp_path / "whole.safetensors", chunk_size=2)
    real, calls, die = DescriptorExtractor._chunk, [], [True]

    def dying(self, imgs, rows, **kw):
        calls.append(rows[0])
        if die[0] and len(calls) == 2:  # killed during the second chunk
            raise KeyboardInterrupt
        return real(self, imgs, rows, **kw)

    monkeypatch.setattr(DescriptorExtractor, "_chunk", dying)
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        ex.extract(images, out, chunk_size=2)
    chunk = next(tmp_path.glob("resumed.safetensors.parts-*/chunk_000000.safetensors"))
    raw = bytearray(chunk.read_bytes())
    raw[-3] ^= 0x40  # a byte of the descriptors
    chunk.write_bytes(bytes(raw))
    calls.clear()
    die[0] = False
    with pytest.warns(UserWarning, match="do not match their checksum"):
        resumed = ex.extract(images, out, chunk_size=2)
    assert calls == [0, 2]  # chunk 0 computed again
    assert torch.equal(torch.from_numpy(resumed.descriptors), torch.from_numpy(whole.descriptors))


# --------------------------------------------------------------------------- every command, hostile inputs


@pytest.fixture(scope="module")
def hostile(world, tmp_path_factory):
    """Paths that are wrong for what a flag expects: a file, a folder, a path no one can write, a VOC
    list and a class list that are not UTF-8."""
    from vggnet.data.synthetic import write_multilabel

    root = tmp_path_factory.mktemp("hostile")
    (root / "file.txt").write_text("not a folder\n")
    (root / "folder").mkdir()
    voc = root / "voc"
    write_multilabel(voc, classes=3, trainval=4, test=2, seed=0, force=True, image_size=(32, 48))
    main_sets = next(voc.rglob("ImageSets/Main"))
    (main_sets / "latin.txt").write_bytes(b"caf\xe9\n\xff\xfe\n")
    (root / "latin_classes.txt").write_bytes(b"caf\xe9\nna\xefve\n")
    (root / "latin.yaml").write_bytes(b"model: A\n# caf\xe9\n")
    grid = root / "g.yaml"
    grid.write_text("name: g\ndefaults: {crop_size: 32}\ncells:\n  A: {settings: {model: A, scale: 256}}\n")
    state = {k: v for k, v in load_checkpoint(world["cls"])["state_dict"].items()}
    torch.save(state, root / "tv.pth")
    img = sorted((world["data"] / "val").rglob("*.jpg"))[0]
    return dict(world, F=root / "file.txt", DIR=root / "folder", NOWRITE=Path("/proc/vggnet-no-such/x"),
                voc=voc.parent if (voc / "VOC2007").exists() else voc, voc_root=main_sets.parents[1],
                latin_classes=root / "latin_classes.txt", latin_yaml=root / "latin.yaml", grid=grid,
                tv=root / "tv.pth", img=img, T=root)


CK, D = "{cls}", "{data}"
HOSTILE = {
    # a file where a folder is expected
    "train --data FILE": ["train", "--data", "{F}", "--epochs", "1", "--device", "cpu"],
    "eval --data FILE": ["eval", "--checkpoint", CK, "--data", "{F}"],
    "features --data FILE": ["features", "--checkpoint", CK, "--data", "{F}", "--output", "{T}/o.safetensors"],
    "transfer --data FILE": ["transfer", "--checkpoint", CK, "--data", "{F}", "--output-dir", "{T}/tr"],
    "transfer --output-dir FILE": ["transfer", "--checkpoint", CK, "--data", D, "--output-dir", "{F}"],
    "localize eval --data FILE": ["localize", "eval", "--checkpoint", "{pcr}", "--data", "{F}"],
    "localize predict --out FILE": ["localize", "predict", "--checkpoint", "{pcr}", "--classifier", CK, "--output",
                                    "{F}", "{img}"],
    "experiment --data FILE": ["experiment", "{grid}", "--data", "{F}", "--output-dir", "{T}/ex"],
    "experiment --output-dir FILE": ["experiment", "{grid}", "--data", D, "--output-dir", "{F}"],
    "stats FILE": ["stats", "{F}"],
    "localize train --data FILE": ["localize", "train", "--data", "{F}", "--init", f"from:{CK}"],
    # a folder where a file is expected
    "eval --checkpoint DIR": ["eval", "--checkpoint", "{DIR}", "--data", D],
    "predict --checkpoint DIR": ["predict", "--checkpoint", "{DIR}", "{img}"],
    "export --checkpoint DIR": ["export", "onnx", "--checkpoint", "{DIR}", "--output", "{T}/x.onnx"],
    "import DIR": ["import", "{DIR}", "--output", "{T}/x.pt"],
    "features --out DIR": ["features", "--checkpoint", CK, "--data", D + "/val", "--output", "{DIR}"],
    "eval --confusion-matrix DIR": ["eval", "--checkpoint", CK, "--data", D, "--confusion-matrix", "{DIR}"],
    "export --out DIR": ["export", "safetensors", "--checkpoint", CK, "--output", "{DIR}"],
    "train --init from:DIR": ["train", "--data", D, "--init", "from:{DIR}", "--epochs", "1", "--device", "cpu"],
    # an output equal to an input
    "features --out CKPT": ["features", "--checkpoint", CK, "--data", D + "/val", "--output", CK],
    "export --out CKPT": ["export", "torchvision", "--checkpoint", CK, "--output", CK],
    "eval --confusion-matrix CKPT": ["eval", "--checkpoint", CK, "--data", D, "--confusion-matrix", CK],
    "import --out FILE": ["import", "torchvision", "{tv}", "--output", "{tv}"],
    # an output no one can write
    "import --out unwritable": ["import", "torchvision", "{tv}", "--output", "{NOWRITE}.pt", "--model", "A",
                                "--width", "0.0625", "--fc-width", "16", "--crop-size", "32"],
    "export --out unwritable": ["export", "safetensors", "--checkpoint", CK, "--output", "{NOWRITE}.safetensors"],
    "features --out unwritable": ["features", "--checkpoint", CK, "--data", D + "/val", "--output", "{NOWRITE}.safetensors",
                                  "--device", "cpu", "--workers", "0"],
    "localize predict --out unwritable": ["localize", "predict", "--checkpoint", "{pcr}", "--classifier", CK,
                                          "--output", "{NOWRITE}", "{img}", "--device", "cpu"],
    "transfer --output-dir unwritable": ["transfer", "--checkpoint", CK, "--data", D, "--output-dir", "{NOWRITE}"],
    # list files that are not UTF-8
    "features --split latin1": ["features", "--checkpoint", CK, "--data", "{voc_root}", "--split", "latin", "--output",
                                "{T}/v.safetensors"],
    "import --classes latin1": ["import", "torchvision", "{tv}", "--output", "{T}/c.pt", "--classes",
                                "{latin_classes}", "--model", "A", "--width", "0.0625", "--fc-width", "16",
                                "--crop-size", "32"],
    "train --config latin1": ["train", "--config", "{latin_yaml}"],
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_every_command_names_a_hostile_input_with_exit_status_2(hostile, case, capsys):
    argv = [a.format(**hostile) for a in HOSTILE[case]]
    before = {p: p.read_bytes() for p in (hostile["cls"], hostile["tv"])}
    code, _, err = run(argv, capsys)
    assert code == 2, f"{case}: exit {code}: {err}"
    assert err.startswith("vgg ") and ": error: " in err and "Traceback" not in err, f"{case}: {err}"
    assert all(p.read_bytes() == b for p, b in before.items()), f"{case}: an input was changed"


# --------------------------------------------------------------------------- 12-13: silently wrong, misleading


def test_what_used_to_pass_silently_is_named(world, tmp_path, capsys):
    from vggnet.data.annotations import read_voc_xml
    from vggnet.experiments.grid import load_grid
    from vggnet.experiments.runner import plan_grid
    from vggnet.interop.common import read_classes
    from vggnet.transfer.descriptors import list_images

    xml = tmp_path / "x.xml"
    xml.write_text("<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
                   "</bndbox></object></annotation>")
    with pytest.raises(UserError, match=r"x\.xml: an <object> has no <name>"):
        read_voc_xml(xml)
    with pytest.raises(UserError, match="--exclude-class leaves no class"):
        list_images(world["data"] / "val", None, exclude=world["classes"])
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndefaults: {crop_size: 32}\ncells:\n  A: {settings: {model: A, scale: 256}}\n"
                    "  E: {kind: eval, nets: [A], settings: {test_scales: [0, -5]}}\n")
    with pytest.raises(UserError, match=r"test_scales must be positive integers.*\[0, -5\]"):
        plan_grid(load_grid(grid), data=world["data"], root=tmp_path / "out")
    (tmp_path / "classes.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(UserError, match="repeated: cat"):
        read_classes(tmp_path / "classes.txt")
    for flag in ("--max-images", "--mean-box-sample"):
        code, _, err = run(["localize", "eval", "--checkpoint", world["pcr"], "--data", world["data"], flag, "0"],
                           capsys)
        assert code == 2 and (f"{flag} must be >= 1" in err or f"argument {flag}: expected a positive integer" in err)


def test_localisation_validation_counts_unreadable_images(world, tmp_path):
    import shutil

    from vggnet.data.datasets import build_dataset
    from vggnet.localisation.task import load_localiser, protocol1

    data = shutil.copytree(world["data"], tmp_path / "data")
    sorted((data / "val").rglob("*.jpg"))[0].write_bytes(b"")
    loc = load_localiser(world["pcr"])
    val = build_dataset(data, split="val", classes=world["classes"], strict=False, boxes=True)
    with pytest.warns(UserWarning):
        result = protocol1(loc.model, val, head="pcr", preprocessing=loc.preprocessing, scale=40, device="cpu")
    assert result["bad_images"] == 1 and result["images"] == len(val) - 1


def test_init_from_a_folder_says_so(world, tmp_path, capsys):
    code, _, err = run(["train", "--data", world["data"], "--init", f"from:{tmp_path}", "--epochs", "1"], capsys)
    assert code == 2 and "is a folder; give the checkpoint file in it" in err


def test_a_fifo_given_to_localize_predict_is_named_as_one(world, tmp_path, capsys):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    code, _, err = run(["localize", "predict", "--checkpoint", world["pcr"], "--classifier", world["cls"],
                        "--output", tmp_path / "D", fifo], capsys)
    assert code == 2 and "FIFO" in err and "no such file" not in err


def test_a_truncated_validation_image_with_a_loader_worker_is_a_message(world, tmp_path):
    import shutil

    data = shutil.copytree(world["data"], tmp_path / "data")
    img = sorted((data / "val").rglob("*.jpg"))[0]
    img.write_bytes(img.read_bytes()[:300])
    result = vgg_process(["localize", "eval", "--checkpoint", world["pcr"], "--data", data, "--workers", "1",
                          "--device", "cpu"], timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"{img.name}:" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_file_size_limit_while_writing_is_a_named_error(world, tmp_path):
    import resource

    def limit():  # `ulimit -f`: Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))

    out = tmp_path / "f.safetensors"
    env = {**os.environ, "PYTHONPATH": SRC}
    result = subprocess.run([sys.executable, "-m", "vggnet.cli", "features", "--checkpoint", str(world["cls"]), "--data",
                             str(world["data"] / "val"), "--output", str(out), "--test-scales", "32", "--device", "cpu",
                             "--workers", "0"], capture_output=True, text=True, timeout=120, env=env,
                            preexec_fn=limit)
    assert result.returncode == 2, result.stderr
    assert "File too large" in result.stderr and "f.safetensors" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_transfer_with_no_positive_in_the_test_set_is_an_error_not_nan(hostile, tmp_path, capsys):
    import re
    import shutil

    root = shutil.copytree(hostile["voc_root"], tmp_path / "VOC")
    ids = (root / "ImageSets" / "Main" / "test.txt").read_text().split()
    for i in ids:
        xml = root / "Annotations" / f"{i}.xml"
        xml.write_text(re.sub(r"<object>.*?</object>", "", xml.read_text(), flags=re.S))
    code, out, err = run(["transfer", "--checkpoint", hostile["cls"], "--data", root, "--output-dir", tmp_path / "run",
                          "--test-scales", "32", "--device", "cpu", "--workers", "0"], capsys)
    assert code == 2 and f"none of the {len(ids)} test images has an object" in err and "nan" not in out


def test_training_boxes_all_outside_their_images_stop_the_run(world, tmp_path, capsys):
    import re
    import shutil

    data = shutil.copytree(world["data"], tmp_path / "data")
    for xml in (data / "annotations" / "train").rglob("*.xml"):
        text = re.sub(r"<xmin>\d+</xmin>", "<xmin>900</xmin>", xml.read_text())
        text = re.sub(r"<xmax>\d+</xmax>", "<xmax>950</xmax>", text)
        xml.write_text(text)
    code, _, err = run(["localize", "train", "--data", data, "--init", f"from:{world['cls']}", "--model", "A",
                        "--width", "0.0625", "--fc-width", "16", "--crop-size", "32", "--scale", "32:48",
                        "--epochs", "1", "--batch-size", "4", "--workers", "0", "--stats-sample", "8",
                        "--device", "cpu", "--amp", "off", "--no-progress", "--output-dir", tmp_path / "run"], capsys)
    assert code == 2 and "training crops" in err and "held no part of its box" in err, err


def test_an_error_raised_in_a_training_loader_worker_ends_the_process(world, tmp_path):
    """The workers ignore SIGTERM (the main process turns it into a checkpoint), and an exception's
    traceback kept them alive until exit, where multiprocessing's join waited for them forever."""
    script = f"""
import sys
import torch.utils.data
from vggnet.data.datasets import ImageDataset
from vggnet.errors import DataError

read = ImageDataset.__getitem__

def broken(self, index):
    if torch.utils.data.get_worker_info() is None:
        return read(self, index)
    raise DataError("item " + str(index) + ": broken on purpose")

ImageDataset.__getitem__ = broken  # the forked loader workers inherit it
from vggnet.cli import main
sys.exit(main(["train", "--data", {str(world['data'])!r}, "--model", "A", "--width", "0.0625", "--fc-width", "16",
               "--crop-size", "32", "--scale", "40", "--epochs", "1", "--batch-size", "4", "--workers", "2",
               "--stats-sample", "4", "--device", "cpu", "--amp", "off", "--no-progress",
               "--output-dir", {str(tmp_path / 'run')!r}]))
"""
    env = {**os.environ, "PYTHONPATH": SRC}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90, env=env)
    assert result.returncode == 2, result.stderr
    assert "broken on purpose" in result.stderr and "Traceback" not in result.stderr
