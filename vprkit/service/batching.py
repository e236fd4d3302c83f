"""Dynamic batching: requests arriving within a small wait budget share one forward pass.

Requests put their preprocessed image tensor on a queue; one worker thread takes the first, waits up
to `wait_s` for more (at most `max_batch`), runs `fn` once per group of equal-sized tensors and hands
each request its row. Under load the batches fill up and throughput approaches offline extraction;
alone, a request waits at most `wait_s` longer.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable

import numpy as np
import torch


class Batcher:
    """Run `fn(stacked tensors) -> (B, D) array` on batches gathered from concurrent `submit` calls."""

    def __init__(self, fn: Callable[[torch.Tensor], np.ndarray], max_batch: int = 16, wait_s: float = 0.005,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.fn, self.max_batch, self.wait_s = fn, max_batch, wait_s
        self.on_batch = on_batch or (lambda n: None)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="vprkit-batcher", daemon=True)
        self._thread.start()

    async def submit(self, x: torch.Tensor) -> np.ndarray:
        """The descriptor of one preprocessed image (C, H, W)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put((x, fut, loop))
        return await fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _gather(self, first) -> list:
        items, deadline = [first], time.monotonic() + self.wait_s
        while len(items) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            items.append(item)
        return items

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            items = [it for it in self._gather(first) if not it[1].cancelled()]
            groups: dict[tuple, list] = {}
            for it in items:
                groups.setdefault(tuple(it[0].shape), []).append(it)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list) -> None:
        try:
            out = self.fn(torch.stack([x for x, _, _ in group]))
            self.on_batch(len(group))
            results = [(fut, loop, row, None) for (_, fut, loop), row in zip(group, out)]
        except Exception as exc:  # noqa: BLE001 (handed to every waiting request)
            results = [(fut, loop, None, exc) for _, fut, loop in group]
        for fut, loop, row, exc in results:
            loop.call_soon_threadsafe(_settle, fut, row, exc)


def _settle(fut: asyncio.Future, row, exc: BaseException | None) -> None:
    """Complete a request's future unless it already gave up (timed out / disconnected)."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(row)
