"""Synchronous data-parallel training (§3.3) with PyTorch DDP under `torchrun`.

The paper splits each batch across GPUs, computes the gradients in parallel and
averages them, so the result is "exactly the same as when training on a single
GPU". DistributedDataParallel does the same: every process holds the full
model, sees a disjoint part of the global batch, and the gradients are averaged
by an all-reduce during the backward pass.

One process (no torchrun: CPU, or the first GPU):

    vgg train --config-file configs/quickstart.yaml

One machine, 8 GPUs (or 2 CPU processes with gloo, e.g. to test):

    torchrun --standalone --nproc-per-node=8 -m vggnet.cli train --config-file configs/s256.yaml

Two machines with 8 GPUs each (run on both; MASTER is the first machine's address):

    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=MASTER:29500 \\
        --rdzv-id=vgg-s256 -m vggnet.cli train --config-file configs/s256.yaml

`--batch-size` is always the global batch (256 in the paper): with W processes
and micro-batch m, gradients are accumulated over batch / (m * W) steps.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT); `setup`
reads them, binds each process to its GPU, and joins the process group: NCCL on
GPUs, gloo on CPUs. Without them it is a single process and no process group is
created. Only rank 0 writes checkpoints and logs and draws progress bars.

Resuming (`--resume auto`) is decided on rank 0 and every rank loads the file it
chose, so a multi-node run that is to be resumed needs its `--output-dir` on a
filesystem every node shares (NFS, Lustre, ...); when another node cannot read
the checkpoint, every rank stops with an error that says so.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from vggnet.errors import UserError

T = TypeVar("T")

__all__ = [
    "DistInfo",
    "rank_world",
    "gather_shards",
    "agree",
    "on_main",
    "setup",
    "cleanup",
    "process_group",
    "wrap_ddp",
    "is_distributed",
    "barrier",
    "all_reduce_sum",
    "all_reduce_max",
    "broadcast_object",
    "broadcast_tensor",
    "all_gather_object",
    "average_buffers",
    "ResumableDistributedSampler",
    "steps_per_epoch",
    "accumulation_steps",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its global rank, the number of processes, its
    index on its machine, and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def _resolve_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    name = "auto" if device is None else str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        # each process on its own GPU of its machine
        name = f"cuda:{local_rank}"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s) "
                            f"(process with LOCAL_RANK={local_rank})")
    return dev


def setup(device: str | torch.device | None = "auto") -> DistInfo:
    """Read the torchrun environment, pick this process's device and join the process group.

    Single process (WORLD_SIZE unset or 1): no process group, device as asked
    ("auto": the first GPU if any, else the CPU). Under torchrun: GPU LOCAL_RANK
    with NCCL, or the CPU with gloo. Calling it again returns the same answer.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent (expected 0 <= RANK < WORLD_SIZE)")
    dev = _resolve_device(device, local_rank)
    if world == 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(0, 1, 0, dev, None)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://"}
        if backend == "nccl":
            kwargs["device_id"] = dev  # bind the communicator to this GPU at once
        dist.init_process_group(**kwargs)
    return DistInfo(rank, world, local_rank, dev, dist.get_backend())


def cleanup() -> None:
    """Leave the process group (if any); every process should call it at the end."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str | torch.device | None = "auto") -> Iterator[DistInfo]:
    """`setup` for the body of a command, and `cleanup` after it, whatever happens; a group the caller
    had already joined is left alone. Yields this process's `DistInfo`."""
    joined = not (dist.is_available() and dist.is_initialized())
    info = setup(device)
    try:
        yield info
    finally:
        if joined and info.distributed:
            cleanup()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel around `model` when there are several processes; `model` itself otherwise.

    DDP broadcasts rank 0's parameters at construction, so every process starts
    from the same weights, and averages the gradients in the backward pass.
    """
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    # Every parameter is used in every step (no unused branches): the cheap default.
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float] | torch.Tensor) -> list[float]:
    """Element-wise sum over all processes (float64); the values themselves in a single process."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if is_distributed():
        t = t.to(_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_reduce_max(values: Sequence[float] | torch.Tensor) -> list[float]:
    """Element-wise maximum over all processes (float64)."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if is_distributed():
        t = t.to(_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every process (any picklable object)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensor(tensor: torch.Tensor | None, shape: Sequence[int], dtype: torch.dtype = torch.float32,
                     src: int = 0) -> torch.Tensor:
    """Rank `src`'s CPU `tensor` on every process, as a CPU tensor.

    The other processes pass None (or anything: it is ignored) and the `shape`
    and `dtype` they expect, so that no pickling is involved: rank 0 can share a
    large array it read from a file the others may not see. `tensor` itself in
    a single process.
    """
    if not is_distributed():
        assert tensor is not None
        return tensor
    if math.prod(shape) == 0:  # every process knows the shape: nothing to send
        return torch.empty(tuple(shape), dtype=dtype)
    device = _comm_device()
    if dist.get_rank() == src:
        assert tensor is not None and tuple(tensor.shape) == tuple(shape), (tuple(tensor.shape), tuple(shape))
        buf = tensor.to(device=device, dtype=dtype).contiguous()
    else:
        buf = torch.empty(tuple(shape), dtype=dtype, device=device)
    dist.broadcast(buf, src=src)
    return buf.cpu() if dist.get_rank() != src else tensor.to(dtype)


def all_gather_object(obj: Any) -> list[Any]:
    """`[obj of rank 0, obj of rank 1, ...]` on every process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class ResumableDistributedSampler(DistributedSampler):
    """A `DistributedSampler` over whole global batches that can start mid-epoch.

    Each epoch is one permutation of the dataset, drawn from (seed, epoch) alone
    (`set_epoch`), cut to a whole number of global batches of `global_batch`
    images (the last incomplete batch is dropped, so every optimizer step sees
    exactly the batch the paper specifies). Rank r takes positions r, r+W,
    r+2W, ... of it. Because of that interleaving, the first k*global_batch
    positions of the permutation are exactly what all ranks together consume in
    the first k steps, whatever the number of processes: an epoch can be resumed
    after step k (`set_position(k * global_batch)`) by the same or a different
    number of processes, and the global batches are the same sets of images.
    """

    def __init__(self, dataset: Any, *, global_batch: int, num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int = 0) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if is_distributed() else 1
        if rank is None:
            rank = dist.get_rank() if is_distributed() else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=True)
        if global_batch < 1 or global_batch % num_replicas:
            raise ValueError(f"global_batch={global_batch} must be a positive multiple of the "
                             f"{num_replicas} processes")
        self.global_batch = int(global_batch)
        self.steps_per_epoch = len(dataset) // self.global_batch
        self.position = 0  # global samples of this epoch already consumed (a multiple of global_batch)

    def set_position(self, position: int) -> None:
        """Start the current epoch after `position` global samples (whole global batches)."""
        if position % self.global_batch or not 0 <= position <= self.steps_per_epoch * self.global_batch:
            raise ValueError(f"position {position} is not a whole number of global batches of "
                             f"{self.global_batch} within the epoch ({self.steps_per_epoch} batches)")
        self.position = int(position)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch `epoch`'s permutation and start it from the beginning."""
        super().set_epoch(epoch)
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "position": int(self.position), "seed": int(self.seed),
                "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed or int(state["global_batch"]) != self.global_batch:
            raise ValueError(f"sampler state for seed {state['seed']} and global batch {state['global_batch']}; "
                             f"this sampler has seed {self.seed} and global batch {self.global_batch}")
        self.set_epoch(int(state["epoch"]))
        self.set_position(int(state["position"]))

    def _order(self) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)  # DistributedSampler's convention
            return torch.randperm(n, generator=g).tolist()
        return list(range(n))

    def __iter__(self) -> Iterator[int]:
        order = self._order()[:self.steps_per_epoch * self.global_batch]
        # this rank's share of the positions not yet consumed
        return iter(order[self.position + self.rank::self.num_replicas])

    def __len__(self) -> int:
        remaining = self.steps_per_epoch * self.global_batch - self.position
        return remaining // self.num_replicas


