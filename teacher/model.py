"""The teacher: a TorchRec multi-task ranking model (DCN-v2 style).

Sparse features -> EmbeddingBagCollection (FBGEMM kernels once sharded) -> pooled
embeddings; dense features -> MLP; both concatenated -> low-rank cross network ->
MLP -> one linear head per task. The model knows nothing of sharding, Ray or
DeepSpeed: ``teacher/sharding.py`` shards it from outside.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data.spec import FeatureSpec
from teacher.config import TeacherConfig
from teacher.outputs import TeacherOutputs


def teacher_features(spec: FeatureSpec, cfg: TeacherConfig) -> tuple[str, ...]:
    """Sparse features the teacher reads, in KeyedJaggedTensor key order."""
    drop = () if cfg.use_privileged else spec.privileged
    return tuple(n for n in spec.sparse_names if n not in drop)


def feature_dims(spec: FeatureSpec, cfg: TeacherConfig) -> dict[str, int]:
    """Width of each named feature ``TeacherModel.forward`` returns."""
    n_slots = len(teacher_features(spec, cfg)) + (1 if spec.dense else 0)
    return {"pooled_embeddings": len(teacher_features(spec, cfg)) * cfg.embedding_dim,
            "interaction": n_slots * cfg.embedding_dim,
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
                pooling=PoolingType.MEAN)  # a bag's mean; a single id is its own row
    return list(tables.values())


class DenseTower(nn.Module):
    """Everything but the tables: dense MLP, cross network, over-arch MLP, task heads.

    A module of its own so a trainer can hand exactly these parameters to another
    engine (DDP or DeepSpeed ZeRO, ``teacher/engine.py``) while the tables stay sharded.

    Shapes: ``forward(emb [B, F * E], dense [B, D_in])`` returns ``TeacherOutputs``.
    """

    def __init__(self, spec: FeatureSpec, cfg: TeacherConfig, n_sparse: int) -> None:
        super().__init__()
        self.tasks = spec.tasks
        e = cfg.embedding_dim
        self.dense_arch = MLP(len(spec.dense), [*cfg.dense_layers[:-1], e]) \
            if spec.dense else None
        width = (n_sparse + (1 if spec.dense else 0)) * e
        self.cross = LowRankCrossNet(width, cfg.cross_layers, cfg.cross_rank)
        self.over = MLP(width, list(cfg.over_layers))
        self.heads = nn.ModuleDict(
            {t: nn.Linear(cfg.over_layers[-1], 1) for t in spec.tasks})

    def forward(self, emb: torch.Tensor, dense: torch.Tensor) -> TeacherOutputs:
        parts = [emb]
        if self.dense_arch is not None:
            parts.append(self.dense_arch(dense))
        x = torch.cat(parts, dim=1)
        interaction = self.cross(x)
        hidden = self.over(interaction)
        logits = torch.cat([self.heads[t](hidden) for t in self.tasks], dim=1)
        return TeacherOutputs(logits=logits, features={
            "pooled_embeddings": emb, "interaction": interaction, "last_hidden": hidden})


class TeacherModel(nn.Module):
    """Multi-task DCN-v2 ranking model over a :class:`FeatureSpec`.

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
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            self.tower = DenseTower(spec, cfg, len(self.feature_names))

    def pool(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Pooled embeddings of every sparse feature, [B, F * E], in feature order."""
        pooled = self.ebc(sparse)
        # KeyedTensor values are [B, sum of widths] in the EBC's feature order.
        return torch.cat([pooled[n] for n in self.feature_names], dim=1)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> TeacherOutputs:
        return self.tower(self.pool(sparse), dense)
