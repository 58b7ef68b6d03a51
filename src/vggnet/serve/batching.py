"""Dynamic batching: requests that arrive together run as one forward pass.

A request is admitted only while fewer than `max_queue` requests are waiting or running (else `QueueFull`,
which the app answers with 503 and Retry-After), so memory stays bounded under any load. One collector task
takes the first waiting request, waits up to `max_wait_ms` for more (at most `max_batch_size` in all), and
hands the batch to a single worker thread, which runs `run_batch` (the forward pass) while the event loop
keeps accepting. A request that gave up (timed out) before its batch started is dropped from it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["QueueFull", "Job", "Batcher"]


class QueueFull(Exception):
    """The batcher holds `max_queue` requests already; try again later."""


@dataclass
class Job:
    """One request's work: its input, and the future its answer arrives on."""

    payload: Any
    future: asyncio.Future
    admitted: float = field(default_factory=time.perf_counter)


class Batcher:
    """`await batcher.submit(payload)` -> `run_batch([payload, ...])[i]`, batched with its neighbours in time.

    `run_batch(payloads) -> results` runs on one worker thread (PyTorch uses its own threads inside it);
    `on_batch(size)`, `on_depth(depth)` report to metrics.
    """

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *, max_batch_size: int = 16,
                 max_wait_ms: float = 5.0, max_queue: int = 64,
                 on_batch: Callable[[int], None] | None = None, on_depth: Callable[[int], None] | None = None,
                 on_drop: Callable[[int], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"--max-batch-size must be >= 1, got {max_batch_size}")
        if max_queue < 1:
            raise ValueError(f"--max-queue must be >= 1, got {max_queue}")
        self.run_batch, self.max_batch_size, self.max_wait = run_batch, max_batch_size, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch, self.on_depth, self.on_drop = on_batch, on_depth, on_drop
        self.pending = 0                      # admitted and not yet answered: what max_queue bounds
        self.queue: asyncio.Queue[Job] | None = None
        self.task: asyncio.Task | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vgg-serve-net")

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self.collect())

    async def stop(self) -> None:
        """Finish the queued work, then stop the collector and the worker thread."""
        if self.task is not None:
            while self.pending:
                await asyncio.sleep(0.01)
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    def depth(self) -> int:
        return self.pending

    async def submit(self, payload: Any, timeout: float | None = None) -> Any:
        """The result for `payload`; `QueueFull` when the batcher is full, `asyncio.TimeoutError` after
        `timeout` seconds (the job is then dropped if its batch has not started)."""
        if self.queue is None:
            raise RuntimeError("Batcher.start() was not called")
        if self.pending >= self.max_queue:
            raise QueueFull(f"{self.pending} requests waiting or running (--max-queue {self.max_queue})")
        job = Job(payload, asyncio.get_running_loop().create_future())
        self.pending += 1
        self.report_depth()
        self.queue.put_nowait(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        finally:
            if not job.future.done():
                job.future.cancel()  # given up: a batch that has not started skips it
            self.pending -= 1
            self.report_depth()

    def report_depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self.pending)

    async def collect(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(jobs) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [j for j in jobs if not j.future.done()]
            if self.on_drop is not None and len(live) < len(jobs):
                self.on_drop(len(jobs) - len(live))
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [j.payload for j in live])
            except Exception as exc:  # noqa: BLE001 - the requests of this batch get the error, the server lives
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            for j, r in zip(live, results):
                if not j.future.done():
                    j.future.set_result(r)
