"""The teacher: a TorchRec multi-task ranking model (DCN-v2, DLRM or DeepFM style).

Sparse features -> EmbeddingBagCollection (FBGEMM kernels once sharded) -> pooled
embeddings; dense features -> MLP; both -> an interaction layer (low-rank cross network,
DLRM dot products or an FM term) -> MLP -> one linear head per task. The model knows
nothing of sharding, Ray or DeepSpeed: ``teacher/sharding.py`` shards it from outside.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.models.dlrm import InteractionArch
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recdistill.data.spec import FeatureSpec
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.outputs import TeacherOutputs
from recdistill.teacher.registry import TEACHERS, check_tower, register_teacher


def teacher_features(spec: FeatureSpec, cfg: TeacherConfig) -> tuple[str, ...]:
    """Sparse features the teacher reads, in KeyedJaggedTensor key order."""
    drop = () if cfg.use_privileged else spec.privileged
    return tuple(n for n in spec.sparse_names if n not in drop)


def interaction_width(n_sparse: int, has_dense: bool, cfg: TeacherConfig) -> int:
    """Width of the interaction layer's output for ``cfg.interaction``."""
    e, slots = cfg.embedding_dim, n_sparse + (1 if has_dense else 0)
    if cfg.interaction == "dot":  # the dense vector, then every pairwise dot product
        return e + n_sparse * (n_sparse + 1) // 2
    if cfg.interaction == "fm":  # the embeddings, then the FM bi-interaction vector
        return (slots + 1) * e
    return slots * e


def feature_dims(spec: FeatureSpec, cfg: TeacherConfig) -> dict[str, int]:
    """Width of each named feature ``TeacherModel.forward`` returns (another ``arch``
    than the built-in one: from one forward of its tower on a zero batch, which also
    checks it keeps the contract)."""
    n = len(teacher_features(spec, cfg))
    if cfg.arch != "builtin":
        return check_tower(build_tower(spec, cfg, n), spec, cfg, n)
    return {"pooled_embeddings": n * cfg.embedding_dim,
            "interaction": interaction_width(n, bool(spec.dense), cfg),
            "last_hidden": cfg.over_layers[-1]}


def embedding_tables(spec: FeatureSpec, cfg: TeacherConfig) -> list[EmbeddingBagConfig]:
    """One table per distinct ``SparseFeature.table``; shared tables list all features."""
    used = teacher_features(spec, cfg)
    tables: dict[str, EmbeddingBagConfig] = {}
    for name in used:
        f = spec.feature(name)
        if f.table in tables:
            tables[f.table].feature_names.append(name)
        else:
            tables[f.table] = EmbeddingBagConfig(
                name=f"t_{f.table}", embedding_dim=cfg.embedding_dim,
                num_embeddings=f.cardinality, feature_names=[name],
                pooling=PoolingType.MEAN,  # a bag's mean; a single id is its own row
                data_type=DataType.FP16 if cfg.embedding_precision == "fp16"
                else DataType.FP32)
    return list(tables.values())


def bi_interaction(fields: torch.Tensor) -> torch.Tensor:
    """The factorization machine's pairwise term per embedding dimension, [B, F, E] ->
    [B, E]: 0.5 * ((sum_f v_f)^2 - sum_f v_f^2), whose sum over E is the FM's
    second-order score (Rendle 2010; as a vector, NFM's bi-interaction pooling).
    TorchRec's ``FactorizationMachine`` flattens its inputs into one vector of scalars
    and returns only the [B, 1] sum, so it does not see fields; this keeps them."""
    s = fields.sum(dim=1)
    return 0.5 * (s * s - (fields * fields).sum(dim=1))


class TaskHeads(nn.ModuleDict):
    """One linear head per task over a [B, width] hidden tensor; ``forward`` gives the
    [B, T] logits in task order. A ModuleDict keyed by task, so the weights' names stay
    ``heads.<task>.weight``."""

    def __init__(self, width: int, tasks: tuple[str, ...]) -> None:
        super().__init__({t: nn.Linear(width, 1) for t in tasks})
        self.tasks = tuple(tasks)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([self[t](hidden) for t in self.tasks], dim=1)


