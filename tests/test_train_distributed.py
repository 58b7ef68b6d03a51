"""Synchronous data parallelism (§3.3): 2 CPU processes under torchrun (gloo), on one
node or as two nodes of one process each, train exactly what one process trains on
the same global batch; the sampler and the batch arithmetic behind it."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest
import torch
import torch.distributed as dist

from vggnet import distributed
from vggnet.distributed import ResumableDistributedSampler, accumulation_steps
from vggnet.errors import UserError
from vggnet import TrainConfig, train

# 32 images, global batch 16: 2 optimizer steps per epoch. Dropout off: each
# process draws its own dropout masks, so only without dropout are the two runs
# the same computation (the data — order, crops, flips, colour shifts — are
# seeded per image and identical). 9 validation images: an odd number, split 5/4.
SETTINGS = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[32, 48], synthetic_classes=4,
                synthetic_train=32, synthetic_val=9, synthetic_image_size=[32, 48], batch_size=16, epochs=1,
                dropout=0.0, val_batch_size=2, workers=0, stats_sample=16, device="cpu", checkpoint_every=1, keep=10,
                amp="off")


def flags(settings):
    args = []
    for key, value in settings.items():
        if isinstance(value, list):
            value = ":".join(map(str, value))
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_close_weights(a_path, b_path):
    a, b = load(a_path)["state_dict"], load(b_path)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def assert_same_training(reference, run, steps=(1, 2)):
    """The weights and the momentum after one step, and after a second (momentum) step, are the reference's
    (or after each of `steps`)."""
    for step in steps:
        assert_close_weights(reference / f"checkpoint_{step:08d}.pt", run / f"checkpoint_{step:08d}.pt")
        a, b = (load(d / f"checkpoint_{step:08d}.pt")["train"]["optimizer"]["state"] for d in (reference, run))
        for i in a:
            torch.testing.assert_close(a[i]["momentum_buffer"], b[i]["momentum_buffer"], rtol=1e-5, atol=1e-6)


def torchrun_env():
    """This environment without what an enclosing torchrun would have set (each launch starts afresh)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                "MASTER_PORT"):
        env.pop(key, None)
    for key in [k for k in env if k.startswith("TORCHELASTIC_")]:
        env.pop(key)
    return env


