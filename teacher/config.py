"""Teacher configuration: frozen, typed, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recdistill.data.errors import ConfigError

SHARDING_TYPES = ("table_wise", "column_wise", "row_wise", "auto")
EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "adam", "sgd")
DENSE_ENGINES = ("ddp", "deepspeed")
PRECISIONS = ("fp32", "bf16")
INTERACTIONS = ("cross", "dot", "fm")
# Table dtypes a labelling teacher may quantize its tables to (teacher/quantize.py).
TABLE_DTYPES = ("fp32", "fp16", "int8", "int4")


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher model and how it trains.

    Attributes:
        embedding_dim: width of every embedding table (a multiple of 4 for FBGEMM, and
            of 4 * world size for column-wise sharding).
        use_privileged: whether the teacher uses the dataset's privileged features
            (MovieLens: ``user_history``). Off by default: on MovieLens-100k it gained
            no measurable AUC (README, 3 seeds) and costs ~15% more time.
        dense_layers: widths of the MLP over the dense features; the last one is the
            width of the dense "embedding" that joins the pooled sparse embeddings.
        cross_layers: number of DCN-v2 low-rank cross layers.
        cross_rank: rank of each cross layer's weight.
        over_layers: widths of the MLP after the cross network; its output is the
            ``last_hidden`` feature, read by one linear head per task.
        sharding: default sharding type of every table.
        table_sharding: per-table overrides, table name -> sharding type.
        embedding_optimizer: FBGEMM fused optimizer applied in the backward pass.
        embedding_lr: its learning rate.
        embedding_precision: the tables' weights while training, ``fp32`` or ``fp16``
            (FBGEMM's fp16 weights, updated with stochastic rounding): half the memory,
            which is what fits a 3e9-parameter teacher's training on 2 ranks of a
            24 GiB machine.
        embedding_weight_decay: L2 decay of the rows a batch touches.
        dense_lr: AdamW learning rate of the dense tower.
        dense_weight_decay: AdamW weight decay.
        batch_size: examples per rank per step.
        epochs: maximum passes over train.
        patience: stop after this many epochs without a better validation AUC on the
            first task; the best epoch's weights are kept.
        seed: seed of dense initialisation and data order.
        dense_engine: what trains the dense tower (everything but the tables): ``ddp``
            (torch DDP + AdamW, what DistributedModelParallel sets up) or ``deepspeed``
            (a DeepSpeed engine with ZeRO; ``teacher/engine.py``). The tables are
            TorchRec-sharded with their fused FBGEMM optimizer either way.
        zero_stage: DeepSpeed ZeRO stage 0-3 (0: plain data parallel; 1: optimizer
            state partitioned; 2: + gradients; 3: + parameters).
        precision: dense tower precision under DeepSpeed: ``fp32`` or ``bf16`` (bf16
            weights and activations, fp32 master weights in the optimizer).
        offload_optimizer: DeepSpeed ZeRO optimizer-state offload to host memory (stage
            1-3; a GPU memory saving, no effect on a CPU run).
        arch: the tower over the tables (``teacher/registry.py``): ``builtin`` (this
            project's, shaped by ``interaction``), ``torchrec_dlrm``,
            ``torchrec_dlrm_dcn``, ``torchrec_deepfm`` (TorchRec's models,
            ``teacher/torchrec_models.py``) or a name a plugin registered.
        arch_params: settings of a registered tower that has its own (a table).
        interaction: the layer between the embeddings and the over-arch MLP: ``cross``
            (DCN-v2 low-rank cross network, ``cross_layers`` x ``cross_rank``), ``dot``
            (DLRM pairwise dot products; needs the dense MLP's last width, if any, to
            be ``embedding_dim``: it is) or ``fm`` (embeddings + FM bi-interaction).
    """

    embedding_dim: int = 64
    use_privileged: bool = False
    dense_layers: tuple[int, ...] = (128, 64)
    cross_layers: int = 3
    cross_rank: int = 64
    over_layers: tuple[int, ...] = (256, 128)
    sharding: str = "table_wise"
    table_sharding: dict[str, str] = field(default_factory=dict)
    embedding_optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.02
    embedding_precision: str = "fp32"
    embedding_weight_decay: float = 0.0
    dense_lr: float = 1e-3
    dense_weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 8
    patience: int = 2
    seed: int = 0
    dense_engine: str = "ddp"
    zero_stage: int = 2
    precision: str = "fp32"
    offload_optimizer: bool = False
    interaction: str = "cross"
    arch: str = "builtin"
    arch_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.interaction not in INTERACTIONS:
            raise ConfigError(f"teacher.interaction: unknown {self.interaction!r}; "
                              f"expected one of {INTERACTIONS}")
        if self.embedding_precision not in ("fp32", "fp16"):
            raise ConfigError("teacher.embedding_precision must be fp32 or fp16, got "
                              f"{self.embedding_precision!r}")
        if self.embedding_dim < 4 or self.embedding_dim % 4:
            raise ConfigError("teacher.embedding_dim must be a positive multiple of 4 "
                              f"(FBGEMM kernels), got {self.embedding_dim}")
        for key in ("dense_layers", "over_layers"):
            widths = getattr(self, key)
            if not widths or any(w < 1 for w in widths):
                raise ConfigError(f"teacher.{key} must be non-empty positive widths, "
                                  f"got {widths}")
        for key in ("cross_layers", "cross_rank", "batch_size", "epochs", "patience"):
            if getattr(self, key) < 1:
                raise ConfigError(f"teacher.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("embedding_lr", "dense_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"teacher.{key} must be > 0, got {getattr(self, key)}")
        for key in ("embedding_weight_decay", "dense_weight_decay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"teacher.{key} must be >= 0, got {getattr(self, key)}")
        if self.sharding not in SHARDING_TYPES:
            raise ConfigError(f"teacher.sharding: unknown {self.sharding!r}; "
                              f"expected one of {SHARDING_TYPES}")
        for table, kind in self.table_sharding.items():
            if kind not in SHARDING_TYPES[:3]:
                raise ConfigError(f"teacher.table_sharding.{table}: unknown {kind!r}; "
                                  f"expected one of {SHARDING_TYPES[:3]}")
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ConfigError(f"teacher.embedding_optimizer: unknown "
                              f"{self.embedding_optimizer!r}; expected one of "
                              f"{EMBEDDING_OPTIMIZERS}")
        if self.dense_engine not in DENSE_ENGINES:
            raise ConfigError(f"teacher.dense_engine: unknown {self.dense_engine!r}; "
                              f"expected one of {DENSE_ENGINES}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"teacher.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"teacher.precision: unknown {self.precision!r}; "
                              f"expected one of {PRECISIONS}")
        if self.dense_engine == "ddp" and self.precision != "fp32":
            raise ConfigError(f"teacher.precision = {self.precision!r} needs "
                              "teacher.dense_engine = 'deepspeed' (ddp trains in fp32)")
        if self.offload_optimizer and self.dense_engine != "deepspeed":
            raise ConfigError("teacher.offload_optimizer needs teacher.dense_engine = "
                              "'deepspeed'")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("teacher.offload_optimizer needs teacher.zero_stage >= 1")

    def check_world(self, world: int) -> None:
        """Fail before any rank starts if the tables cannot be sharded over ``world``."""
        if world < 1:
            raise ConfigError(f"world size must be >= 1, got {world}")
        kinds = {self.sharding, *self.table_sharding.values()}
        if "column_wise" in kinds and self.embedding_dim % (4 * world):
            raise ConfigError(
                f"teacher.embedding_dim = {self.embedding_dim} cannot be split column-wise "
                f"over {world} ranks: it must be a multiple of 4 x world size = {4 * world}")