def steps_per_epoch(num_samples: int, global_batch: int) -> int:
    """Optimizer steps in one epoch of `num_samples` images (incomplete last batch dropped)."""
    return num_samples // global_batch if global_batch > 0 else 0


def accumulation_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """How many micro-batches each process accumulates per optimizer step; exact, or an error naming the flags."""
    if global_batch < 1 or global_batch % world_size:
        raise UserError(f"--batch-size {global_batch} cannot be split evenly over {world_size} processes; "
                        f"use a multiple of {world_size}")
    per_process = global_batch // world_size
    if micro_batch < 1 or per_process % micro_batch:
        divisors = [d for d in range(1, per_process + 1) if per_process % d == 0]
        raise UserError(f"--batch-size {global_batch} over {world_size} process(es) is {per_process} images per "
                        f"process, not a multiple of --micro-batch-size {micro_batch}; choose one of "
                        f"{', '.join(map(str, divisors[-8:]))}")
    return per_process // micro_batch


def average_buffers(module: nn.Module) -> None:
    """Replace every floating-point buffer of `module` (BatchNorm's running mean and variance) by its
    average over the processes, as timm's `distribute_bn(reduce=True)` does: each rank updates its
    running statistics from its own micro-batches, and the net validated and saved must be one net.
    Integer buffers (`num_batches_tracked`) are the same on every rank. Collective; a no-op in one process."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    device = _comm_device()
    for buf in module.buffers():
        if buf.is_floating_point():
            t = buf.detach().to(device)
            dist.all_reduce(t)
            buf.copy_(t / world)


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_shards(local: torch.Tensor, total: int) -> torch.Tensor:
    """Reassemble `(total, ...)` on every rank from the rows each rank computed.

    Rank r holds the rows of global indices r, r+W, r+2W, ... (no padded
    duplicates). Shards differ in length by at most one; they are padded to equal
    length only for the all_gather and the padding is dropped again.
    """
    rank, world = rank_world()
    if world == 1:
        return local
    dev = _comm_device()
    longest = math.ceil(total / world)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[:local.shape[0]] = local.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        out[r::world] = part[:len(range(r, total, world))].cpu()
    return out


def agree(error: Exception | None) -> None:
    """Collective under torch.distributed: raise on every rank if `error` happened on any rank.

    The rank that failed raises its own exception (with its traceback); the others
    raise one of the same `UserError` class (else a RuntimeError) naming that rank.
    In a single process `error` is simply raised.
    """
    if not is_distributed():
        if error is not None:
            raise error
        return
    mine = None
    if error is not None:
        cls = type(error) if isinstance(error, UserError) else None
        mine = (cls, str(error) if cls else f"{type(error).__name__}: {error}")
    reports = all_gather_object(mine)
    if error is not None:
        raise error
    for rank, report in enumerate(reports):
        if report is not None:
            cls, message = report
            raise (cls or RuntimeError)(f"(rank {rank}) {message}")


def on_main(action: Callable[[], T]) -> T | None:
    """`action()` on rank 0 only (files are read and written there); None on the other ranks.

    Every rank must call it: a failure on rank 0 is raised on every rank (`agree`).
    """
    rank, _ = rank_world()
    result, error = None, None
    if rank == 0:
        try:
            result = action()
        except Exception as exc:
            error = exc
    agree(error)
    return result
