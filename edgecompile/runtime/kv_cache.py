"""The KV cache of one generation, behind one interface: `forward(ids) -> logits`, `expand(beams)`,
`reorder(order)`, `length` (cached positions).

`BoundCache` (ONNX Runtime): preallocated to the context length up front. Per layer, key and value
each have two flat buffers of batch * kv_heads * capacity * head_dim elements (ping-pong): a step
binds `past_key_values.*` on the first batch*heads*n*head_dim elements of one (read as [B, H, n, D])
and `present.*` on the first batch*heads*(n+t)*head_dim of the other, so ORT writes the grown cache
straight into our memory (the graph concatenates past and new) and nothing is allocated per step; the
roles swap after each call. A decode step's logits go into a preallocated [B, 1, V] buffer too (the
prefill's [B, T, V] is ORT's). Beam search expands and reorders the cache by writing one buffer into
the other with numpy (`np.take(..., out=)`), again with no allocation. The buffers are `np.empty`:
the OS commits their pages when first written, so resident memory grows with the positions used,
up to the buffers' size.

`FeedCache` (any other engine): the past is numpy arrays fed by name; each call returns new ones.
"""
from __future__ import annotations

import numpy as np


def _feeds(ids: np.ndarray, past_len: int, has_position_ids: bool) -> dict:
    batch, t = ids.shape
    feeds = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64),
             "attention_mask": np.ones((batch, past_len + t), dtype=np.int64)}
    if has_position_ids:
        feeds["position_ids"] = np.ascontiguousarray(
            np.broadcast_to(np.arange(past_len, past_len + t, dtype=np.int64), (batch, t)))
    return feeds


class BoundCache:
    def __init__(self, session, layers, kv_heads: int, head_dim: int, capacity: int, max_batch: int, dtype,
                 has_position_ids: bool = True):
        self.session, self.layers, self.has_position_ids = session, layers, has_position_ids
        self.heads, self.head_dim, self.capacity, self.max_batch = kv_heads, head_dim, capacity, max_batch
        self.dtype = np.dtype(dtype)
        # [slot, layer, key/value, flat]: slot `self.slot` holds the past, the other receives the present
        self.buffers = np.empty((2, len(layers), 2, max_batch * kv_heads * capacity * head_dim), self.dtype)
        self.logits_buffer: np.ndarray | None = None
        self.reset()

    def reset(self) -> None:
        self.slot, self.length, self.batch = 0, 0, 1

    def view(self, slot: int, layer: int, kv: int, batch: int | None = None, length: int | None = None):
        """The [B, H, n, D] array at the start of one buffer (a numpy view: writing it writes the cache)."""
        b = self.batch if batch is None else batch
        n = self.length if length is None else length
        return self.buffers[slot, layer, kv, :b * self.heads * n * self.head_dim].reshape(
            b, self.heads, n, self.head_dim)

    def forward(self, ids: np.ndarray) -> np.ndarray:
        batch, t = ids.shape
        n, new = self.length, self.length + ids.shape[1]
        if batch != self.batch and n or batch > self.max_batch or new > self.capacity:
            raise ValueError(f"cache holds batch {self.batch} x {n} of at most {self.max_batch} x {self.capacity}, "
                             f"got ids {ids.shape}")
        b = self.session.io_binding()
        for name, arr in _feeds(ids, n, self.has_position_ids).items():
            b.bind_cpu_input(name, arr)
        step = t == 1 and n > 0 and self.logits_buffer is not None       # a decode step: into our buffer
        if step:
            logits = self.logits_buffer[:batch]
            b.bind_output("logits", "cpu", 0, logits.dtype, logits.shape, logits.ctypes.data)
        else:
            b.bind_output("logits", "cpu")
        past, out = self.slot, 1 - self.slot
        for i, names in enumerate(self.layers):
            for kv in (0, 1):
                src, dst = self.view(past, i, kv, batch, n), self.view(out, i, kv, batch, new)
                b.bind_input(names[kv], "cpu", 0, self.dtype, src.shape, src.ctypes.data)
                b.bind_output(names[2 + kv], "cpu", 0, self.dtype, dst.shape, dst.ctypes.data)
        self.session.run_with_iobinding(b)
        if not step:
            logits = b.get_outputs()[0].numpy()           # bound first: output 0
            if self.logits_buffer is None:
                self.logits_buffer = np.empty((self.max_batch, 1, logits.shape[-1]), logits.dtype)
        self.slot, self.length, self.batch = out, new, batch
        return logits

    def expand(self, beams: int) -> None:
        """Batch 1 -> `beams` identical rows."""
        self._move(lambda src, dst: np.copyto(dst, src), beams)

    def reorder(self, order: np.ndarray) -> None:
        """Row i of the cache <- row order[i]."""
        self._move(lambda src, dst: np.take(src, order, axis=0, out=dst), len(order))

    def _move(self, fn, batch: int) -> None:
        for i in range(len(self.layers)):
            for kv in (0, 1):
                fn(self.view(self.slot, i, kv), self.view(1 - self.slot, i, kv, batch=batch))
        self.slot, self.batch = 1 - self.slot, batch


class FeedCache:
    def __init__(self, runner, layers, kv_heads: int, head_dim: int, dtype, has_position_ids: bool = True):
        self.runner, self.layers, self.has_position_ids = runner, layers, has_position_ids
        z = np.zeros((1, kv_heads, 0, head_dim), dtype=dtype)
        self.past = [z for _ in range(2 * len(layers))]
        self.length = 0

    def forward(self, ids: np.ndarray) -> np.ndarray:
        feeds = _feeds(ids, self.length, self.has_position_ids)
        for (pk, pv, _, _), k, v in zip(self.layers, self.past[0::2], self.past[1::2]):
            feeds[pk], feeds[pv] = k, v
        out = self.runner.run(feeds)
        self.past = [out[name] for _, _, ok, ov in self.layers for name in (ok, ov)]
        self.length += ids.shape[1]
        return out["logits"]

    def expand(self, beams: int) -> None:
        self.past = [np.repeat(p, beams, axis=0) for p in self.past]

    def reorder(self, order: np.ndarray) -> None:
        self.past = [p[order] for p in self.past]
