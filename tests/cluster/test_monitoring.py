"""Monitoring: the recdistill_* series reach a running cluster's Prometheus endpoint,
and the shipped Grafana dashboard queries exactly the series the code records. (The
TensorBoard event files are read back in ``test_cluster.py``'s TOML-dataset job.)"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "dashboards" / "recdistill_grafana.json"


def _recorded() -> dict[str, str]:
    """name -> counter|gauge, of every recdistill_* metric the code records."""
    found: dict[str, str] = {}
    for path in [*ROOT.glob("cluster/*.py"), *ROOT.glob("jobs/*.py")]:
        for kind, name in re.findall(r'\.(count|gauge)\(\s*"(recdistill_\w+)"',
                                     path.read_text()):
            found[name] = "counter" if kind == "count" else "gauge"
    return found


def test_grafana_dashboard_queries_the_recorded_series() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    used = set()
    recorded = _recorded()
    for expr in exprs:
        for name, total in re.findall(r"ray_(recdistill_\w+?)(_total)?\{", expr):
            assert name in recorded, f"{expr}: no code records {name}"
            # Ray exports a counter as <name>_total, read as a rate; a gauge as is
            is_counter = recorded[name] == "counter"
            assert bool(total) == is_counter and ("rate(" in expr) == is_counter, expr
            used.add(name)
    # every series the distill job records has a panel (examples_per_s per replica is
    # the rate of examples_trained; the teacher-training job's step is its loss's x)
    assert set(recorded) - used == {"recdistill_examples_per_s",
                                    "recdistill_teacher_train_examples_per_s",
                                    "recdistill_teacher_train_step"}


@pytest.mark.timeout(120)
def test_metrics_reach_the_prometheus_endpoint(ray_cluster) -> None:
    import ray
    from ray._private.worker import _global_node  # the node's metrics export port

    @ray.remote(num_cpus=0)
    class Replica:
        def step(self) -> None:
            from recdistill.cluster.metrics import ActorMetrics
            m = ActorMetrics("student", {"group": "monitor_test"})
            m.count("recdistill_examples_trained", 48)
            m.gauge("recdistill_loss", 0.625, {"term": "hard_label"})

    actor = Replica.remote()
    ray.get(actor.step.remote())
    url = f"http://127.0.0.1:{_global_node.metrics_export_port}/metrics"
    want = {"ray_recdistill_examples_trained_total": 48.0, "ray_recdistill_loss": 0.625}
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 90  # Ray exports every ~10 s
    while time.monotonic() < deadline and seen != want:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        for line in text.splitlines():
            m = re.match(r"(ray_recdistill_\w+)\{(.*)\} (\S+)$", line)
            if m and 'group="monitor_test"' in m.group(2) and m.group(1) in want:
                seen[m.group(1)] = float(m.group(3))
        if seen != want:
            time.sleep(2)
    ray.kill(actor)
    assert seen == want