class DenseTower(nn.Module):
    """Everything but the tables: dense MLP, interaction layer, over-arch MLP, heads.

    The interaction layer (``TeacherConfig.interaction``): ``cross``, DCN-v2's low-rank
    cross network (TorchRec ``LowRankCrossNet``); ``dot``, DLRM's pairwise dot products
    of the dense vector and the embeddings (TorchRec ``InteractionArch``); ``fm``, the
    embeddings next to their FM bi-interaction vector (a DeepFM-style wide term).

    A module of its own so a trainer can hand exactly these parameters to another
    engine (DDP or DeepSpeed ZeRO, ``teacher/engine.py``) while the tables stay sharded.

    Shapes: ``forward(emb [B, F * E], dense [B, D_in])`` returns ``TeacherOutputs``.
    """

    def __init__(self, spec: FeatureSpec, cfg: TeacherConfig, n_sparse: int) -> None:
        super().__init__()
        e = cfg.embedding_dim
        self.dense_arch = MLP(len(spec.dense), [*cfg.dense_layers[:-1], e]) \
            if spec.dense else None
        self.kind, self.n_sparse, self.e = cfg.interaction, n_sparse, e
        width = (n_sparse + (1 if spec.dense else 0)) * e
        if cfg.interaction == "cross":
            self.cross = LowRankCrossNet(width, cfg.cross_layers, cfg.cross_rank)
        elif cfg.interaction == "dot":
            self.dot = InteractionArch(num_sparse_features=n_sparse)
        width = interaction_width(n_sparse, bool(spec.dense), cfg)
        self.over = MLP(width, list(cfg.over_layers))
        self.heads = TaskHeads(cfg.over_layers[-1], spec.tasks)

    def forward(self, emb: torch.Tensor, dense: torch.Tensor) -> TeacherOutputs:
        parts = [emb]
        if self.dense_arch is not None:
            parts.append(self.dense_arch(dense))
        x = torch.cat(parts, dim=1)
        if self.kind == "cross":
            interaction = self.cross(x)
        elif self.kind == "dot":
            d = parts[1] if len(parts) > 1 else emb.new_zeros(emb.shape[0], self.e)
            interaction = self.dot(d, emb.view(emb.shape[0], self.n_sparse, self.e))
        else:
            fields = x.view(x.shape[0], -1, self.e)
            interaction = torch.cat([x, bi_interaction(fields)], dim=1)
        hidden = self.over(interaction)
        return TeacherOutputs(logits=self.heads(hidden), features={
            "pooled_embeddings": emb, "interaction": interaction, "last_hidden": hidden})


@register_teacher("builtin")
def _builtin(spec: FeatureSpec, cfg: TeacherConfig, n_sparse: int) -> nn.Module:
    return DenseTower(spec, cfg, n_sparse)


def build_tower(spec: FeatureSpec, cfg: TeacherConfig, n_sparse: int) -> nn.Module:
    """``cfg.arch``'s tower, initialised from ``cfg.seed`` (torch's global generator is
    left as it was)."""
    builder = TEACHERS.builder(cfg.arch)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return builder(spec, cfg, n_sparse)


class TeacherModel(nn.Module):
    """Multi-task ranking model over a :class:`FeatureSpec`: the tables, and the tower
    ``cfg.arch`` names (default: DCN-v2, ``DenseTower``).

    Args:
        spec: the dataset schema.
        cfg: widths and depths.
        device: where the embedding tables are built; ``meta`` (the default) allocates
            nothing, and ``teacher.sharding`` materialises the shards on their ranks.
            The dense tower is small and always built, seeded, on the CPU.

    Shapes: ``forward(dense [B, D_in], sparse KJT with stride B)`` returns
    ``TeacherOutputs(logits [B, T], features)`` with ``pooled_embeddings`` [B, F * E],
    ``interaction`` [B, (F + 1) * E] and ``last_hidden`` [B, over_layers[-1]].
    """

    def __init__(self, spec: FeatureSpec, cfg: TeacherConfig,
                 device: torch.device | str = "meta") -> None:
        super().__init__()
        self.tasks = spec.tasks
        self.feature_names = teacher_features(spec, cfg)
        self.ebc = EmbeddingBagCollection(tables=embedding_tables(spec, cfg),
                                          device=torch.device(device))
        self.tower = build_tower(spec, cfg, len(self.feature_names))

    def pool(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Pooled embeddings of every sparse feature, [B, F * E], in feature order."""
        pooled = self.ebc(sparse)
        # KeyedTensor values are [B, sum of widths] in the EBC's feature order (fp16
        # from fp16 tables: the dense tower computes in fp32).
        return torch.cat([pooled[n] for n in self.feature_names], dim=1).float()

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> TeacherOutputs:
        return self.tower(self.pool(sparse), dense)
