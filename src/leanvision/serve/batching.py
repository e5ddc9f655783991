"""Dynamic batching: concurrent requests' images are gathered into one runtime call.

One asyncio worker takes the first queued image, then everything already queued, and waits for more (up to
`max_wait_ms` after the first) only while other requests are still arriving: `incoming` counts requests that were
accepted but have not queued their images yet (body being read or decoded). A lone request therefore never waits
for the window: nothing else is queued or arriving, so it runs at once. The runtime call runs in one dedicated
thread (ONNX Runtime and torch release the GIL), so while a batch computes, the event loop keeps accepting and
decoding the next requests, which form the next batch ("continuous" batching).

A lone image (nothing else queued or arriving) is computed on the event loop itself when the model's batch-1 call
is fast (`inline_max_ms`, measured at warm-up): a hand-off to the model thread and back costs more than such a
call (two thread wake-ups and GIL transfers), and with nothing else to serve the loop has nothing to overlap.

A failed runtime call is retried image by image, so one image that breaks the model fails alone and every other
request in that batch still gets its answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class BatcherClosed(RuntimeError):
    """`submit` was called while the batcher is not running (starting up or shutting down)."""


@dataclass
class Item:
    """One image waiting for the model: uint8 (C, H, W) and the future its request awaits."""

    image: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Answer:
    """What the batcher hands back for one image."""

    probs: np.ndarray  # (num_classes,) float32 softmax probabilities
    batch_size: int  # images in the runtime call that computed it
    model_ms: float  # wall time of that runtime call
    queue_ms: float  # from queued to the start of that runtime call


class Batcher:
    """Gathers images into runtime calls of at most `max_batch_size`, waiting at most `max_wait_ms` for more.

    `infer(uint8 (N, C, H, W)) -> probabilities (N, K)` runs in a dedicated thread. `observe(batch_size, model_s,
    queue_s_list)` is called after every runtime call (metrics). Use `start()` inside the running loop, `submit()`
    per image, `close()` to drain: queued images are still computed, new ones are refused.
    """

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_batch_size: int = 64, max_wait_ms: float = 2.0,
                 observe: Callable[[int, float, list[float]], None] | None = None):
        if max_batch_size < 1:
            raise ValueError(f"Invalid max_batch_size={max_batch_size}: expected an integer >= 1.")
        if max_wait_ms < 0:
            raise ValueError(f"Invalid max_wait_ms={max_wait_ms}: expected a number >= 0.")
        self.infer, self.max_batch_size, self.max_wait_s = infer, max_batch_size, max_wait_ms / 1e3
        self.observe = observe
        self.inline = False  # compute lone images on the event loop (set when batch-1 calls are fast)
        self.incoming = 0  # requests accepted whose images are not queued yet
        self.queue: asyncio.Queue[Item | None] | None = None
        self.task: asyncio.Task | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.closing = False
        self.batches = 0

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done() and not self.closing

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leanvision-serve-model")
        self.closing = False
        self.task = asyncio.get_running_loop().create_task(self._work(), name="leanvision-batcher")

    async def close(self) -> None:
        """Stop taking images; finish every queued one; stop the worker and its thread."""
        if self.task is None:
            return
        self.closing = True
        assert self.queue is not None
        self.queue.put_nowait(None)  # sentinel after everything already queued
        await self.task
        self.task = None
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None

    def submit(self, image: np.ndarray) -> asyncio.Future:
        """Queue one uint8 (C, H, W) image; the future resolves to an `Answer` (or raises the runtime's error)."""
        if not self.running:
            raise BatcherClosed("the batcher is not running (server starting or shutting down)")
        assert self.queue is not None
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Item(image, future))
        return future

    async def _work(self) -> None:
        assert self.queue is not None
        queue, stop = self.queue, False
        while not stop:
            first = await queue.get()
            if first is None:
                break
            batch = [first]
            deadline = first.queued_at + self.max_wait_s
            while len(batch) < self.max_batch_size:
                if not queue.empty():
                    item = queue.get_nowait()
                elif self.incoming > 0 and self.max_wait_s > 0:  # more requests are on their way: wait for them
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                else:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            await self._run(batch)

    async def _run(self, batch: list[Item]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        images = np.stack([item.image for item in batch])
        try:
            if self.inline and len(batch) == 1 and self.incoming == 0 and self.queue.empty():
                probs = self.infer(images)  # a lone image: no hand-off to the model thread (see the module doc)
            else:
                probs = await loop.run_in_executor(self.executor, self.infer, images)
            results: list[Any] = list(probs)
        except Exception as batch_error:  # noqa: BLE001 - retried one by one so only the image that fails, fails
            results = []
            for item in batch:
                try:
                    results.append((await loop.run_in_executor(self.executor, self.infer, item.image[None]))[0])
                except Exception as e:  # noqa: BLE001
                    results.append(e if len(batch) > 1 else batch_error)
        model_s = time.perf_counter() - started
        self.batches += 1
        queue_s = [started - item.queued_at for item in batch]
        for item, result, waited in zip(batch, results, queue_s):
            if item.future.done():  # the request was cancelled (client gone)
                continue
            if isinstance(result, Exception):
                item.future.set_exception(result)
            else:
                item.future.set_result(Answer(result, len(batch), model_s * 1e3, waited * 1e3))
        if self.observe is not None:
            self.observe(len(batch), model_s, queue_s)
