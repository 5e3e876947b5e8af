"""The teacher's actor as a plain class (``ray.remote`` is applied in
cluster/label_group.py).

``TeacherRank``: one rank of the sharded teacher. K of them form one torch.distributed
group (gloo on CPU, nccl on GPU) and label their share of the stream in lockstep (the
sharded forward's all-to-alls need every rank).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from recdistill.cluster.codec import LabelledBatch, encode
from recdistill.cluster.metrics import ActorMetrics
from recdistill.cluster.pass_input import PassInput
from recdistill.cluster.process import (actor_device, enable_faulthandler, free_port,
                                        init_group, io_call, io_group, node_address,
                                        peak_rss_bytes, rss_bytes)
from recdistill.data.storage import shown
from recdistill.data.spec import BatchArrays, EvalSplit, ExampleTable
from recdistill.teacher.checkpoint import CheckpointError, load_teacher_state, read_meta
from recdistill.teacher.model import TeacherModel, feature_dims
from recdistill.teacher.outputs import TeacherOutputs
from recdistill.teacher.quantize import quantize_tables
from recdistill.teacher.sharding import shard_teacher
from recdistill.teacher.train import predict


class TeacherRank(PassInput):
    """Rank ``rank`` of the K-rank sharded teacher."""

    def __init__(self, rank: int, world: int, checkpoint: str, features: tuple[str, ...],
                 batch_size: int, logit_dtype: str = "float16",
                 feature_dtype: str = "float16", *, read_keys: tuple[str, ...] = (),
                 member: str = "", table_dtype: str = "fp32", prefetch: bool = False,
                 io_timeout_s: float = 600.0) -> None:
        enable_faulthandler()
        torch.set_num_threads(1)
        self.rank, self.world = rank, world
        self.checkpoint, self.features = checkpoint, features
        self.batch_size = batch_size  # rows per labelling forward
        self.logit_dtype, self.feature_dtype = logit_dtype, feature_dtype
        self.table_dtype, self.prefetch = table_dtype, prefetch
        self.io_timeout_s, self.io_pg = io_timeout_s, None
        self.device = actor_device()  # the GPU Ray gave this rank, else the CPU
        self.tables: dict[str, float] = {}
        # A committee's lead reads every member's features from the stream (read_keys);
        # each member's forward takes its own (model_keys).
        self.read_keys, self.member = tuple(read_keys), member
        self.metrics = ActorMetrics("teacher", {"rank": str(rank),
                                                **({"member": member} if member else {})})

    def address(self) -> tuple[str, int]:
        host = node_address()
        return host, free_port(host)

    def setup(self, addr: str, port: int) -> dict[str, Any]:
        """Join the group, build the teacher on meta, shard it and load the checkpoint."""
        init_group(addr, port, self.rank, self.world, self.device)
        if self.world > 1:  # checkpoint loads wait on their own group, longer
            self.io_pg = io_group(self.io_timeout_s)
        spec, cfg, info = read_meta(self.checkpoint)
        model = TeacherModel(spec, cfg)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.model_keys = model.feature_names
        self.keys = self.read_keys or self.model_keys
        self.spec, self.cfg = spec, cfg
        self._load(model, self.checkpoint)
        self.version = int(info.get("step", 0))
        self.metrics.gauge("recdistill_teacher_version", self.version)
        return {"spec": spec, "version": self.version, "parameters": self.n_params,
                "checkpoint": self.checkpoint, "pid": os.getpid(),
                "feature_dims": feature_dims(spec, cfg), "keys": self.keys,
                "tables": self.tables}

    def _load(self, model: TeacherModel, checkpoint: str) -> None:
        """Shard ``model`` over the group, load ``checkpoint`` into it and quantize its
        tables to ``table_dtype`` (every rank calls it: sharding is collective)."""
        self.model = shard_teacher(model, self.cfg, dist.group.WORLD, self.device)
        self._load_state(checkpoint)
        self.model.eval()
        self.tables = quantize_tables(self.model, self.table_dtype)
        self.tables["peak_rss_bytes"] = float(peak_rss_bytes())
        self.tables["rss_bytes"] = float(rss_bytes())

    def _load_state(self, checkpoint: str) -> None:
        """Load on the I/O group; a failure names this rank (and the key, where a peer
        did not come in time: gloo's "Timed out")."""
        who = f"teacher {self.member or 'rank'} {self.rank}/{self.world}"
        try:
            with io_call(who, f"load of {shown(checkpoint)}", self.io_timeout_s):
                load_teacher_state(self.model, checkpoint, self.io_pg)
        except CheckpointError as e:
            late = (" (checkpoint I/O waits at most teacher_group.checkpoint_timeout_s = "
                    f"{self.io_timeout_s:g} s on the other ranks)") if "Timed out" in str(e) \
                else ""
            raise CheckpointError(f"{who}: {e}{late}") from e

    def reload(self, checkpoint: str) -> int:
        """Load another version of the same teacher between batches (teacher refresh);
        every rank calls it. Returns the new version."""
        _, _, info = read_meta(checkpoint)
        if self.table_dtype == "fp32":
            self._load_state(checkpoint)
            self.model.eval()
        else:  # quantized tables cannot be loaded into: build the new version afresh
            self.model = None
            gc.collect()
            self._load(TeacherModel(self.spec, self.cfg), checkpoint)
        self.checkpoint, self.version = checkpoint, int(info.get("step", 0))
        self.metrics.gauge("recdistill_teacher_version", self.version)
        return self.version

    @torch.no_grad()
    def label_next(self) -> tuple[Any, Any]:
        """(ids, LabelledBatch) of the next batch of this rank, or (None, None) at the end.

        Every rank must call this the same number of times: the forward's all-to-alls
        meet across ranks; equal splits of the stream guarantee it.
        """
        arrays = self._next_arrays()
        if arrays is None:
            return None, None
        labelled = self._label(arrays)
        self.metrics.gauge("recdistill_teacher_version", self.version)
        self._account(labelled)
        return arrays.ids, labelled

    @torch.no_grad()
    def label_inputs(self, *batches: LabelledBatch | None) -> tuple[Any, ...]:
        """A committee member's labels of the lead's batches (their inputs), as
        ``(ids_list, labels_1, ..., labels_n)`` (call with ``num_returns=n + 1``): the
        logits only, the inputs left out (the students read them from the lead's
        batch). A None entry (past the pass's end) gives None. Every rank gets the
        same number of batches: the lead's rank k hands its batches to rank k."""
        cpu0 = time.process_time()  # a member's CPU: its process, during these calls
        ids_list: list[Any] = []
        out: list[Any] = []
        for b in batches:
            if b is None:
                ids_list.append(None)
                out.append(None)
                continue
            labelled = self._label(b.inputs)
            self._account(labelled)
            ids_list.append(b.inputs.ids)
            out.append(dataclasses.replace(labelled, inputs=None))
        self._cpu_s += time.process_time() - cpu0
        return (ids_list, *out)

    @torch.no_grad()
    def _label(self, arrays: BatchArrays) -> LabelledBatch:
        """The teacher's forward on one batch, encoded in the transport dtypes."""
        t0 = time.perf_counter()
        batch = arrays.select(self.model_keys).to_batch().to(self.device)
        out: TeacherOutputs = self.model(batch.dense, batch.sparse)
        t1 = time.perf_counter()
        self.metrics.count("recdistill_teacher_examples", arrays.batch_size)
        labelled = LabelledBatch(
            inputs=arrays, logits=encode(out.logits, self.logit_dtype),
            features={k: encode(out.features[k], self.feature_dtype) for k in self.features},
            version=self.version, logit_dtype=self.logit_dtype,
            feature_dtype=self.feature_dtype, member=self.member)
        self._forward_s += t1 - t0
        self._encode_s += time.perf_counter() - t1
        return labelled

    @torch.no_grad()
    def label_rows(self, table: ExampleTable) -> tuple[np.ndarray, np.ndarray,
                                                        dict[str, np.ndarray]]:
        """(ids, logits, features) of this rank's share of ``table``, in the transport
        dtypes (for offline soft labels). Every rank must call it: the shares are padded
        to equal length so the ranks stay in lockstep; the padding repeats ids, which
        the caller drops."""
        parts = [self._label(arrays) for arrays in table.iter_batches(
            self.batch_size, keys=self.keys, rank=self.rank, world=self.world, pad=True)]
        return (np.concatenate([p.inputs.ids for p in parts]),
                np.concatenate([p.logits for p in parts]),
                {k: np.concatenate([p.features[k] for p in parts]) for k in self.features})

    def evaluate(self, split: EvalSplit, block: int, batch_size: int, group_key: str = ""
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Teacher (logits, labels, the rows' ``group_key`` ids or None) of every row of
        block ``block`` of ``split``, by example id; every rank must call it."""
        table = split.block(block)
        p = predict(self.model, table, self.model_keys, batch_size, self.device)
        keys = table.group_keys(group_key)[np.argsort(table.ids)] if group_key else None
        return p.logits, p.labels, keys
