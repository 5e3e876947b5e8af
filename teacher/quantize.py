"""Quantized embedding tables for a labelling teacher (it never trains while it labels).

``quantize_tables`` swaps every local shard's FBGEMM training kernel (the table-batched
embedding bag with its fused optimizer) for FBGEMM's inference kernel,
``IntNBitTableBatchedEmbeddingBagsCodegen``, holding the same rows in fp16, int8 or
int4. The shards stay where ``teacher/sharding.py`` put them: the sharded module's
input and output all-to-alls, its plan and the dense tower are unchanged, so a teacher
sharded over K ranks labels from quantized shards over the same K ranks.

Why not TorchRec's quantized ``EmbeddingBagCollection`` and its inference sharders:
those shard a quantized model over the devices of *one* process (inference sharding has
no process group), while our teacher is K processes in a gloo/nccl group. The weight
conversion is TorchRec's own (``torchrec.quant.embedding_modules.quantize_state_dict``
uses the same FBGEMM op): int8 and int4 rows carry a per-row fp16 scale and bias.
"""

from __future__ import annotations

import gc
import torch
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
    IntNBitTableBatchedEmbeddingBagsCodegen,
)
from torch import nn

from recdistill.teacher.config import TABLE_DTYPES

_SPARSE = {"fp32": SparseType.FP32, "fp16": SparseType.FP16, "int8": SparseType.INT8,
           "int4": SparseType.INT4}
_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
_PRECISION = {torch.float32: "fp32", torch.float16: "fp16"}


def quantize_rows(weight: torch.Tensor, dtype: str
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A float table [N, D] as the inference kernel stores it: (uint8 rows, uint8 per-row
    fp16 scale and bias [N, 4], or None for fp16 / fp32)."""
    # fp16 tables (``embedding_precision``) are quantized as they are: a float copy of
    # the largest table would cost more than its int8 form saves
    w = weight.detach()
    w = (w if w.dtype in (torch.float32, torch.float16) else w.float()).contiguous()
    if dtype in ("int8", "int4"):
        fused = torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(w, _BITS[dtype])
        return fused[:, :-4], fused[:, -4:]
    if dtype == "fp16":
        return w.half().view(torch.uint8), None
    return w.float().view(torch.uint8), None


def _kernels(model: nn.Module) -> list[nn.Module]:
    """Every TorchRec batched-embedding kernel wrapper (its ``emb_module`` is the FBGEMM
    table-batched module) in the sharded model: the sharded collections' lookups (which
    their ``named_modules`` leave out), each a group of kernels."""
    return [kernel for m in model.modules() for lookup in getattr(m, "_lookups", ())
            for kernel in getattr(lookup, "_emb_modules", ())
            if isinstance(getattr(kernel, "emb_module", None), nn.Module)]


def _pooling(module: nn.Module) -> PoolingMode:
    return PoolingMode(int(module.pooling_mode))


def _free(tbe: nn.Module) -> None:
    """Free a replaced training kernel's memory (weights, optimizer state) now. Views of
    its weights live on in the sharded module (its state-dict shards, the fused
    optimizer), so dropping the module would free nothing: the storages are emptied
    instead. The model's state dict is unusable afterwards (a refresh rebuilds it)."""
    for t in [*tbe.parameters(), *tbe.buffers()]:
        if t.numel():
            t.untyped_storage().resize_(0)


def quantize_tables(model: nn.Module, dtype: str) -> dict[str, float]:
    """Replace this rank's table kernels by FBGEMM inference kernels in ``dtype``.

    Args:
        model: a ``DistributedModelParallel`` teacher with its state loaded (each rank
            calls this on its own shards; no collective).
        dtype: ``fp32``, ``fp16``, ``int8`` or ``int4``; ``fp32`` keeps the training
            kernel (nothing to convert). Other dtypes free the training kernels'
            memory: the model can label and be evaluated, not trained, saved or
            loaded into.

    Returns:
        ``parameters`` (table parameters on this rank), ``bytes_before`` (their fp32
        bytes) and ``bytes`` (what the kernels hold now, scale/bias and row padding
        included).
    """
    if dtype not in TABLE_DTYPES:
        raise ValueError(f"table dtype must be one of {TABLE_DTYPES}, got {dtype!r}")
    params, before, after = 0, 0, 0
    for wrapper in _kernels(model):
        tbe = wrapper.emb_module
        weights = [w for w in tbe.split_embedding_weights()]
        n = sum(w.numel() for w in weights)
        params += n
        before += sum(w.numel() * w.element_size() for w in weights)
        if isinstance(tbe, IntNBitTableBatchedEmbeddingBagsCodegen) or \
                dtype == _PRECISION.get(weights[0].dtype):  # already in that dtype
            after += sum(w.numel() * w.element_size() for w in weights)
            continue
        table_map = list(getattr(wrapper, "_feature_table_map", None)
                         or getattr(tbe, "feature_table_map", range(len(weights))))
        # the shard's own memory: HBM on a GPU (fbgemm-gpu), host memory on the CPU
        where = EmbeddingLocation.DEVICE if weights[0].device.type == "cuda" \
            else EmbeddingLocation.HOST
        q = IntNBitTableBatchedEmbeddingBagsCodegen(
            [("", w.shape[0], w.shape[1], _SPARSE[dtype], where) for w in weights],
            feature_table_map=table_map, pooling_mode=_pooling(tbe),
            device=weights[0].device, output_dtype=SparseType.FP32)
        q.initialize_weights()
        # table by table: at most one table's converted copy exists beside the kernels
        for dest, w in zip(q.split_embedding_weights(), weights):
            rows, scale_bias = quantize_rows(w, dtype)
            dest[0].copy_(rows)
            if scale_bias is not None:
                dest[1].copy_(scale_bias)
        wrapper._emb_module = q  # ``emb_module`` is a read-only property over it
        after += q.weights_host.numel() + q.weights_dev.numel() + q.weights_uvm.numel()
        del weights
        _free(tbe)
    gc.collect()
    return {"parameters": float(params), "bytes_before": float(before),
            "bytes": float(after)}
