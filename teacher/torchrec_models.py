"""TorchRec's own ranking models (``torchrec.models``) as teacher towers.

``torchrec.models.dlrm.DLRM`` / ``DLRM_DCN`` and ``torchrec.models.deepfm`` are each a
``SparseArch`` (an EmbeddingBagCollection, pooled to [B, F, D]) and dense arches on top.
Here the tables are the teacher's own EmbeddingBagCollection (sharded, quantized and
checkpointed by this project), and the tower is built from the models' other arches,
the same classes the TorchRec models use:

- ``torchrec_dlrm``: ``dlrm.DenseArch`` -> ``dlrm.InteractionArch`` (pairwise dot
  products) -> ``dlrm.OverArch``, whose last layer has one output per task.
- ``torchrec_dlrm_dcn``: the same with ``dlrm.InteractionDCNArch`` over TorchRec's
  ``LowRankCrossNet`` (``DLRM_DCN``).
- ``torchrec_deepfm``: ``deepfm.DenseArch`` -> ``deepfm.FMInteractionArch`` (DeepFM's
  deep and FM terms) -> an MLP and one linear head per task (``deepfm.OverArch`` is one
  sigmoid output: a probability for a single task, where distillation needs logits per
  task).

Settings come from ``[teacher]``: ``embedding_dim``, ``dense_layers`` (the dense arch;
its last width is set to ``embedding_dim``, as the models require), ``over_layers``,
``cross_layers`` and ``cross_rank`` (DCN); ``arch_params.deep_fm_dimension`` (DeepFM,
default 64). Features: ``pooled_embeddings``, ``interaction`` (the interaction arch's
output) and ``last_hidden`` (the input of the last layer).
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.models import deepfm, dlrm
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedTensor

from recdistill.data.errors import ConfigError
from recdistill.data.spec import FeatureSpec
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.model import TaskHeads
from recdistill.teacher.outputs import TeacherOutputs
from recdistill.teacher.registry import register_teacher


class DLRMTower(nn.Module):
    """DLRM (``interaction = "dot"``) or DLRM_DCN (``"dcn"``) without its SparseArch."""

    def __init__(self, spec: FeatureSpec, cfg: TeacherConfig, n_sparse: int,
                 interaction: str) -> None:
        super().__init__()
        e = cfg.embedding_dim
        self.n_sparse, self.e = n_sparse, e
        # DLRM needs a dense vector of width E beside the embeddings; a dataset without
        # dense features gets zeros there (the DenseArch has no input to read)
        self.dense_arch = dlrm.DenseArch(len(spec.dense), [*cfg.dense_layers[:-1], e]) \
            if spec.dense else None
        if interaction == "dot":
            self.inter_arch: nn.Module = dlrm.InteractionArch(num_sparse_features=n_sparse)
            width = e + n_sparse * (n_sparse + 1) // 2  # dense, then the F+1 choose 2 dots
        else:
            self.inter_arch = dlrm.InteractionDCNArch(
                num_sparse_features=n_sparse,
                crossnet=LowRankCrossNet(in_features=(n_sparse + 1) * e,
                                         num_layers=cfg.cross_layers,
                                         low_rank=cfg.cross_rank))
            width = (n_sparse + 1) * e
        self.over_arch = dlrm.OverArch(width, [*cfg.over_layers, len(spec.tasks)])

    def forward(self, emb: torch.Tensor, dense: torch.Tensor) -> TeacherOutputs:
        b = emb.shape[0]
        d = self.dense_arch(dense) if self.dense_arch is not None \
            else emb.new_zeros(b, self.e)
        interaction = self.inter_arch(d, emb.view(b, self.n_sparse, self.e))
        mlp, last = self.over_arch.model[0], self.over_arch.model[1]
        hidden = mlp(interaction)
        return TeacherOutputs(logits=last(hidden), features={
            "pooled_embeddings": emb, "interaction": interaction, "last_hidden": hidden})


class DeepFMTower(nn.Module):
    """DeepFM's dense and FM-interaction arches, then an MLP and a head per task."""

    def __init__(self, spec: FeatureSpec, cfg: TeacherConfig, n_sparse: int) -> None:
        super().__init__()
        e = cfg.embedding_dim
        di = int(cfg.arch_params.get("deep_fm_dimension", 64))
        if di < 1:
            raise ConfigError(f"teacher.arch_params.deep_fm_dimension must be >= 1, got {di}")
        self.names = [f"f{i}" for i in range(n_sparse)]
        self.n_sparse, self.e = n_sparse, e
        self.dense_arch = deepfm.DenseArch(len(spec.dense), cfg.dense_layers[0], e) \
            if spec.dense else None
        self.inter_arch = deepfm.FMInteractionArch(
            fm_in_features=(n_sparse + 1) * e, sparse_feature_names=self.names,
            deep_fm_dimension=di)
        self.over = MLP(e + di + 1, list(cfg.over_layers))
        self.heads = TaskHeads(cfg.over_layers[-1], spec.tasks)

    def forward(self, emb: torch.Tensor, dense: torch.Tensor) -> TeacherOutputs:
        b = emb.shape[0]
        d = self.dense_arch(dense) if self.dense_arch is not None \
            else emb.new_zeros(b, self.e)
        sparse = KeyedTensor(keys=self.names, length_per_key=[self.e] * self.n_sparse,
                             values=emb)
        interaction = self.inter_arch(d, sparse)
        hidden = self.over(interaction)
        return TeacherOutputs(logits=self.heads(hidden), features={
            "pooled_embeddings": emb, "interaction": interaction, "last_hidden": hidden})


@register_teacher("torchrec_dlrm")
def _dlrm(spec: FeatureSpec, cfg: TeacherConfig, n_sparse: int) -> nn.Module:
    return DLRMTower(spec, cfg, n_sparse, "dot")


@register_teacher("torchrec_dlrm_dcn")
def _dlrm_dcn(spec: FeatureSpec, cfg: TeacherConfig, n_sparse: int) -> nn.Module:
    return DLRMTower(spec, cfg, n_sparse, "dcn")


@register_teacher("torchrec_deepfm")
def _deepfm(spec: FeatureSpec, cfg: TeacherConfig, n_sparse: int) -> nn.Module:
    return DeepFMTower(spec, cfg, n_sparse)
