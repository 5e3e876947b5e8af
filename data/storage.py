"""Where a run's files live: a local directory or an object-store URI.

A location is a string: a local path (made absolute where the driver names it, so every
actor on the same node, or on nodes sharing the filesystem, finds the same file) or a
URI (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///abs/path``) that any
node reaches. URIs go through pyarrow's filesystems (``pyarrow.fs.FileSystem.from_uri``),
as Ray Data and Ray Train's ``storage_path`` do: credentials and endpoints come from
the environment as pyarrow takes them (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``) or from the URI's query
(``?endpoint_override=http://host:port``). :func:`shown` is what messages and logs
print: the query (which may hold keys) is dropped.

DCP directories on any of these: ``recdistill.common.checkpoint.dcp_writer`` and
``dcp_reader``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from recdistill.data.errors import ConfigError

SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")


class StorageError(ConfigError):
    """A storage location that cannot be opened, read or written (no such bucket, no
    credentials, an endpoint that does not answer); the message names it as
    :func:`shown` does. A ``ConfigError``: the jobs end on it with one line, exit 2."""


@contextlib.contextmanager
def _named(location: str | os.PathLike, what: str) -> Iterator[None]:
    """pyarrow's OSErrors (other than a missing file) as a StorageError naming
    ``location``."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as e:
        raise StorageError(f"{shown(location)}: cannot {what} ({e})") from e