def skip_without_gloo():
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this PyTorch build")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The run under `torchrun --nproc-per-node=2` (gloo) with micro-batch 4:
    2 processes x 4 images x 2 accumulation steps per step of 16."""
    skip_without_gloo()
    out = tmp_path_factory.mktemp("ddp")
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    env = torchrun_env()
    proc = subprocess.run([*torchrun, "--standalone", "--nproc-per-node=2", "-m", "vggnet.cli", "train",
                           *flags({**SETTINGS, "micro_batch_size": 4, "output_dir": str(out)}), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    train(TrainConfig(**SETTINGS, output_dir=str(out), progress=False))
    return out


def test_two_processes_train_the_same_parameters_as_one(two_processes, one_process):
    ddp, stdout = two_processes
    assert "batch 16 = 2 processes x 4 images x 2 accumulation steps" in stdout
    assert "(gloo)" in stdout
    assert_same_training(one_process, ddp)
    # a checkpoint keeps every process's RNG state
    t = load(ddp / "last.pt")["train"]
    assert t["world_size"] == 2 and len(t["rng"]) == 2


def test_sharded_validation_equals_the_single_process_metric(two_processes, one_process):
    ddp, _ = two_processes
    (h2,), (h1,) = load(ddp / "last.pt")["train"]["history"], load(one_process / "last.pt")["train"]["history"]
    assert h2["val_top1_error"] == h1["val_top1_error"] and h2["val_top5_error"] == h1["val_top5_error"]
    assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-5)
    assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
    # 9 images, each counted once: the error is a multiple of 1/9
    assert (h1["val_top1_error"] * 9 / 100) == pytest.approx(round(h1["val_top1_error"] * 9 / 100))


def test_only_rank_0_writes(two_processes):
    ddp, stdout = two_processes
    log = (ddp / "train.log").read_text()
    assert log.count("vgg train: A") == 1 and stdout.count("vgg train: A") == 1
    # one of each file, no temporary files left behind (TensorBoard's folder when it is installed)
    # (and the run folder's lock file, .vggnet.lock, which stays: the lock itself ends with the process)
    assert sorted(p.name for p in ddp.iterdir() if p.name not in ("tensorboard", ".vggnet.lock")) == [
        "best.pt", "checkpoint_00000001.pt", "checkpoint_00000002.pt", "config.yaml", "curves.png", "last.pt",
        "metrics.csv", "train.log"]
    assert len((ddp / "metrics.csv").read_text().splitlines()) == 2  # header + 1 epoch, written once


def test_a_two_process_checkpoint_resumes_in_one_process(two_processes, one_process, tmp_path):
    """The global batches are the same whatever the number of processes: an epoch checkpointed by
    2 processes continues in 1 exactly as the 1-process run does."""
    ddp, _ = two_processes
    run = shutil.copytree(ddp, tmp_path / "run")
    train(TrainConfig(**{**SETTINGS, "epochs": 2}, output_dir=str(run), resume="auto", progress=False))
    straight = tmp_path / "straight"
    train(TrainConfig(**{**SETTINGS, "epochs": 2}, output_dir=str(straight), progress=False))
    assert_close_weights(straight / "last.pt", run / "last.pt")
    assert "written by 2 process(es), this run has 1" in (run / "train.log").read_text()


# --------------------------------------------------------------------------- two nodes
#
# The multi-node command of `vggnet.distributed`, with two torchrun agents on this machine standing for two
# machines of one process each. There every process has LOCAL_RANK=0 but RANK 0 or 1, unlike under
# --standalone (above), where LOCAL_RANK == RANK: code that asks LOCAL_RANK (or LOCAL_WORLD_SIZE) who writes,
# prints or how many processes there are gets it wrong here.
#
# Each "node" runs in its own working directory with the same relative --output-dir, as the same command on
# two machines with their own disks. That catches more than a shared directory would: any file a rank-1
# process writes (a duplicate checkpoint or log, even an empty output folder) lands in the rank-1 node's
# folder, which must stay empty, instead of being overwritten by rank 0's identical one; and a rank-1 process
# that reads something only rank 0 wrote fails instead of passing by luck. (The shared-directory layout is
# what the --standalone run above has.)
#
# --node-rank is not passed: torchrun only uses it for the static rendezvous. The c10d rendezvous numbers the
# nodes itself, in an order that is not the start order, so the test learns each node's RANK from torchrun's
# own prefix on every output line (--tee with --log-line-prefix-template "[rank${rank}]:"). Both agents' address
# is this machine's, so each would try to host the rendezvous store; is_host says which one does, as the
# address does on two machines: node 0 binds the port or fails at once (no waiting on a port taken by another
# program), node 1 connects to it.

NODE_OUTPUT = "run"  # --output-dir, relative to each node's working directory
RETRYABLE = re.compile(r"Rendezvous\w*Error|address already in use|EADDRINUSE", re.IGNORECASE)
RANK_PREFIX = re.compile(r"^\[rank(\d+)\]:", re.MULTILINE)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs, grace=20.0):
    """End the agents still running: SIGTERM (torchrun passes it on to its worker, and kills the worker after
    TORCH_ELASTIC_SHUTDOWN_TIMEOUT), then SIGKILL after `grace` seconds."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch_two_nodes(root, args, timeout=120.0, *, node0_files=None, ranks_by_start=False, stop_on_failure=True):
    """Start the two agents (rendezvous at a free port of 127.0.0.1) and wait for both; stop both at `timeout`,
    and, when `stop_on_failure`, as soon as one fails (otherwise each must end on its own: a run that fails on
    one rank must not leave the other waiting). `node0_files`: a folder copied into node 0's working directory
    first (what that machine's disk already holds). `ranks_by_start`: node 0 is rank 0 (the c10d rendezvous
    ranks the nodes by their address, then by process id: each agent is given its own --local-addr, in the order
    of the nodes); for runs that depend on which node holds which files.
    Returns (timed_out, [(working dir, exit status, stdout, stderr)] by node)."""
    port, run_id = free_port(), f"vggnet-test-{uuid.uuid4().hex[:12]}"
    env = {**torchrun_env(), "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "5"}
    procs, files, timed_out = [], [], False
    try:
        for n in range(2):
            (root / f"node{n}").mkdir(parents=True)
            if n == 0 and node0_files is not None:
                shutil.copytree(node0_files, root / "node0", dirs_exist_ok=True)
            out, err = open(root / f"node{n}.stdout", "w"), open(root / f"node{n}.stderr", "w")
            files += [out, err]
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                 "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}",
                 f"--rdzv-conf=join_timeout=60,is_host={n == 0}", "--tee=3",
                 *([f"--local-addr=127.0.0.{n + 1}"] if ranks_by_start else []),
                 f"--log-dir={root / f'torchrun_logs{n}'}", "--log-line-prefix-template=[rank${rank}]:",
                 "-m", "vggnet.cli", "train", *args],
                cwd=root / f"node{n}", env=env, stdout=out, stderr=err))
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and not (stop_on_failure and any(p.poll() for p in procs)):
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
    finally:
        stop(procs)  # nothing to do when both have finished; also on an interrupt of the test run
        for f in files:
            f.close()
    return timed_out, [(root / f"node{n}", p.returncode, (root / f"node{n}.stdout").read_text(),
                        (root / f"node{n}.stderr").read_text()) for n, p in enumerate(procs)]


