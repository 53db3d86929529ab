"""Dynamic batching for one model: a bounded queue served by one worker per Runner instance.

A worker takes the oldest request; when its model is idle (queue empty, no other instance busy) it runs
it at once. Otherwise it keeps adding queued requests with the same trailing shapes until the batch holds
`max_batch_size` rows or `max_queue_delay_ms` have passed since the oldest request arrived, concatenates
them along the first axis, runs them in one engine call (on a thread, so the event loop keeps serving)
and hands each request its slice of the outputs. Batching needs a symbolic first dimension on every
input and output; bundles compiled for a fixed batch run one request per engine call.

Batches expected to take under a millisecond (batch-1 time measured at load x rows) run on the event loop
itself: for them a hand-off to a worker thread and back costs more than the run, mostly in thread wake-ups.

A full queue refuses new requests (HTTP 429 with Retry-After); a request waiting longer than its timeout
is answered 504 and skipped by the workers. If a batch fails in the engine, its requests are rerun one
by one so that only the request that caused the failure gets the error.
"""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edgecompile.errors import EdgeCompileError
from edgecompile.serve.codec import RequestError


INLINE_BELOW_S = 1e-3      # batches expected to run faster than this run on the event loop


@dataclass
class _Item:
    feeds: dict
    rows: int
    sig: tuple | None               # None: cannot share a batch
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


def batchable(inputs, outputs) -> bool:
    """Every input and output has a symbolic (named) first dimension."""
    return all(s.shape and not isinstance(s.shape[0], int) for s in list(inputs) + list(outputs))


class Batcher:
    def __init__(self, name: str, runners: list, *, max_batch_size: int = 8, max_queue_delay_ms: float = 5.0,
                 max_queue: int = 256, timeout_s: float = 30.0, metrics=None, run_s: float | None = None):
        self.name = name
        self.runners = runners
        self.inputs, self.outputs = runners[0].inputs, runners[0].outputs
        self.batching = max_batch_size > 1 and batchable(self.inputs, self.outputs)
        self.max_batch_size = max_batch_size if self.batching else 1
        self.delay = max_queue_delay_ms / 1e3
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.run_s = run_s              # batch-1 run time measured at load (None: unknown, always use threads)
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._busy = 0
        self._tasks: list[asyncio.Task] = []
        self._executor = ThreadPoolExecutor(len(runners), thread_name_prefix=f"ec-{name}")

    # -- lifecycle (inside the event loop) ------------------------------------------------
    def start(self) -> None:
        self._wakeup, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._tasks = [asyncio.create_task(self._worker(r), name=f"batcher-{self.name}-{i}")
                       for i, r in enumerate(self.runners)]

    async def drain(self) -> None:
        """Wait until every queued and running request is answered, then stop the workers."""
        while self._queue or self._busy:
            self._idle.clear()
            await self._idle.wait()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True)
        for r in self.runners:
            r.close()

    @property
    def inline(self) -> bool:
        """Lone requests run on the event loop."""
        return self.run_s is not None and self.run_s < INLINE_BELOW_S

    @property
    def depth(self) -> int:
        return len(self._queue)

    # -- requests --------------------------------------------------------------------------
    async def submit(self, feeds: dict) -> dict:
        if len(self._queue) >= self.max_queue:
            raise RequestError(429, f"model {self.name!r}: queue full ({self.max_queue} requests waiting); retry later",
                               headers={"Retry-After": "1"})
        first = [a.shape[0] if a.ndim else None for a in feeds.values()]
        same_rows = len(set(first)) == 1 and first[0] is not None
        sig = (tuple((k, a.shape[1:]) for k, a in sorted(feeds.items()))
               if self.batching and same_rows else None)
        item = _Item(feeds, first[0] if same_rows else 1, sig, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._gauge()
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), self.timeout_s)
        except asyncio.TimeoutError:
            item.future.cancel()
            raise RequestError(504, f"model {self.name!r}: no answer within the request timeout of "
                                    f"{self.timeout_s:g} s (server overloaded?)") from None

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.labels(self.name).set(len(self._queue))

    def _pop(self) -> _Item | None:
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():        # skip requests that timed out while queued
                return item
        return None

    def _fill(self, batch: list[_Item], rows: int) -> int:
        """Move queued requests with the batch's signature into it, oldest first, while rows fit."""
        sig, kept = batch[0].sig, collections.deque()
        while self._queue and rows < self.max_batch_size:
            item = self._queue.popleft()
            if item.future.done():
                continue
            if item.sig == sig and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
            elif item.sig == sig:
                self._queue.appendleft(item)
                break
            else:
                kept.append(item)
        self._queue.extendleft(reversed(kept))
        return rows

    async def _worker(self, runner) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._pop()
            if first is None:
                self._gauge()
                if not self._busy:
                    self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, rows = [first], first.rows
            if first.sig is not None:
                idle = not self._queue and not self._busy
                deadline = first.enqueued + self.delay
                while True:
                    rows = self._fill(batch, rows)
                    remaining = deadline - time.perf_counter()
                    if idle or rows >= self.max_batch_size or remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
            self._gauge()
            self._busy += 1
            try:
                await self._execute(loop, runner, batch, rows)
            finally:
                self._busy -= 1
                if not self._busy and not self._queue:
                    self._idle.set()

    async def _execute(self, loop, runner, batch: list[_Item], rows: int) -> None:
        start = time.perf_counter()
        m = self.metrics
        if m:
            for it in batch:
                m.queue_duration.labels(self.name).observe(start - it.enqueued)
        names = list(batch[0].feeds)
        feeds = batch[0].feeds if len(batch) == 1 else {
            n: np.concatenate([it.feeds[n] for it in batch]) for n in names}
        try:
            if self.run_s is not None and self.run_s * rows < INLINE_BELOW_S:
                outs = runner.run(feeds)
            else:
                outs = await loop.run_in_executor(self._executor, runner.run, feeds)
        except Exception as exc:
            if len(batch) > 1:               # find the request(s) that fail on their own
                for it in batch:
                    await self._execute(loop, runner, [it], it.rows)
                return
            _settle_error(batch[0], exc)
            return
        if m:
            m.compute_duration.labels(self.name).observe(time.perf_counter() - start)
            m.batch_size.labels(self.name).observe(rows)
            m.inference_count.labels(self.name).inc(rows)
            m.exec_count.labels(self.name).inc()
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outs)
            return
        offset = 0
        for it in batch:
            if not it.future.done():
                it.future.set_result({k: v[offset:offset + it.rows] for k, v in outs.items()})
            offset += it.rows


def _settle_error(item: _Item, exc: Exception) -> None:
    if item.future.done():
        return
    if isinstance(exc, EdgeCompileError) and exc.exit_code == 2:      # DataError: the request's fault
        err = RequestError(400, exc.message)
    else:
        msg = exc.message if isinstance(exc, EdgeCompileError) else f"{exc.__class__.__name__}: {exc}"
        err = RequestError(500, "engine error: " + (msg.strip().splitlines() or [""])[0][:500])
    item.future.set_exception(err)