def is_uri(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a URI of a filesystem pyarrow knows (not a local path)."""
    s = os.fspath(location)
    return "://" in s and s.split("://", 1)[0].lower() in SCHEMES


def absolute(location: str | os.PathLike) -> str:
    """A URI as it is; a local path made absolute in this process."""
    s = os.fspath(location)
    return s if is_uri(s) else str(Path(s).expanduser().resolve())


def location(given: str, key: str) -> str:
    """A location a user gave (``key`` names where): made :func:`absolute`; a URI
    without a query or user info, which would put keys in logs.

    Raises:
        ConfigError: a URI with either, naming ``key``.
    """
    if is_uri(given):
        u = urlsplit(given)
        if u.query or u.username or u.password:
            raise ConfigError(f"{key}: give the endpoint and credentials in the environment "
                              "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), not in the URI")
    return absolute(given)


def join(location: str | os.PathLike, *parts: str) -> str:
    """``location``/part/...: a path joined as paths are, a URI's path extended with its
    query kept at the end."""
    s = os.fspath(location)
    if not is_uri(s):
        return str(Path(s, *parts))
    u = urlsplit(s)
    path = "/".join([u.path.rstrip("/"), *(p.strip("/") for p in parts)])
    return urlunsplit((u.scheme, u.netloc, path, u.query, ""))


def parent(location: str | os.PathLike) -> str:
    """The directory holding ``location``."""
    s = os.fspath(location)
    if not is_uri(s):
        return str(Path(s).parent)
    u = urlsplit(s)
    return urlunsplit((u.scheme, u.netloc, u.path.rstrip("/").rsplit("/", 1)[0],
                       u.query, ""))


def shown(location: str | os.PathLike) -> str:
    """``location`` as logs and messages print it: a URI without its query or user
    info (either may hold credentials)."""
    s = os.fspath(location)
    if not is_uri(s):
        return s
    u = urlsplit(s)
    return urlunsplit((u.scheme, u.netloc.rsplit("@", 1)[-1], u.path, "", ""))


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, netloc: str, query: str) -> Any:
    import pyarrow.fs as pafs
    try:
        fs, _ = pafs.FileSystem.from_uri(urlunsplit((scheme, netloc, "/", query, "")))
    except Exception as e:  # noqa: BLE001 - pyarrow's errors vary by filesystem
        raise StorageError(f"{scheme}://{netloc}: cannot open this storage ({e})") from e
    return fs


def filesystem(location: str | os.PathLike) -> tuple[Any, str]:
    """The pyarrow filesystem of ``location`` and the path inside it."""
    import pyarrow.fs as pafs
    s = os.fspath(location)
    if not is_uri(s):
        return pafs.LocalFileSystem(), absolute(s)
    u = urlsplit(s)
    if u.scheme == "file":
        return pafs.LocalFileSystem(), u.path
    return _filesystem(u.scheme, u.netloc, u.query), (u.netloc + u.path).rstrip("/")


def local_path(location: str | os.PathLike) -> Path | None:
    """The local path of ``location`` (a path or a ``file://`` URI), or None."""
    s = os.fspath(location)
    if not is_uri(s):
        return Path(s)
    return Path(urlsplit(s).path) if s.startswith("file://") else None


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write a file whole: a local file through a temporary name and a rename, an
    object in one upload (an object store shows it only once complete), so a reader
    never sees half of it."""
    local = local_path(location)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, local)
        return
    fs, path = filesystem(location)
    with _named(location, "write"), fs.open_output_stream(path) as f:
        f.write(data)


def write_text(location: str | os.PathLike, text: str) -> None:
    write_bytes(location, text.encode())


def read_bytes(location: str | os.PathLike) -> bytes:
    """A file's bytes.

    Raises:
        FileNotFoundError: no such file (naming it as :func:`shown` does).
    """
    local = local_path(location)
    if local is not None:
        return local.read_bytes()
    fs, path = filesystem(location)
    try:
        with _named(location, "read"), fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{shown(location)}: no such file") from None


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode()


def _type(location: str | os.PathLike) -> Any:
    fs, path = filesystem(location)
    with _named(location, "look up"):
        return fs.get_file_info(path).type


def exists(location: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs
    return _type(location) != pafs.FileType.NotFound


def is_file(location: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs
    return _type(location) == pafs.FileType.File


def is_dir(location: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs
    return _type(location) == pafs.FileType.Directory


def listdir(location: str | os.PathLike) -> list[str]:
    """The names directly under ``location``, sorted; none if it does not exist or is
    a file."""
    import pyarrow.fs as pafs
    fs, path = filesystem(location)
    try:
        with _named(location, "list"):
            infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except NotADirectoryError:
        return []
    return sorted(i.base_name for i in infos)


def sizes(location: str | os.PathLike) -> dict[str, int]:
    """Every file under ``location`` (its path relative to it) -> its size in bytes."""
    import pyarrow.fs as pafs
    fs, path = filesystem(location)
    with _named(location, "list"):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True,
                                                   allow_not_found=True))
    return {i.path[len(path):].lstrip("/"): i.size for i in infos
            if i.type == pafs.FileType.File}


def walk(location: str | os.PathLike) -> list[str]:
    """Every file under ``location``, as paths relative to it, sorted."""
    return sorted(sizes(location))


def makedirs(location: str | os.PathLike) -> None:
    fs, path = filesystem(location)
    with _named(location, "create a directory"):
        fs.create_dir(path, recursive=True)


def rmtree(location: str | os.PathLike) -> None:
    """Delete a directory and all under it; nothing if it does not exist."""
    local = local_path(location)
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
        return
    if exists(location):
        fs, path = filesystem(location)
        with _named(location, "delete"):
            fs.delete_dir(path)


def upload_dir(local: str | os.PathLike, location: str | os.PathLike) -> None:
    """Copy the local directory ``local`` to ``location`` (any storage), file by file."""
    import pyarrow.fs as pafs
    fs, path = filesystem(location)
    pafs.copy_files(os.fspath(local), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def download_dir(location: str | os.PathLike, local: str | os.PathLike) -> None:
    """Copy the directory ``location`` (any storage) into the local directory ``local``."""
    import pyarrow.fs as pafs
    fs, path = filesystem(location)
    pafs.copy_files(path, os.fspath(local), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())


@contextlib.contextmanager
def staged(location: str | os.PathLike) -> Iterator[str]:
    """A local directory whose files end up at ``location``: the directory itself when
    it is local, else a temporary one uploaded on a clean exit (for writers that only
    write local files, such as DeepSpeed's checkpoints)."""
    local = local_path(location)
    if local is not None:
        yield str(local)
        return
    with tempfile.TemporaryDirectory(prefix="recdistill-stage-") as tmp:
        yield tmp
        upload_dir(tmp, location)


@contextlib.contextmanager
def fetched(location: str | os.PathLike) -> Iterator[str]:
    """``location`` as a local directory: itself when local, else a temporary copy."""
    local = local_path(location)
    if local is not None:
        yield str(local)
        return
    with tempfile.TemporaryDirectory(prefix="recdistill-fetch-") as tmp:
        download_dir(location, tmp)
        yield tmp


def torch_save(obj: Any, location: str | os.PathLike) -> None:
    """``torch.save`` to any storage, written whole (:func:`write_bytes`)."""
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(location, buf.getvalue())


def torch_load(location: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` from any storage."""
    import torch
    return torch.load(io.BytesIO(read_bytes(location)), weights_only=True)


def mtime(location: str | os.PathLike) -> float:
    """A file's modification time (seconds since the epoch).

    Raises:
        FileNotFoundError: no such file.
    """
    import pyarrow.fs as pafs
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{shown(location)}: no such file")
    return info.mtime.timestamp()


def probe(location: str | os.PathLike) -> None:
    """Write, read back and delete a small file under ``location``: a storage the job
    cannot use fails here, before any work, naming it.

    Raises:
        StorageError: as above.
    """
    path = join(location, f".recdistill-probe-{os.getpid()}")
    try:
        write_bytes(path, b"ok")
        if read_bytes(path) != b"ok":
            raise StorageError(f"{shown(location)}: a file written there reads back "
                               "other bytes")
        fs, inner = filesystem(path)
        with _named(path, "delete"):
            fs.delete_file(inner)
    except OSError as e:  # local paths: permissions, a file where a directory must be
        raise StorageError(f"{shown(location)}: cannot write there ({e})") from e