def report_of(nodes, attempt):
    return "\n".join(f"--- node{n} (attempt {attempt}): exit {rc}\n{out[-3000:]}\n{err[-3000:]}"
                     for n, (_, rc, out, err) in enumerate(nodes))


def launch_two_nodes_retrying(root, args, *, succeed=True, timeout=120.0, **options):
    """`launch_two_nodes` in root/attempt1, and once more in root/attempt2 (on a new port) after a rendezvous
    failure (the port taken between choosing it and binding it): a failed run whose output shows one, and, for a
    run expected to fail (not `succeed`), in which no worker printed anything (never started). Returns
    (timed_out, nodes, report) of the last attempt."""
    for attempt in (1, 2):
        timed_out, nodes = launch_two_nodes(root / f"attempt{attempt}", args, timeout, **options)
        report = report_of(nodes, attempt)
        rendezvous_failed = (any(rc != 0 for _, rc, _, _ in nodes) and any(RETRYABLE.search(err) for *_, err in nodes)
                             and (succeed or not any(RANK_PREFIX.search(out + err) for *_, out, err in nodes)))
        if timed_out or attempt == 2 or not rendezvous_failed:
            return timed_out, nodes, report


def by_rank(nodes, report):
    """{rank: (working dir, stdout, stderr)}, the rank of each node read from torchrun's prefix on its lines;
    rank 0 printed (and so is identified), rank 1 need not have printed anything."""
    found = {}
    for node, _, out, err in nodes:
        ranks = {int(r) for r in RANK_PREFIX.findall(out + err)}
        assert len(ranks) <= 1, f"{node}: output of ranks {sorted(ranks)} from one process per node"
        found[ranks.pop() if ranks else None] = (node, out, err)
    assert 0 in found and len(found) == 2, f"ranks seen: {sorted(found, key=str)}\n{report}"
    return {0 if rank == 0 else 1: value for rank, value in found.items()}


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """The run under two torchrun agents, `--nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d`, one process per
    "node", the global batch of 16 as 2 processes x 8 images (the micro-batch follows from the world size).
    Progress bars are on, so that a rank-1 bar would show. A rendezvous failure (the port taken between
    choosing it and binding it) is retried once on a new port; anything else fails at once.
    Returns {rank: (working dir, stdout, stderr)}."""
    skip_without_gloo()
    root = tmp_path_factory.mktemp("two_nodes")
    args = flags({**SETTINGS, "output_dir": NODE_OUTPUT})
    timed_out, nodes, report = launch_two_nodes_retrying(root, args)
    assert not timed_out, f"the two agents did not finish in 120 s:\n{report}"
    if not all(rc == 0 for _, rc, _, _ in nodes):
        pytest.fail(f"a torchrun agent failed:\n{report}")
    return by_rank(nodes, report)


