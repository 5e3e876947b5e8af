"""Teacher checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint is a directory: DCP's shards of the model state (one file per writing rank,
tables saved as they are sharded) plus ``recdistill.json`` with the schema, the teacher
config and training facts. DCP reshards on load, so a checkpoint written by 2 ranks loads
on 1 or 3, into a sharded or a plain model.

Writes are atomic: everything goes to ``<dir>.partial`` and is renamed into place only
when complete, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from data.configs import from_mapping, to_mapping
from data.spec import FeatureSpec
from teacher.config import TeacherConfig

META_FILE = "recdistill.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or not one of ours; the message names it."""


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` admitting only what such a file holds.

    DCP reads its metadata with a bare ``pickle.load``, which runs whatever a tampered
    file asks for. Model weights already load with ``weights_only=True`` inside DCP;
    this closes the other door: classes (not functions) of DCP's metadata modules, and
    the few torch and pathlib names a metadata file refers to.
    """

    _CLASS_MODULES = ("torch.distributed.checkpoint.metadata",
                      "torch.distributed.checkpoint.filesystem")
    _NAMES = {("torch", "Size"), ("torch.serialization", "_get_layout"),
              ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
              ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
              ("collections", "OrderedDict")}
    _DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._NAMES or (module == "torch" and name in self._DTYPES):
            return super().find_class(module, name)
        if module in self._CLASS_MODULES:
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, "
                                     "which a DCP metadata file never holds")


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with a restricted unpickler for the metadata file."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{path.parent}: not a complete checkpoint "
                                  "(no .metadata)") from None
        try:
            metadata = _MetadataUnpickler(io.BytesIO(data)).load()
        except Exception as e:  # noqa: BLE001 - any failure here means a bad file
            raise CheckpointError(f"{path}: unreadable checkpoint metadata ({e})") from e
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: not DCP metadata")
        # The rest mirrors FileSystemReader.read_metadata.
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _first_cause(e: BaseException) -> str:
    """The most telling line of a (possibly DCP-wrapped, multi-rank) load failure."""
    text = str(e)
    for line in text.splitlines():
        if "read failed:" in line:
            return line.split("read failed:", 1)[1].split(";")[0].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_teacher(model: nn.Module, path: str | os.PathLike[str], *, spec: FeatureSpec,
                 cfg: TeacherConfig, info: dict[str, Any] | None = None) -> Path:
    """Write the model's state to checkpoint directory ``path``; every rank calls this.

    Args:
        model: the teacher, sharded (DistributedModelParallel) or plain.
        path: checkpoint directory; replaced atomically if it exists.
        spec: the schema the teacher was trained on.
        cfg: the teacher's config.
        info: extra JSON-ready facts (step, epoch, metrics, world size).
    """
    final = Path(path)
    partial = final.with_name(final.name + ".partial")
    if _rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
    _barrier()
    dcp.save(model.state_dict(), checkpoint_id=str(partial))
    _barrier()
    if _rank() == 0:
        meta = {"format": FORMAT_VERSION, "spec": spec.to_dict(),
                "teacher": to_mapping(cfg), "info": info or {},
                "world_size": dist.get_world_size() if dist.is_initialized() else 1}
        tmp = partial / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, partial / META_FILE)  # the meta file marks the copy complete
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def read_meta(path: str | os.PathLike[str]) -> tuple[FeatureSpec, TeacherConfig, dict[str, Any]]:
    """The schema, teacher config and info of a checkpoint, without loading weights."""
    p = Path(path)
    meta_path = p / META_FILE
    if not p.is_dir():
        raise CheckpointError(f"{p}: checkpoint directory not found")
    if not meta_path.is_file():
        raise CheckpointError(f"{p}: not a complete recdistill checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, this "
                                  f"version reads {FORMAT_VERSION}")
        spec = FeatureSpec.from_dict(meta["spec"])
        cfg = from_mapping(TeacherConfig, meta["teacher"], "teacher")
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - JSON, key or value errors: a bad file
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({e})") from e
    return spec, cfg, dict(meta.get("info", {}), world_size=meta.get("world_size", 1))


def load_teacher_state(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load checkpoint ``path`` into ``model`` (sharded or plain); every rank calls this.

    DCP reads the pieces each rank's shards need, whatever world size wrote them.
    """
    read_meta(path)  # clear error for a missing or incomplete directory
    state = model.state_dict()
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(str(path)))
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP wraps reader
        # errors in CheckpointException, a BaseException; keep its first line only.
        raise CheckpointError(f"{path}: cannot load checkpoint "
                              f"({_first_cause(e)})") from e
    model.load_state_dict(state)
