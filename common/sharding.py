"""What sharding a teacher's and a student's tables share: the fused optimizers by
name and the sharder.

Both wrap an ``EmbeddingBagCollection`` (under ``.ebc``) in TorchRec's
``DistributedModelParallel``, whose FBGEMM table-batched embeddings run the table
optimizer inside the backward pass; the config names that optimizer
(:data:`FUSED_OPTIMIZERS`), and :class:`TableSharder` offers the plans.
"""

from __future__ import annotations

from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.types import ShardingType

# A config's ``embedding_optimizer`` -> FBGEMM's fused optimizer.
FUSED_OPTIMIZERS: dict[str, EmbOptimType] = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "adam": EmbOptimType.ADAM,
    "sgd": EmbOptimType.EXACT_SGD,
}


class TableSharder(EmbeddingBagCollectionSharder):
    """The stock EBC sharder, plus row-wise sharding on CPU.

    TorchRec offers row-wise only for CUDA, but its CPU path (FBGEMM CPU kernels, gloo
    all-to-all and reduce-scatter) runs it and matches the unsharded model (see
    tests/unit/test_sharding.py), so the CPU can test the same plans a GPU cluster runs.
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        """TorchRec's sharding types for ``compute_device_type``, row-wise always among
        them."""
        types = super().sharding_types(compute_device_type)
        if ShardingType.ROW_WISE.value not in types:
            types.append(ShardingType.ROW_WISE.value)
        return types