def test_two_nodes_train_the_same_parameters_as_one(two_nodes, one_process):
    node0, stdout, _ = two_nodes[0]
    run = node0 / NODE_OUTPUT
    # the world is the two nodes: 2 processes, each with half the global batch, over gloo
    assert "[rank0]:batch 16 = 2 processes x 8 images x 1 accumulation step;" in stdout
    assert "(gloo)" in stdout
    assert "# processes: 2," in (run / "config.yaml").read_text()
    assert "batch 16 = 2 processes x 8 images" in (run / "train.log").read_text()
    assert_same_training(one_process, run)
    t = load(run / "last.pt")["train"]
    assert t["world_size"] == 2 and len(t["rng"]) == 2  # both processes' RNG states, gathered across nodes
    (h2,), (h1,) = t["history"], load(one_process / "last.pt")["train"]["history"]
    assert h2["val_top1_error"] == h1["val_top1_error"] and h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-5)


def test_on_two_nodes_only_rank_0_writes_and_prints(two_nodes):
    """Both processes have LOCAL_RANK=0: only RANK 0 may write files, log or draw a progress bar. Each node has
    its own folder (its own disk), so anything rank 1 writes is seen there rather than hidden under rank 0's
    identical file in a shared folder."""
    (node0, out0, err0), (node1, out1, err1) = two_nodes[0], two_nodes[1]
    assert [p.name for p in node0.iterdir()] == [NODE_OUTPUT]
    files = (node0 / NODE_OUTPUT).iterdir()
    assert sorted(p.name for p in files if p.name not in ("tensorboard", ".vggnet.lock")) == [
        "best.pt", "checkpoint_00000001.pt", "checkpoint_00000002.pt", "config.yaml", "curves.png", "last.pt",
        "metrics.csv", "train.log"]
    assert len((node0 / NODE_OUTPUT / "metrics.csv").read_text().splitlines()) == 2
    assert (node0 / NODE_OUTPUT / "train.log").read_text().count("vgg train: A") == 1
    # the rank-1 machine: not even an empty output folder
    assert list(node1.iterdir()) == []
    # rank 0 logged once, with its one line per epoch (stderr is a pipe here, so no bar fragments);
    # rank 1 printed nothing of either
    assert out0.count("vgg train: A") == 1 and "epoch   1/1" in out0 and "%|" not in err0
    assert "[rank1]:" not in out1, out1
    assert "vgg train" not in out1 + err1
    assert "epoch 1/1" not in err1, err1


# Resuming on two nodes: which checkpoint to continue (or whether the folder already holds a run) is decided on
# rank 0, from its --output-dir, and every rank follows, including into an error. Node 0 is made rank 0 here and
# given a copy of the finished run above; node 1's disk is empty, as a second machine's would be. Each agent must
# end on its own (stop_on_failure=False): one rank stopping while the other waits at a collective would hang.


