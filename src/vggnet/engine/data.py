"""Training data: datasets, the seeded augmentation, the loader (§3.1's input pipeline around the task's
transform).

Reproducibility: the data order comes from (seed, epoch) alone
(`vggnet.distributed.ResumableDistributedSampler`) and each image's
augmentation from (seed, epoch, image index) alone, whatever the number of
loader workers or processes — so a resumed run sees exactly the images and
crops the straight run would have seen.
"""

from __future__ import annotations

import signal
import warnings
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vggnet import distributed
from vggnet.data.datasets import BadImageWarning
from vggnet.engine.config import TrainConfig

__all__ = ["SeededAugmentation", "SkippedImage", "EpochTagged", "worker_init", "build_datasets", "close_loader",
           "make_train_loader"]


class SeededAugmentation(Dataset):
    """Items `(index, epoch)` -> `dataset[index]` with the augmentation drawn from
    (seed, epoch, index): the same crop, flip, scale and colour shift for an image
    in an epoch whatever the worker, process count or resume point."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        item_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1, np.uint64)[0])
        # fork_rng: the process's own RNG (dropout, in the main process) is left as it was.
        # Only the CPU generator is seeded (the transforms draw from it): torch.manual_seed
        # would also reseed the CUDA generators, which fork_rng(devices=[]) does not restore
        # (with --workers 0 it would reset the GPU dropout stream at every image), and costs
        # a stack capture per call while CUDA is not initialised.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.default_generator.manual_seed(item_seed)
            item = self.dataset[index]
        bad = [w for w in caught if issubclass(w.category, BadImageWarning)]
        for w in caught:  # anything else is warned as usual
            if w not in bad:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if item is None:
            # a file the dataset could not read: its name and reason travel with the batch to the
            # main process, which logs it once (a warning in a loader worker may be silenced or lost)
            return SkippedImage(str(bad[-1].message) if bad else f"skipping image {index}: unreadable")
        return item


class SkippedImage(NamedTuple):
    """A training item whose file could not be read: what to tell the user."""

    message: str


def collate_naming_skips(collate: Callable[[list[Any]], Any]) -> Callable[[list[Any]], tuple[Any, list[str]]]:
    """`collate` over the readable items (a `SkippedImage` counts as a bad file), and the messages of the
    skipped ones: `(batch, [message, ...])`."""
    def collate_fn(items: list[Any]) -> tuple[Any, list[str]]:
        messages = [it.message for it in items if isinstance(it, SkippedImage)]
        return collate([None if isinstance(it, SkippedImage) else it for it in items]), messages
    return collate_fn


class EpochTagged(Sampler):
    """Yields `(index, epoch)` from a `ResumableDistributedSampler`, for `_SeededAugmentation`."""

    def __init__(self, sampler: distributed.ResumableDistributedSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((i, epoch) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def worker_init(_: int) -> None:
    # The main process turns SIGINT/SIGTERM into "finish the step, checkpoint, stop"
    # and needs its loader workers alive for the rest of the step (Ctrl-C and
    # SLURM signal every process). The training loop shuts its workers down itself
    # (`del` of the iterator in a `finally`), and they exit by themselves if the
    # main process dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_datasets(cfg: TrainConfig, *, boxes: bool = False) -> tuple[Any, Any, str]:
    """(train, val, description); datasets without transforms (set later), with boxes if asked
    (items `(image, label, boxes)`: a task that regresses boxes)."""
    if cfg.data is None and cfg.train_dir is None:
        from vggnet.data.synthetic import SyntheticShapes

        size = tuple(cfg.synthetic_image_size)
        train = SyntheticShapes(cfg.synthetic_train, classes=cfg.synthetic_classes, split="train", seed=cfg.seed,
                                image_size=size, boxes=boxes)
        val = SyntheticShapes(cfg.synthetic_val, classes=cfg.synthetic_classes, split="val", seed=cfg.seed,
                              image_size=size, boxes=boxes)
        return train, val, (f"synthetic shapes in memory ({cfg.synthetic_classes} classes, "
                            f"images {size[0]}-{size[1]} px)")
    from vggnet.data.datasets import build_dataset

    train_dir = cfg.train_dir or cfg.data
    val_dir = cfg.val_dir or cfg.data
    train = build_dataset(train_dir, None, split="train", strict=False, boxes=boxes or None)
    # Per-epoch validation skips (and counts out) an unreadable file rather than ending a
    # long run over it; `vgg eval` is strict.
    val = build_dataset(val_dir, None, split="val", classes=train.classes, labels_file=cfg.val_labels, strict=False,
                        boxes=boxes or None)
    return train, val, f"{train.root} and {val.root}"


def make_train_loader(dataset: Dataset, sampler: distributed.ResumableDistributedSampler, *, seed: int,
                      micro_batch: int, workers: int, collate: Callable[[list[Any]], Any],
                      pin_memory: bool) -> DataLoader:
    """The training loader: augmentation seeded per (seed, epoch, image), the sampler's order.

    Not `vggnet.data.make_loader`: that keeps workers alive across epochs
    (persistent), and training needs workers that are shut down by the loop
    itself (see `worker_init`) and a generator of its own: a loader without one
    draws its base seed from the global torch RNG at every iter(), which would
    shift the dropout stream between a straight and a resumed run.
    """
    return DataLoader(
        SeededAugmentation(dataset, seed), batch_size=micro_batch, sampler=EpochTagged(sampler),
        num_workers=workers, collate_fn=collate_naming_skips(collate), pin_memory=pin_memory,
        worker_init_fn=worker_init,
        generator=torch.Generator().manual_seed(seed), prefetch_factor=4 if workers > 0 else None)


def close_loader(batches: Any) -> None:
    """Shut the worker processes of a loader iterator down now (a no-op without workers).

    Dropping the iterator is not enough when an exception passes: its traceback
    keeps the iterator alive until the interpreter exits, and there the workers
    (which ignore SIGTERM, see `worker_init`) would block multiprocessing's final
    join forever. torch's iterator shuts down by this method in its own `__del__`.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
