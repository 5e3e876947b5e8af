"""Chaos: processes of a running job SIGKILLed on a seeded schedule, one of them during an
evaluation; the job finishes and every group trains every example once per pass."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from cluster.config import RunOptions
from cluster.pipeline import Hooks, OnlineDistillation
from test_cluster import _setup
from test_sharding import tiny_dataset

ROWS = 15360  # 120 batches of 64 per teacher rank and pass: a ~70 s run here
EVERY_S = (15.0, 25.0)  # seconds between kills: ~20 s


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_seeded_kills_of_ranks_and_replicas_leave_counts_exact(ray_cluster,
                                                                tmp_path: Path) -> None:
    """2 passes, 2 teacher ranks, 2 groups x 2 replicas. A seeded schedule kills a
    random teacher rank or replica every ~20 s; a teacher rank is killed as the
    teacher's validation evaluation starts, a replica as the students' first does."""
    cfg, _, dims = _setup(tmp_path, max_inflight=4)
    data = tiny_dataset(n=ROWS, seed=2)
    cfg = dataclasses.replace(cfg, groups=tuple(
        dataclasses.replace(g, snapshot_every=10) for g in cfg.groups))
    rng = random.Random(1234)
    killed: list[tuple[str, str]] = []  # (when, whom)
    bad: list[tuple[str, int]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def victims() -> list[tuple[str, int]]:
        out = [(f"teacher-{k}", pid) for k, pid in enumerate(run.labels.pids)]
        for name, g in run.groups.items():
            out += [(f"student-{name}-{j}", pid) for j, pid in enumerate(g.pids)]
        return out

    def kill(who: list[tuple[str, int]], when: str) -> None:
        if not who:
            return
        name, pid = rng.choice(who)
        if pid <= 1:  # never a process group: that would take the test down too
            bad.append((name, pid))
            return
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append((when, name))
            print(f"{time.monotonic() - t0:.1f}s: killed {name} ({when})", flush=True)
        except ProcessLookupError:  # already replaced
            pass

    def schedule() -> None:
        while not stop.wait(rng.uniform(*EVERY_S)):
            kill(victims(), "schedule")

    def on_phase(phase: str) -> None:
        # the teacher's validation evaluation before the first pass; the students' at
        # the end of it
        kinds = {"evaluate teacher valid": "teacher", "evaluate valid": "student"}
        if phase in kinds and not any(w == phase for w, _ in killed):
            kill([v for v in victims() if v[0].startswith(kinds[phase])], phase)

    run = OnlineDistillation(cfg, data, dims, RunOptions(progress=False),
                             Hooks(on_phase=on_phase))
    killer = threading.Thread(target=schedule, daemon=True)
    killer.start()
    try:
        body = run.run().to_json()
    finally:
        stop.set()
        killer.join()
        run.shutdown()
    print(f"killed: {killed}; restarts: teacher {body['teacher']['restarts']}, students "
          f"{ {n: s['restarts'] for n, s in body['students'].items()} }")
    assert not bad, bad
    when = [w for w, _ in killed]
    assert "evaluate teacher valid" in when and "evaluate valid" in when, killed
    assert when.count("schedule") >= 2, killed
    restarts = body["teacher"]["restarts"] + sum(s["restarts"]
                                                 for s in body["students"].values())
    assert restarts >= len(killed) - 1, (killed, restarts)  # two kills may hit one group
    ids = sorted(data.train.ids.tolist())
    for name, ledger in run.stream.ledgers.items():
        for p in range(2):
            assert sorted(ledger.trained[p].to_array().tolist()) == ids, (name, p)
        assert body["students"][name]["examples_per_pass"] == [len(ids)] * 2, name
