"""The distilled student as something to take away: a directory per group.

``<dir>/student.json`` holds the student's config, the schema and dataset fingerprint
it was trained on (the features it reads and their vocabulary sizes) and its metrics;
``<dir>/transform.json`` (with a Parquet file per vocabulary) how raw rows of its
dataset became inputs, when the dataset was read from files (``data/transform.py``);
``<dir>/weights/`` its serving weights (no adapters, auxiliary heads or optimizer) as a
torch.distributed.checkpoint directory, which loads into a plain model however many
replicas held the tables. Written atomically (``<dir>.partial``, renamed when
complete); loaded weights-only, and a missing, tampered or foreign artifact fails with
its path.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed.checkpoint as dcp

from recdistill.common.checkpoint import CheckpointError, dcp_reader
from recdistill.data import storage
from recdistill.data.configs import from_mapping, to_mapping
from recdistill.data.spec import Batch, FeatureSpec
from recdistill.student.config import LossTerm, StudentConfig
from recdistill.student.model import StudentModel

META_FILE = "student.json"
WEIGHTS = "weights"
FORMAT = 1


def serving_config(cfg: StudentConfig) -> StudentConfig:
    """The config of the serving model: no adapters, auxiliary heads or teacher
    adapter (what ``export_state_dict`` drops is not built); its losses do not matter
    there (the artifact's ``student.json`` keeps the trained config)."""
    return replace(cfg, adapters={}, aux_heads=False, teacher_adapter=False,
                   sharding="none", losses=(LossTerm("hard_label"),))


def write_artifact(path: str | os.PathLike[str], write_weights: Callable[[str], None], *,
                   cfg: StudentConfig, spec: FeatureSpec, fingerprint: dict[str, Any],
                   metrics: dict[str, Any], data: dict[str, Any] | None = None,
                   transform: Any = None) -> str:
    """Write a student artifact to ``path``, a local directory (replaced atomically if
    it exists: written as ``<path>.partial`` and renamed) or a storage URI (no rename
    there: the old one is deleted first and ``student.json`` written last; a reader
    refuses a directory without it).

    ``data``: how the dataset was loaded (``split``, ``seed``, ``rows``,
    ``max_cardinality``), the defaults of ``jobs.predict``.

    ``write_weights(dir)`` writes the serving weights there with DCP (every replica of
    a sharded group together).
    """
    final = os.fspath(path)
    local = not storage.is_uri(final)
    partial = final + ".partial" if local else final
    storage.rmtree(partial)
    storage.makedirs(partial)
    write_weights(storage.join(partial, WEIGHTS))
    if transform is not None:  # a data.transform.RowTransform
        transform.save(partial)
    model = StudentModel(spec, serving_config(cfg), table_device="meta")
    meta = {"format": FORMAT, "student": to_mapping(cfg), "spec": spec.to_dict(),
            "fingerprint": fingerprint, "features": {
                n: spec.feature(n).cardinality for n in model.feature_names},
            "serving_parameters": sum(p.numel() for p in model.parameters()),
            "data": data or {}, "metrics": metrics}
    storage.write_text(storage.join(partial, META_FILE), json.dumps(meta, indent=2))
    if local:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    return final


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = storage.shown(storage.join(path, META_FILE))
    try:
        meta = json.loads(storage.read_text(storage.join(path, META_FILE)))
    except FileNotFoundError:
        raise CheckpointError(f"{storage.shown(path)}: not a student artifact (no "
                              f"{META_FILE})") from None
    except ValueError as e:
        raise CheckpointError(f"{p}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a student artifact of format {FORMAT}")
    return meta


def load_artifact(path: str | os.PathLike[str]
                  ) -> tuple[StudentModel, FeatureSpec, dict[str, Any]]:
    """The serving student of artifact ``path`` (eval mode), its schema and metadata."""
    meta = read_meta(path)
    where = storage.shown(storage.join(path, META_FILE))
    try:
        spec = FeatureSpec.from_dict(meta["spec"])
        cfg = from_mapping(StudentConfig, meta["student"], "student")
    except Exception as e:  # noqa: BLE001 - any bad field: a bad file
        raise CheckpointError(f"{where}: unreadable student metadata ({e})") from None
    model = StudentModel(spec, serving_config(cfg))
    state = model.state_dict()
    try:
        dcp.load(state, storage_reader=dcp_reader(storage.join(path, WEIGHTS)))
    except BaseException as e:  # noqa: BLE001 - DCP wraps reader errors in a BaseException
        raise CheckpointError(f"{storage.shown(storage.join(path, WEIGHTS))}: cannot load the student's "
                              f"weights ({str(e).splitlines()[-1] if str(e) else e})") from None
    model.load_state_dict(state)
    return model.eval(), spec, meta


class ServingStudent(torch.nn.Module):
    """The serving forward on plain tensors, for ``torch.export``: ``(dense [B, D],
    values [V], lengths [F * B])`` (the KJT's key-major values and lengths, keys in
    the student's feature order) -> logits [B, T]."""

    def __init__(self, model: StudentModel) -> None:
        super().__init__()
        self.model = model
        self.keys = list(model.feature_names)

    def forward(self, dense: torch.Tensor, values: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        kjt = KeyedJaggedTensor.from_lengths_sync(self.keys, values, lengths)
        return self.model(dense, kjt).logits


def export_inputs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch.dense, batch.sparse.values(), batch.sparse.lengths()


def export_serving(model: StudentModel, example: Batch, path: str | os.PathLike[str]
                   ) -> Path:
    """``torch.export`` the serving student (traced on ``example``'s shapes, batch size
    and id count dynamic) to ``path`` (``.pt2``)."""
    from torch.export import Dim
    module = ServingStudent(model).eval()
    args = export_inputs(example)
    batch, ids = Dim("batch", min=2), Dim("ids", min=2)
    features = len(module.keys)
    program = torch.export.export(
        module, args, dynamic_shapes=({0: batch}, {0: ids}, {0: features * batch}),
        strict=False)
    torch.export.save(program, str(path))
    return Path(path)


def load_export(path: str | os.PathLike[str]) -> Any:
    """A saved serving export, as a callable module."""
    import logging
    # The deserializer logs one line per unbacked size symbol the graph dropped.
    logging.getLogger("torch._export.serde.serialize").setLevel(logging.ERROR)
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:  # noqa: BLE001 - a bad or tampered file
        raise CheckpointError(f"{path}: not a loadable serving export ({e})") from None
