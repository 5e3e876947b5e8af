"""What every actor process of the job sets up: its rendezvous and process group, and a
native-crash handler."""

from __future__ import annotations

import faulthandler
import os
import socket
from datetime import timedelta

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


def init_group(addr: str, port: int, rank: int, world: int, device: torch.device) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    while _STORE_SOCKETS:  # a previous group's rendezvous
        _STORE_SOCKETS.pop().close()
    if addr.startswith("127.") and backend_for(device) == "gloo":
        # A local run keeps gloo's sockets on loopback too (nothing listens beyond loopback).
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # Rank 0 serves the rendezvous store. Left to itself, torch's TCPStore listens on
    # every interface; given a socket bound to the group's address it listens there only.
    listen = None
    if rank == 0:
        listen = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listen.bind((addr, port))
        listen.listen(max(8, 2 * world))
        _STORE_SOCKETS.append(listen)  # the store uses the fd: keep the socket open
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
