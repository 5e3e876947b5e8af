"""What every actor process of the job sets up: its rendezvous and process group, and a
native-crash handler."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import socket
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

from recdistill.teacher.sharding import backend_for

# A collective that waits this long on a dead peer fails instead of hanging the group.
COLLECTIVE_TIMEOUT = timedelta(seconds=30)
_STORE_SOCKETS: list[socket.socket] = []  # rendezvous sockets this process serves


def enable_faulthandler() -> None:
    """A native crash (a kernel, gloo) leaves every thread's stack in the actor's log:
    without it the raylet only sees the worker disconnect."""
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)


def node_address() -> str:
    """This node's address for rendezvous: loopback unless Ray runs on a real network."""
    import ray
    return ray.util.get_node_ip_address()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def actor_device() -> torch.device:
    """The device Ray gave this actor: its first GPU (Ray sets CUDA_VISIBLE_DEVICES to
    the GPUs it assigned, so that is ``cuda:0``), else the CPU. Never a GPU the actor
    did not reserve: Ray leaves CUDA_VISIBLE_DEVICES alone for an actor of no GPUs, so
    ``torch.cuda.is_available()`` alone would put every such actor on GPU 0."""
    import ray
    if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def io_group(timeout_s: float) -> dist.ProcessGroup:
    """A gloo group over the default group's ranks for checkpoint I/O (DCP's and its
    barriers' waits, on CPU or GPU ranks alike), with a timeout of its own: a save or
    load of large tables on slow storage takes longer than a training collective
    should wait on a dead peer. Every rank calls this together."""
    return dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))


@contextlib.contextmanager
def io_call(who: str, call: str, timeout_s: float) -> Iterator[None]:
    """A checkpoint call whose I/O group failed (a peer that never came: the group's
    timeout) fails naming ``who``, the call and the timeout; a checkpoint that is not
    ours (``CheckpointError``) passes unchanged. DCP raises its ``CheckpointException``,
    a ``BaseException``, for what failed on any rank."""
    from torch.distributed.checkpoint.api import CheckpointException

    from recdistill.common.checkpoint import CheckpointError
    try:
        yield
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - named and re-raised
        raise RuntimeError(f"{who}: {call} failed (checkpoint I/O waits at most "
                           f"checkpoint_timeout_s = {timeout_s:g} s on the other "
                           f"ranks): {type(e).__name__}: {e}") from e


def init_group(addr: str, port: int, rank: int, world: int, device: torch.device) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    while _STORE_SOCKETS:  # a previous group's rendezvous
        _STORE_SOCKETS.pop().close()
    if addr.startswith("127."):
        # A local run keeps gloo's sockets (the group's, or the checkpoint I/O group beside
        # nccl) and nccl's bootstrap on loopback too (nothing listens beyond loopback).
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        if backend_for(device) == "nccl":
            os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    # Rank 0 serves the rendezvous store. Left to itself, torch's TCPStore listens on
    # every interface; given a socket bound to the group's address it listens there only.
    listen = None
    if rank == 0:
        listen = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listen.bind((addr, port))
        listen.listen(max(8, 2 * world))
        _STORE_SOCKETS.append(listen)  # the store uses the fd: keep the socket open
    if device.type == "cuda":  # nccl's communicator is bound to the current device
        torch.cuda.set_device(device)
    store = dist.TCPStore(addr, port, world, rank == 0, timeout=COLLECTIVE_TIMEOUT,
                          master_listen_fd=listen.fileno() if listen is not None else None)
    dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)


def rss_bytes() -> int:
    """This process's resident memory now."""
    import psutil
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