def file_states(folder):
    """Every file under `folder` (relative path: size, mtime in ns, bytes), but the lock file, which names the
    last process that held the folder."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".vggnet.lock"}


def fail_on_both_nodes(two_nodes, root, *extra, epochs=1):
    """Run `vgg train ... *extra` on two nodes of which node 0 (rank 0) holds the finished run; check that both
    agents exited non-zero on their own within the time limit and that nothing was written: node 0's folder is
    the finished run's, file for file (bytes and mtimes), node 1's is still empty. Returns (stdout + stderr)
    by rank."""
    skip_without_gloo()
    finished = two_nodes[0][0]
    before = file_states(finished / NODE_OUTPUT)
    args = [*flags({**SETTINGS, "epochs": epochs, "output_dir": NODE_OUTPUT}), "--no-progress", *extra]
    # a rank left waiting hangs forever; 120 s is far above the few seconds each agent needs, even on a
    # loaded 2-core CI machine (60 s was once exceeded there without any hang)
    timed_out, nodes, report = launch_two_nodes_retrying(root, args, succeed=False, timeout=120.0,
                                                         node0_files=finished, ranks_by_start=True,
                                                         stop_on_failure=False)
    assert not timed_out, f"the agents did not both end within 120 s (a rank left waiting):\n{report}"
    assert all(rc != 0 for _, rc, _, _ in nodes), report
    ranks = by_rank(nodes, report)
    (node0, out0, err0), (node1, out1, err1) = ranks[0], ranks[1]
    assert node0.name == "node0", f"node 1 became rank 0; the test needs node 0 (with the run) as rank 0\n{report}"
    assert [p.name for p in node0.iterdir()] == [NODE_OUTPUT]
    assert file_states(node0 / NODE_OUTPUT) == before, "the finished run's folder was changed"
    assert list(node1.iterdir()) == [], "rank 1 wrote to its node's disk"
    return out0 + err0, out1 + err1


def test_resume_on_nodes_with_separate_disks_stops_every_rank(two_nodes, tmp_path):
    """`--resume auto` (to train on for a second epoch) where only rank 0's disk holds the run: rank 1 cannot read
    the checkpoint rank 0 chose. Rather than rank 1 starting over while rank 0 continues (collectives out of
    step), every rank stops with an error that names the file and the shared filesystem a multi-node run
    needs."""
    text0, text1 = fail_on_both_nodes(two_nodes, tmp_path, "--resume", "auto", epochs=2)
    checkpoint = f"{NODE_OUTPUT}/checkpoint_00000002.pt"
    for text in (text0, text1):
        assert f"vgg train: error: rank 0 resumes from {checkpoint}, but not every process can read it" in text
        assert "a multi-node run needs its --output-dir on a filesystem that every node shares" in text
        assert f"rank 1: checkpoint {checkpoint} does not exist" in text
    assert "[rank1]:vgg train: error: rank 0 resumes from" in text1, text1


def test_fresh_run_into_a_folder_with_checkpoints_stops_every_rank(two_nodes, tmp_path):
    """No --resume, and rank 0's --output-dir already holds a run: the error is rank 0's, but every rank raises
    it (rank 1 saying where it comes from) instead of rank 1 waiting for rank 0 at a barrier."""
    text0, text1 = fail_on_both_nodes(two_nodes, tmp_path)
    message = f"--output-dir {NODE_OUTPUT} already holds checkpoints of a run (checkpoint_00000002.pt)"
    assert f"[rank0]:vgg train: error: {message}" in text0 and "(from rank 0)" not in text0, text0
    assert f"[rank1]:vgg train: error: (from rank 0) {message}" in text1, text1


def test_resume_on_two_nodes_with_a_shared_output_dir_continues_exactly(two_nodes, tmp_path):
    """The same `--resume auto` with the run on a filesystem both nodes share (the same absolute --output-dir):
    rank 1 loads the checkpoint rank 0 chose, and the second epoch ends where an uninterrupted 2-epoch run of one
    process does. (The old per-rank search passes this too: it guards the agreement's working path.)"""
    skip_without_gloo()
    shared = shutil.copytree(two_nodes[0][0] / NODE_OUTPUT, tmp_path / "shared")
    args = [*flags({**SETTINGS, "epochs": 2, "output_dir": str(shared)}), "--no-progress", "--resume", "auto"]
    timed_out, nodes, report = launch_two_nodes_retrying(tmp_path / "nodes", args)
    assert not timed_out and all(rc == 0 for _, rc, _, _ in nodes), report
    (node0, out0, _), (node1, _, _) = (by_rank(nodes, report)[r] for r in (0, 1))
    assert f"[rank0]:resuming {shared / 'checkpoint_00000002.pt'}: epoch 2, step 0/2 (global step 2)" in out0, out0
    assert list(node0.iterdir()) == list(node1.iterdir()) == []  # everything went to the shared folder
    straight = tmp_path / "straight"
    train(TrainConfig(**{**SETTINGS, "epochs": 2}, output_dir=str(straight), progress=False))
    assert_same_training(straight, shared, steps=(3, 4))
    t = load(shared / "last.pt")["train"]
    assert len(t["history"]) == 2 and t["world_size"] == 2 and len(t["rng"]) == 2


# --------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sampler_gives_the_same_global_batches_for_any_number_of_processes(world):
    data, batch = range(50), 8  # 6 whole batches, 2 images dropped
    single = ResumableDistributedSampler(data, global_batch=batch, num_replicas=1, rank=0, seed=3)
    single.set_epoch(5)
    order = list(single)
    assert len(order) == 48 == len(set(order))
    ranks = []
    for r in range(world):
        s = ResumableDistributedSampler(data, global_batch=batch, num_replicas=world, rank=r, seed=3)
        s.set_epoch(5)
        ranks.append(list(s))
        assert len(s) == 48 // world
    per_step = batch // world
    for step in range(6):
        together = [i for r in ranks for i in r[step * per_step:(step + 1) * per_step]]
        assert sorted(together) == sorted(order[step * batch:(step + 1) * batch])  # disjoint shards of one batch
    # resuming after 2 steps: the rest of the epoch, rank by rank
    for r in range(world):
        s = ResumableDistributedSampler(data, global_batch=batch, num_replicas=world, rank=r, seed=3)
        s.load_state_dict({"epoch": 5, "position": 16, "seed": 3, "global_batch": 8})
        assert list(s) == ranks[r][2 * per_step:]


def test_sampler_epochs_differ_and_bad_positions_are_refused():
    s = ResumableDistributedSampler(range(32), global_batch=8, num_replicas=1, rank=0, seed=0)
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first and sorted(list(s)) == sorted(first)
    with pytest.raises(ValueError, match="whole number of global batches"):
        s.set_position(12)
    with pytest.raises(ValueError, match="global batch 16"):
        s.load_state_dict({"epoch": 0, "position": 0, "seed": 0, "global_batch": 16})
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        ResumableDistributedSampler(range(32), global_batch=8, num_replicas=3, rank=0)


@pytest.mark.parametrize("batch,micro,world,steps", [(256, 256, 1, 1), (256, 32, 1, 8), (256, 32, 4, 2),
                                                     (256, 64, 4, 1), (16, 4, 2, 2)])
def test_accumulation_steps(batch, micro, world, steps):
    assert accumulation_steps(batch, micro, world) == steps


@pytest.mark.parametrize("batch,micro,world,flag", [(256, 48, 1, "--micro-batch-size 48"),
                                                    (256, 64, 3, "over 3 processes"),
                                                    (256, 128, 4, "--micro-batch-size 128")])
def test_accumulation_steps_that_do_not_divide_name_the_flags(batch, micro, world, flag):
    with pytest.raises(UserError, match="--batch-size 256") as info:
        accumulation_steps(batch, micro, world)
    assert flag in str(info.value)


def test_setup_without_torchrun_is_one_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = distributed.setup("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed, info.backend) == (0, 1, True, False, None)
    assert distributed.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match="RANK=2 and WORLD_SIZE=2"):
        distributed.setup("cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(UserError, match="RANK='one'"):
        distributed.setup("cpu")
