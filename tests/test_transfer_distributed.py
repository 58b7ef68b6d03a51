"""Appendix B under torch.distributed: with 2 CPU processes (gloo) `compute`, `extract`, `vgg features`
and `vgg transfer` describe each image once (rank r: rows r, r+W, ...), gather what one process
computes, in order, and write one set of files: rank 0's."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vggnet
from test_train_distributed import skip_without_gloo, torchrun_env  # tests/ is on sys.path (rootdir conftest)
from test_transfer import random_ckpt, write_png
from vggnet import distributed
from vggnet.cli import main
from vggnet.errors import DataError, UserError
from vggnet.transfer.descriptors import DescriptorExtractor, ImageSet, load_features

WORLD = 2
HANG = 120  # s: a rank still running after this is stuck in a collective (dumps its stack and exits)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def five_images(root: Path) -> ImageSet:
    """5 images (odd: the 2 ranks get 3 and 2) of 2 classes, of two sizes (two buckets), each different."""
    rng = np.random.default_rng(7)
    files = [write_png(root / name / f"{i}.png", rng.integers(0, 256, (36 if i % 2 else 44, 40, 3)))
             for i, name in enumerate(["a", "a", "a", "b", "b"])]
    return ImageSet(files, np.array([0, 0, 0, 1, 1]), ["a", "b"], str(root))


def run_ranks(target, *args) -> list:
    """`target(rank, *args)` in WORLD forked processes joined by torchrun's environment variables
    (what `distributed.setup` reads); returns what each rank returned, in rank order."""
    import torch.multiprocessing as mp

    out = Path(args[-1])
    # fork: the children inherit the imported modules (spawn would re-import torch and vggnet in each)
    mp.start_processes(_rank, args=(free_port(), target, args, str(out)), nprocs=WORLD, join=True,
                       start_method="fork")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _rank(rank: int, port: int, target, args: tuple, out: str) -> None:
    faulthandler.dump_traceback_later(HANG, exit=True, file=sys.__stderr__)  # (pytest may have replaced stderr)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.save(target(rank, *args), os.path.join(out, f"rank{rank}.pt"))


# --------------------------------------------------------------------------- compute and extract


def _describe(rank: int, ckpt: str, images: ImageSet, work: str) -> dict:
    import vggnet.checkpoint as checkpoint_module

    info = distributed.setup("cpu")
    assert info.world_size == WORLD and info.backend == "gloo"
    try:
        ex = DescriptorExtractor([ckpt], scales=[32, 48], device="cpu", batch_size=2)
        got = {"all": ex.compute(images), "some": ex.compute(images, [4, 0, 3]), "one": ex.compute(images, [2])}
        # extract: resumes the chunk an interrupted single process left; rank 0 alone writes
        computed, writes = [], []
        chunk, write = DescriptorExtractor._chunk, checkpoint_module.atomic_write

        def counting_chunk(self, imgs, rows, **kw):
            computed.append(rows[0])
            return chunk(self, imgs, rows, **kw)

        def recording_write(path, fn):
            writes.append(Path(path).name)
            return write(path, fn)

        DescriptorExtractor._chunk = counting_chunk
        checkpoint_module.atomic_write = recording_write
        feats = ex.extract(images, Path(work) / "resumed.safetensors", chunk_size=2)
        got.update(computed=list(computed), writes=list(writes), extracted=torch.from_numpy(feats.descriptors))
        again = ex.extract(images, Path(work) / "resumed.safetensors", chunk_size=2)  # complete: reused
        got.update(computed_again=computed[len(got["computed"]):], writes_again=writes[len(got["writes"]):],
                   reused=torch.from_numpy(again.descriptors), reused_paths=again.images.paths)
        # an unreadable image on one rank is an error on every rank (no rank left waiting)
        broken = ImageSet(images.paths[:1] + [str(Path(work) / "broken.png")] + images.paths[2:], images.labels,
                          images.classes)
        try:
            ex.compute(broken)
        except DataError as exc:
            got["unreadable"] = str(exc)
        # ranks that list other images are told so instead of gathering a mixture
        try:
            ex.compute(images if rank == 0 else images.subset([0, 1, 2, 4, 3]))
        except UserError as exc:
            got["mismatch"] = str(exc)
        return got
    finally:
        distributed.cleanup()


def test_two_ranks_compute_and_extract_what_one_process_does(tmp_path):
    skip_without_gloo()
    ckpt = str(random_ckpt(tmp_path / "a.pt"))
    images = five_images(tmp_path / "images")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    ex = DescriptorExtractor([ckpt], scales=[32, 48], device="cpu", batch_size=2)
    single = ex.compute(images)
    # the reference itself in order: each image described alone
    torch.testing.assert_close(torch.cat([ex.compute(images, [i]) for i in range(5)]), single, rtol=1e-5, atol=1e-6)
    whole = tmp_path / "whole.safetensors"
    ex.extract(images, whole, chunk_size=2)
    # a single process interrupted after its first chunk of 2 (chunks: rows 0-1, 2-3, 4)
    real = DescriptorExtractor._chunk
    calls = []

    def dying(self, imgs, rows, **kw):
        calls.append(rows[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, imgs, rows, **kw)

    DescriptorExtractor._chunk = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            ex.extract(images, tmp_path / "resumed.safetensors", chunk_size=2)
    finally:
        DescriptorExtractor._chunk = real
    assert len(list(tmp_path.glob("resumed.safetensors.parts-*/chunk_*"))) == 1

    ranks = run_ranks(_describe, ckpt, images, str(tmp_path))
    tight = dict(rtol=1e-5, atol=1e-6)  # the batches differ (3 + 2 images, not 5): equal to float tolerance
    for rank, got in enumerate(ranks):
        torch.testing.assert_close(got["all"], single, **tight)          # every rank: all 5 rows, in order
        torch.testing.assert_close(got["some"], single[[4, 0, 3]], **tight)
        torch.testing.assert_close(got["one"], single[[2]], **tight)      # rank 1's shard is empty
        assert got["computed"] == [2, 4] and got["computed_again"] == []  # ranks agree: chunk 0 reused
        torch.testing.assert_close(got["extracted"], single, **tight)
        assert torch.equal(got["reused"], ranks[0]["extracted"]) and got["reused_paths"] == images.paths
        assert "broken.png" in got["unreadable"]
        assert "do not describe the same images" in got["mismatch"] and "rank 1: 5 images" in got["mismatch"]
    assert ranks[0]["unreadable"].startswith("(rank 1)")  # rank 1 read it; rank 0 names the rank
    assert ranks[0]["writes"] == ["chunk_000001.safetensors", "chunk_000002.safetensors", "resumed.safetensors"]
    assert ranks[1]["writes"] == [] and ranks[0]["writes_again"] == ranks[1]["writes_again"] == []
    a, b = load_features(whole), load_features(tmp_path / "resumed.safetensors")
    np.testing.assert_allclose(b.descriptors, a.descriptors, **tight)
    assert (b.key, b.images.paths, b.settings) == (a.key, a.images.paths, a.settings)
    assert not list(tmp_path.glob("*.parts-*")) and not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------- vgg features under torchrun


@pytest.mark.slow  # about 10 s: two interpreters start and import torch (still run in CI: `make test`)
def test_torchrun_features_writes_the_single_process_file_once(tmp_path, capsys):
    """`torchrun --nproc-per-node=2 -m vggnet.cli features` (gloo): the descriptor file of one process, one
    line of output, and nothing else left in the output folder."""
    skip_without_gloo()
    ckpt = str(random_ckpt(tmp_path / "a.pt"))
    five_images(tmp_path / "data")
    args = [ckpt, "--data", str(tmp_path / "data"), "--test-scales", "32,48", "--chunk-size", "2", "--workers", "0",
            "--device", "cpu", "--amp", "off"]
    single = tmp_path / "single" / "f.safetensors"
    assert main(["features", *args, "--out", str(single)]) == 0
    capsys.readouterr()
    env = torchrun_env()
    src = str(Path(vggnet.__file__).resolve().parents[1])  # the children import this very vggnet
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = tmp_path / "dist" / "f.safetensors"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}",
                           "-m", "vggnet.cli", "features", *args, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=HANG)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("5 descriptors of 32 dimensions") == 1 and "(2 processes)" in proc.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.safetensors"]  # no chunks, no temporary files
    a, b = load_features(single), load_features(out)
    np.testing.assert_allclose(b.descriptors, a.descriptors, rtol=1e-5, atol=1e-6)
    assert np.array_equal(b.images.labels, a.images.labels)
    assert (b.key, b.images.paths, b.images.classes, b.settings) == (a.key, a.images.paths, a.images.classes,
                                                                      a.settings)
    print(f"torchrun vgg features: {seconds:.1f} s")


# --------------------------------------------------------------------------- vgg transfer


def _transfer_cli(rank: int, argv: list[str], work: str) -> dict:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(argv)
    return {"status": status, "stdout": stdout.getvalue(), "initialized": torch.distributed.is_initialized()}


def test_two_rank_transfer_fits_once_on_rank_0(tmp_path, capsys):
    """`vgg transfer` in 2 processes: the descriptors shared, the SVMs fitted and the files written by rank 0
    alone, the same results as one process; every rank leaves the process group."""
    skip_without_gloo()
    ckpt = str(random_ckpt(tmp_path / "a.pt"))
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        for i in range(5):
            write_png(tmp_path / "data" / name / f"{i}.png", rng.integers(0, 256, (36, 40 + 4 * (i % 2), 3)))
    argv = ["transfer", ckpt, "--data", str(tmp_path / "data"), "--train-per-class", "3", "--splits", "2",
            "--test-scales", "32", "--C-grid", "0.1,1", "--folds", "2", "--workers", "0", "--device", "cpu",
            "--amp", "off", "--json"]
    # the ranks first: forking after the SVMs' thread pools have run is asking for a held lock
    ranks = run_ranks(_transfer_cli, [*argv, "--output-dir", str(tmp_path / "dist")], str(tmp_path))
    assert main([*argv, "--output-dir", str(tmp_path / "single")]) == 0
    single = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in ranks] == [0, 0] and not any(r["initialized"] for r in ranks)
    assert ranks[1]["stdout"] == ""
    report = json.loads(ranks[0]["stdout"])
    for key in ("accuracy", "accuracy_std", "mean_class_accuracy", "C"):
        assert report[key] == pytest.approx(single[key]), key
    out = tmp_path / "dist"
    assert sorted(p.name for p in out.iterdir()) == ["classifier.safetensors", "features", "results.json"]
    assert [p.name.split("-")[0] for p in (out / "features").iterdir()] == ["all"]
    assert json.loads((out / "results.json").read_text())["accuracy"] == report["accuracy"]
