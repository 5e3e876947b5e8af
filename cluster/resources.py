"""Memory of a local run, sampled: every process's RSS and the object store's usage.

The benchmarks (``jobs.bench --suite scale``) and the soak use it to show that memory
stays bounded. Processes are the driver and all of its descendants (a local Ray
cluster's GCS, raylet, dashboard and workers are), named by role: Ray sets a worker's
process title to ``ray::<Actor or task>.<method>``, so the role is the part before the
method (``TeacherRank``, ``StudentReplica``, ``IDLE``, a Ray Data operator, ...).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil


def role(proc: psutil.Process, driver: int) -> str:
    """What a process of the run is: ``driver``, an actor/task name, or a Ray daemon."""
    if proc.pid == driver:
        return "driver"
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    if not cmd:
        return proc.name()
    head = cmd[0]
    if head.startswith("ray::"):
        name = head[5:].split(" ")[0]
        # "TeacherRank.label_next" -> "TeacherRank"; Ray Data operators keep their name
        return name.split(".")[0] if "(" not in name.split(".")[0] else name
    for arg in cmd[:3]:
        base = os.path.basename(arg)
        if base.endswith(".py"):
            return base[:-3]
    return os.path.basename(head)


def object_store_bytes() -> int | None:
    """Bytes in use in the object store of the connected cluster, or None if unknown.

    Read from the raylet's memory info, which is what ``ray memory --stats-only``
    prints; Ray has no public Python API for it (the dashboard exports it as a metric).
    """
    try:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address
        if not ray.is_initialized():
            return None
        # the connected cluster's GCS, named: with another cluster on the machine,
        # address=None cannot tell which one is meant
        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        reply = get_memory_info_reply(state, timeout_seconds=5)
        return int(reply.store_stats.object_store_bytes_used)
    except Exception:  # noqa: BLE001 - private API: absent or changed means unknown
        return None


_GENERIC = ("?", "IDLE", "default_worker")


@dataclass
class Sample:
    t: float
    rss: dict[int, int]  # pid -> bytes
    object_store: int | None
    # pid -> bytes of RSS not shared with other processes' mappings (RSS minus the
    # file-backed and shared-memory pages: the object store's arena that a process has
    # touched counts in its RSS and in every other process's that touched it too)
    private: dict[int, int] = field(default_factory=dict)


@dataclass
class ResourceSampler:
    """Samples every ``interval`` seconds on a thread until ``stop``.

    Use as a context manager around the work. ``roles`` maps pid -> role (the last
    seen); ``samples`` is the curve.
    """

    interval: float = 1.0
    object_store: bool = True
    samples: list[Sample] = field(default_factory=list)
    roles: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")
        self._driver = os.getpid()
        self._t0 = time.monotonic()

    def __enter__(self) -> "ResourceSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def sample(self) -> Sample:
        me = psutil.Process(self._driver)
        rss: dict[int, int] = {}
        private: dict[int, int] = {}
        for p in [me] + me.children(recursive=True):
            try:
                m = p.memory_info()
                rss[p.pid] = m.rss
                private[p.pid] = m.rss - getattr(m, "shared", 0)
                # A worker starts as default_worker.py, becomes ray::IDLE, then takes its
                # actor's or task's title: keep the most specific name seen.
                r = role(p, self._driver)
                if r not in _GENERIC or self.roles.get(p.pid, "?") in _GENERIC:
                    self.roles[p.pid] = r
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        s = Sample(time.monotonic() - self._t0, rss,
                   object_store_bytes() if self.object_store else None, private)
        self.samples.append(s)
        return s

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        """Peak RSS and private RSS per role (the largest single process of that role),
        the peaks of their sums over all processes, and the peak object store usage, in
        bytes."""
        peak_pid: dict[int, int] = {}
        peak_private: dict[int, int] = {}
        for s in self.samples:
            for pid, b in s.rss.items():
                peak_pid[pid] = max(peak_pid.get(pid, 0), b)
            for pid, b in s.private.items():
                peak_private[pid] = max(peak_private.get(pid, 0), b)
        by_role: dict[str, dict[str, Any]] = {}
        for pid, b in peak_pid.items():
            r = by_role.setdefault(self.roles.get(pid, "?"),
                                   {"peak_rss": 0, "peak_private": 0, "processes": 0,
                                    "peak_rss_each": []})
            r["peak_rss"] = max(r["peak_rss"], b)
            r["peak_private"] = max(r["peak_private"], peak_private.get(pid, 0))
            r["processes"] += 1
            r["peak_rss_each"] = sorted(r["peak_rss_each"] + [b], reverse=True)
        stores = [s.object_store for s in self.samples if s.object_store is not None]
        return {"samples": len(self.samples),
                "peak_total_rss": max((sum(s.rss.values()) for s in self.samples), default=0),
                "peak_total_private": max((sum(s.private.values()) for s in self.samples),
                                          default=0),
                "peak_object_store": max(stores) if stores else None,
                "roles": dict(sorted(by_role.items()))}

    def curve(self) -> list[dict[str, Any]]:
        """The samples as [{t, total_rss, total_private, object_store, by_role: {role:
        summed RSS}, by_role_private: {role: summed private RSS}}]."""
        out = []
        for s in self.samples:
            by: dict[str, int] = {}
            by_private: dict[str, int] = {}
            for pid, b in s.rss.items():
                r = self.roles.get(pid, "?")
                by[r] = by.get(r, 0) + b
                by_private[r] = by_private.get(r, 0) + s.private.get(pid, 0)
            out.append({"t": round(s.t, 2), "total_rss": sum(s.rss.values()),
                        "total_private": sum(s.private.values()),
                        "object_store": s.object_store, "by_role": by,
                        "by_role_private": by_private})
        return out
