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
def ray_cluster():
    """One real single-node Ray cluster for every Ray test (ray.init costs ~5 s)."""
    import ray

    from recdistill.cluster.session import start_local_ray
    start_local_ray(16, dashboard=False)  # as the jobs start theirs: loopback only
    yield ray
    ray.shutdown()
