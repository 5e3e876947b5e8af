"""``PassInput``: a label source's share of one pass of the input (a ``RowShare`` of the
pass's shuffled table, a ``StreamShare`` of a streamed pass, or a Ray Data stream
shard), read and decoded ahead by a thread
when asked, and the labelling calls every label-source actor answers the same way
(``label_many``, ``usage``). A plain class: ``TeacherRank`` (cluster/actors.py) and
``SoftLabelReader`` (cluster/soft_labels.py) build on it."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from typing import Any, Iterator


from recdistill.cluster.codec import LabelledBatch
from recdistill.cluster.data import RowShare, StreamShare, arrow_to_batch
from recdistill.data.spec import BatchArrays, ExampleTable


PREFETCH_BATCHES = 2  # decoded batches a reader thread holds ahead of the labeller


def _slice(item: tuple[ExampleTable, int, int], keys: tuple[str, ...]) -> BatchArrays:
    table, start, stop = item
    return table.rows(start, stop, keys)


class _PassReader:
    """One pass's share of the input, as :class:`BatchArrays`.

    A :class:`RowShare` (``split = "rows"``): the pass was shuffled and decoded once by a
    task, a batch is a slice of it, taken in the labeller's
    thread when asked for; the driver hands a pass over while the one before it is
    labelled, so its shuffle is done by then. A Ray Data stream (a
    :class:`StreamShare` of a streamed pass, or ``split = "stream"``): decoded here,
    Arrow -> numpy per batch; ``threaded``, a thread reads from the start (the stream
    starts, and its first batches are ready, by the time the labeller gets there), holding at most ``PREFETCH_BATCHES`` batches; otherwise a
    batch is read when asked for (the behaviour before prefetching existed, kept as
    ``teacher_group.prefetch = false``). A RowShare is sliced inline, not by a reader
    thread: beside the forward the thread's slicing waits for the GIL and costs more
    than it hides (BENCHMARKS.md, ``labelling``)."""

    _END = object()

    def __init__(self, shard: Any, index: int, batch_size: int, keys: tuple[str, ...],
                 threaded: bool) -> None:
        self.index, self.keys = index, keys  # the pass's index in the job
        self.decode_s = 0.0  # seconds making BatchArrays (in the thread, if any)
        self._queue: queue.Queue[Any] | None = None
        self._batches: Iterator[Any]
        if isinstance(shard, RowShare):
            self._batches, self._convert = shard.ranges(batch_size), _slice
        elif isinstance(shard, StreamShare):
            self._batches, self._convert = shard.batches(batch_size), arrow_to_batch
        else:
            self._batches = iter(shard.iter_batches(batch_size=batch_size,
                                                    batch_format="pyarrow",
                                                    prefetch_batches=2))
            self._convert = arrow_to_batch
        if threaded and not isinstance(shard, RowShare):
            self._queue = queue.Queue(maxsize=PREFETCH_BATCHES)
            threading.Thread(target=self._fill, name="pass-reader", daemon=True).start()

    def _next_decoded(self) -> BatchArrays | None:
        item = next(self._batches, None)
        if item is None:
            return None
        t0 = time.perf_counter()
        arrays = self._convert(item, self.keys)
        self.decode_s += time.perf_counter() - t0
        return arrays

    def _fill(self) -> None:
        assert self._queue is not None
        try:
            while (arrays := self._next_decoded()) is not None:
                self._queue.put(arrays)
            self._queue.put(self._END)
        except BaseException as e:  # noqa: BLE001 - handed to the labeller, raised there
            self._queue.put(e)

    def next(self) -> BatchArrays | None:
        """The next batch, or None at the pass's end."""
        if self._queue is None:
            return self._next_decoded()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return None if item is self._END else item


class PassInput:
    """A label source's share of the passes: the Ray Data streams a rank reads from.

    Passes are queued: :meth:`start_pass` may hand over the next pass while the current
    one is being labelled (``prefetch``), and its stream starts at once in a reader
    thread; :meth:`_next_arrays` reads the oldest pass until its end.
    """

    batch_size: int
    keys: tuple[str, ...]
    prefetch: bool = False
    _passes: deque[_PassReader] | None = None
    _ended = -1  # the index of the last pass read to its end
    # What the passes cost and produced (``usage``); per instance once first added to.
    _cpu0 = 0.0
    _cpu_s = 0.0
    _examples = 0
    _label_bytes = 0
    _input_bytes = 0
    _batches_done = 0
    # Wall seconds in each stage of producing a batch (the pipeline benchmark's profile).
    _input_s = 0.0
    _forward_s = 0.0
    _encode_s = 0.0
    _decode_s = 0.0  # of _input_s's batches: Arrow -> numpy (a reader thread's, if any)

    def start_pass(self, shard: Any, index: int) -> None:
        """Queue this rank's share of pass ``index`` (a :class:`RowShare` or a
        ``DataIterator``, of equal length to the other ranks'); with ``prefetch`` a
        stream starts now."""
        if self._passes is None:
            self._passes = deque()
        if not self._passes:
            self._cpu0 = time.process_time()
        self._passes.append(_PassReader(shard, index, self.batch_size, self.keys,
                                        self.prefetch))

    def label_next(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    def label_many(self, n: int, index: int) -> tuple[Any, ...]:
        """The next ``n`` batches of pass ``index`` as ``(ids_list, batch_1, ...,
        batch_n)``; call it with ``num_returns=n + 1`` so each batch is its own object
        (the groups take them one by one). Past the end of the pass an entry of
        ``ids_list`` and its batch are None; a call that comes after the pass ended
        (the driver keeps ``teacher_group.calls_in_flight`` calls queued) labels
        nothing and never reads into the next pass. One call for n batches: each actor
        call costs the driver CPU (BENCHMARKS.md, ``pipeline``)."""
        ids_list: list[Any] = []
        batches: list[Any] = []
        ended = index <= self._ended
        if not ended and not (self._passes and self._passes[0].index == index):
            raise RuntimeError(f"pass {index} was not handed to this rank (start_pass)")
        for _ in range(n):
            ids, batch = (None, None) if ended else self.label_next()
            ended = ids is None
            ids_list.append(ids)
            batches.append(batch)
        return (ids_list, *batches)

    def usage(self) -> dict[str, float]:
        """CPU seconds this process spent in passes (input, forward, encoding, handing
        batches to the object store: all its threads), and what it produced."""
        return {"cpu_s": self._cpu_s, "examples": self._examples,
                "batches": self._batches_done,
                "label_bytes": self._label_bytes, "input_bytes": self._input_bytes,
                "input_s": self._input_s, "decode_s": self._decode_s,
                "forward_s": self._forward_s, "encode_s": self._encode_s}

    def _account(self, labelled: LabelledBatch) -> None:
        i = labelled.inputs
        self._batches_done += 1
        self._examples += i.batch_size
        self._label_bytes += labelled.label_bytes
        self._input_bytes += sum(x.nbytes for x in (i.dense, i.labels, i.ids, i.values,
                                                     i.lengths))

    def _next_arrays(self) -> BatchArrays | None:
        """The next batch of the current pass (features ``keys``), or None at its end
        (the next queued pass becomes the current one)."""
        assert self._passes, "start_pass first"
        t0 = time.perf_counter()
        arrays = self._passes[0].next()
        if arrays is None:
            done = self._passes.popleft()
            self._decode_s += done.decode_s
            self._ended = done.index
            now = time.process_time()
            self._cpu_s += now - self._cpu0
            self._cpu0 = now
            return None
        self._input_s += time.perf_counter() - t0
        return arrays
