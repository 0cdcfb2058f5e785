"""Server-side batching (--enable_batching): concurrent requests to one signature become one model run.

Follows TF Serving's BatchingSession with a shared scheduler: a batch closes when it reaches
max_batch_size or when its oldest request has waited batch_timeout_micros; num_batch_threads
threads run batches; at most max_enqueued_batches batches wait per queue (beyond that: UNAVAILABLE,
answered at once rather than queued without bound). A batch is padded up to the next
allowed_batch_sizes entry by repeating its first row, and outputs are split back exactly.
Requests whose non-batch dimensions differ go to separate queues, so they never need padding.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from server.configs import BatchingParameters
from server.errors import FailedPrecondition, Internal, InvalidArgument, ServingError, Unavailable
from server.metrics import Metrics


@dataclass
class _Task:
    model: object
    signature: object
    inputs: dict
    outputs: Sequence[str]
    size: int
    enqueued: float
    future: Future = field(default_factory=Future)


class Batcher:
    """A drop-in `runner(model, signature, inputs, outputs)` that batches concurrent calls."""

    def __init__(self, params: BatchingParameters, runner: Callable, metrics: Optional[Metrics] = None):
        self.params = params
        self._runner = runner
        self._metrics = metrics if metrics is not None else Metrics()
        self._cond = threading.Condition()
        self._queues: dict[tuple, deque] = {}
        self._stopped = False
        self._timeout = params.batch_timeout_micros / 1e6
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def __call__(self, model, signature, inputs: dict, outputs: Sequence[str]) -> dict:
        sizes = {array.shape[0] if array.ndim else None for array in inputs.values()}
        if None in sizes or not sizes:
            return self._runner(model, signature, inputs, outputs)  # scalars cannot be batched
        if len(sizes) != 1:
            raise InvalidArgument("Batching Run() input tensors must have equal 0th-dimension size")
        size = sizes.pop()
        if size > self.params.max_batch_size:
            raise InvalidArgument(f"Task size {size} is larger than maximum input batch size "
                                  f"{self.params.max_batch_size}")
        if size == 0:
            return self._runner(model, signature, inputs, outputs)
        key = (id(model), signature.name, tuple(outputs),
               tuple(sorted((alias, array.shape[1:], array.dtype.str) for alias, array in inputs.items())))
        self._metrics.record_input_batch_size(size, len(inputs))
        task = _Task(model, signature, inputs, outputs, size, time.monotonic())
        with self._cond:
            if self._stopped:
                raise Unavailable("The batch scheduler is shutting down")
            queue = self._queues.setdefault(key, deque())
            queued = sum(t.size for t in queue) + size
            if math.ceil(queued / self.params.max_batch_size) > self.params.max_enqueued_batches:
                raise Unavailable("The batch scheduling queue to which this task was submitted is full")
            queue.append(task)
            self._cond.notify()
        return task.future.result()

    def _ready_batch(self) -> tuple[Optional[list], Optional[float]]:
        now, earliest = time.monotonic(), None
        for key, queue in self._queues.items():
            if not queue:
                continue
            total = sum(t.size for t in queue)
            deadline = queue[0].enqueued + self._timeout
            if total >= self.params.max_batch_size or now >= deadline or self._stopped:  # stopping flushes
                batch, filled = [], 0
                while queue and filled + queue[0].size <= self.params.max_batch_size:
                    task = queue.popleft()
                    batch.append(task)
                    filled += task.size
                if not queue:
                    del self._queues[key]
                return batch, None
            earliest = deadline if earliest is None else min(earliest, deadline)
        return None, earliest

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    batch, deadline = self._ready_batch()
                    if batch:
                        break
                    if self._stopped:
                        return
                    self._cond.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            self._execute(batch)

    def _padded_size(self, size: int) -> int:
        for allowed in self.params.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size

    def _execute(self, batch: list) -> None:
        first = batch[0]
        started = time.monotonic()
        self._metrics.record_batch(self.params.thread_pool_name, [(started - t.enqueued) * 1e6 for t in batch])
        total = sum(t.size for t in batch)
        padded = self._padded_size(total)
        self._metrics.record_processed_batch(padded, padded - total)
        try:
            inputs = {}
            for alias in first.inputs:
                parts = [t.inputs[alias] for t in batch]
                if padded > total:
                    parts.append(np.repeat(parts[0][:1], padded - total, axis=0))
                inputs[alias] = np.concatenate(parts) if len(parts) > 1 else parts[0]
            outputs = self._runner(first.model, first.signature, inputs, first.outputs)
            for alias, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != padded:
                    raise FailedPrecondition(f"Batched output tensor {alias}'s 0th dimension does not equal the sum "
                                             "of the 0th dimension sizes of the input tensors")
            start = 0
            for task in batch:
                task.future.set_result({a: v[start:start + task.size] for a, v in outputs.items()})
                start += task.size
        except ServingError as error:
            for task in batch:
                task.future.set_exception(error)
        except Exception as error:  # never leave a request waiting forever
            for task in batch:
                task.future.set_exception(Internal(f"Batched run failed: {type(error).__name__}: {error}"))

    def stop(self) -> None:
        """Finish queued batches, then stop the threads."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
