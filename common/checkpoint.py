"""Reading torch.distributed.checkpoint (DCP) directories without running their code:
what teacher checkpoints, sharded student states and student artifacts share.

Tensors load with ``weights_only=True`` inside DCP; DCP's pickled ``.metadata`` is read
here with an unpickler that admits only DCP's own classes, so a tampered file fails
with a :class:`CheckpointError` naming it instead of running what it asks for.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.arrow import ArrowFSWrapper
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import (
    FileSystem as _FsspecFileSystem)
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from recdistill.data import storage


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
        """The global ``module.name`` if a DCP metadata file may refer to it.

        Raises:
            pickle.UnpicklingError: anything else.
        """
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
        """The checkpoint's DCP metadata, read with :class:`_MetadataUnpickler`.

        Raises:
            CheckpointError: no ``.metadata``, or one that is unreadable or not DCP's.
        """
        meta = self._get_metadata_path(kwargs.get("rank"))
        where = getattr(self, "shown", None) or str(Path(meta).parent)  # a URI's, redacted
        path = f"{where}/{Path(meta).name}"
        try:
            with self.fs.create_stream(meta, "rb") as f:  # a local file or a URI's object
                data = f.read()
        except FileNotFoundError:
            raise CheckpointError(f"{where}: not a complete checkpoint "
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


def first_cause(e: BaseException) -> str:
    """The most telling line of a (possibly DCP-wrapped, multi-rank) load failure."""
    text = str(e)
    for line in text.splitlines():
        if "read failed:" in line:
            return line.split("read failed:", 1)[1].split(";")[0].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


class _ArrowDCPFileSystem(_FsspecFileSystem):
    """DCP's fsspec storage over pyarrow's filesystem of a URI (fsspec's own
    ``url_to_fs`` would need s3fs/gcsfs installed for the same thing)."""

    def init_path(self, path: str | os.PathLike, **kwargs: Any) -> str:
        fs, inner = storage.filesystem(path)
        self.fs = ArrowFSWrapper(fs)
        return inner


class _UriWriter(FileSystemWriter):
    """DCP's file writer on :class:`_ArrowDCPFileSystem` (as DCP's ``FsspecWriter``)."""

    def __init__(self, location: str | os.PathLike, **kwargs: Any) -> None:
        super().__init__(os.fspath(location), **kwargs)
        self.fs = _ArrowDCPFileSystem()
        self.path = self.fs.init_path(location)


class _SafeUriReader(SafeFileSystemReader):
    """:class:`SafeFileSystemReader` on :class:`_ArrowDCPFileSystem`."""

    def __init__(self, location: str | os.PathLike) -> None:
        super().__init__("/")  # a local reader, re-pointed at the URI
        self.fs = _ArrowDCPFileSystem()
        self.path = self.fs.init_path(location)
        self.shown = storage.shown(location)


def dcp_writer(location: str | os.PathLike, **kwargs: Any) -> Any:
    """A DCP ``StorageWriter`` for ``location``: DCP's file writer for a local path,
    its fsspec writer over pyarrow for a URI."""
    local = storage.local_path(location)
    return FileSystemWriter(local, **kwargs) if local is not None \
        else _UriWriter(location, **kwargs)


def dcp_reader(location: str | os.PathLike) -> Any:
    """A DCP ``StorageReader`` for ``location`` whose ``.metadata`` is unpickled with
    the restricted unpickler of :mod:`recdistill.common.checkpoint`."""
    local = storage.local_path(location)
    return SafeFileSystemReader(str(local)) if local is not None \
        else _SafeUriReader(location)
