"""Shared fixtures. Tests run with one intra-op thread (several processes share 2 cores)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def movielens():
    from recdistill.data.movielens import load_movielens
    return load_movielens()


@pytest.fixture()
def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The books count batches; every run in the tests also books each example id, and
    # fails on one trained twice (RunOptions.audit_ids; subprocess jobs inherit it).
    os.environ.setdefault("RECDISTILL_AUDIT_IDS", "1")


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """One real single-node Ray cluster for every Ray test (ray.init costs ~5 s); its
    workers reach the ``s3`` server, as a cluster's nodes have their storage's keys in
    their environment."""
    import ray

    from recdistill.cluster.session import start_local_ray
    start_local_ray(16, dashboard=False)  # as the jobs start theirs: loopback only
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-compatible server on 127.0.0.1 (SeaweedFS, tests/s3server.py) with the
    bucket ``runs``; its variables set in this process (pyarrow reads them) while it
    runs, so every process started after that reaches it too."""
    from s3server import start_s3
    server = start_s3(tmp_path_factory.mktemp("s3"))
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
