"""Dashboard metrics (``ray.util.metrics``), created lazily and only inside Ray.

The actor classes stay usable without Ray (tests build them directly); there the
metrics are no-ops. Metric names start with ``recdistill_``; tags say which group,
rank or loss term they belong to.
"""

from __future__ import annotations

from typing import Any


class ActorMetrics:
    """Counters and gauges of one actor (or the driver), with fixed base tags."""

    def __init__(self, role: str, tags: dict[str, str]) -> None:
        self.role = role
        self.tags = dict(tags)
        self._metrics: dict[str, Any] = {}
        try:
            import ray
            self._enabled = ray.is_initialized()
        except ImportError:  # pragma: no cover - ray is in the lock
            self._enabled = False

    def _get(self, kind: str, name: str, extra: tuple[str, ...]) -> Any:
        key = f"{kind}:{name}"
        if key not in self._metrics:
            from ray.util import metrics
            cls = metrics.Counter if kind == "counter" else metrics.Gauge
            self._metrics[key] = cls(name, description=f"recdistill {self.role}: {name}",
                                     tag_keys=tuple(self.tags) + extra)
        return self._metrics[key]

    def count(self, name: str, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        if self._enabled and value > 0:
            extra = tags or {}
            self._get("counter", name, tuple(extra)).inc(value, {**self.tags, **extra})

    def gauge(self, name: str, value: float, tags: dict[str, str] | None = None) -> None:
        if self._enabled:
            extra = tags or {}
            self._get("gauge", name, tuple(extra)).set(value, {**self.tags, **extra})
