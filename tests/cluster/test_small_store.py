"""A streamed train split larger than the cluster's whole object store: the job trains
every row exactly once per pass, also after a teacher rank is killed mid-pass and after
the driver is killed and resumed, and nothing of the pass is spilled out of the store
(Ray spills what does not fit instead of failing, so the spill count is what shows that
no process held the pass)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from testkit import job_env

ROWS, FILES, DENSE = 48_000, 8, 1000  # 1000 float32 columns: 192 MB of train, 4 KB a row
# The store: 150 MiB (Ray spills above 80% of it). What the job keeps in it is bounded
# by its config, not by the data: the read-ahead (64 MiB) and the labelled batches in
# flight (1 MB each: 8 in a group's window, 2 ranks x 8 per labelling call).
STORE = 150 << 20

# One job process on the small store; argv: address, data TOML, teacher, state, mode
# ("kill-rank": a teacher rank is killed in pass 1; "die": the driver kills itself in
# pass 2; "resume": the run continues from the state); prints RESULT <json>.
_JOB = r'''
import json, os, signal, sys
from recdistill.jobs.common import quiet_library_warnings
from recdistill.cluster.config import RunOptions
from recdistill.cluster.pipeline import Hooks
from recdistill.jobs.distill import run
from recdistill.jobs.distill_config import load_config
quiet_library_warnings()
address, data, config, state, mode = sys.argv[1:6]
cfg = load_config(config, data=data, passes=1 if mode == "kill-rank" else 2)
killed = []

def hook(group, acked):
    if mode == "kill-rank" and acked == 20 and not killed:
        from ray.util.state import list_actors
        ranks = list_actors(filters=[("class_name", "=", "TeacherRank"),
                                     ("state", "=", "ALIVE")])
        killed.append(ranks[1].pid)
        os.kill(ranks[1].pid, signal.SIGKILL)
    if mode == "die" and acked == 228:  # 188 batches a pass: 40 into pass 2
        os.kill(os.getpid(), signal.SIGKILL)

report = run(cfg, RunOptions(address=address, progress=False, state_dir=state,
                             checkpoint_every=2, resume=mode == "resume"),
             Hooks(after_ack=hook)).to_json()
print("RESULT " + json.dumps({"killed": killed, "stream": report["stream"],
      "restarts": report["teacher"]["restarts"], "resumed": report["resumed"],
      "per_pass": report["students"]["kd"]["examples_per_pass"]}))
'''

# The cluster (one node, the small store), the three jobs on it in order, then the
# store's spill count; prints RESULT <json>.
_CLUSTER = r'''
import json, os, re, subprocess, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
from ray.cluster_utils import Cluster
from ray._private.internal_api import memory_summary
job, data, config, state, store = sys.argv[1:6]
cluster = Cluster(initialize_head=True, connect=False, head_node_args={
    "num_cpus": 6, "object_store_memory": int(store)})
out = {}
try:
    for mode in ("kill-rank", "die", "resume"):
        r = subprocess.run([sys.executable, "-c", job, cluster.address, data, config, state,
                            mode], capture_output=True, text=True, timeout=300)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        out[mode] = {"rc": r.returncode, "err": r.stderr[-3000:],
                     "result": json.loads(line[0][7:]) if line else None,
                     "summary": memory_summary(cluster.address, stats_only=True)[-600:]}
    text = memory_summary(cluster.address, stats_only=True)
    spilled = re.search(r"Spilled (\d+) MiB", text)
    out["spilled_mib"] = int(spilled.group(1)) if spilled else 0
    out["summary"] = text[-2000:]
finally:
    cluster.shutdown()
print("RESULT " + json.dumps(out))
'''


def _dataset(root: Path) -> Path:
    """8 Parquet files of ``ROWS`` rows in all, ``DENSE`` float32 columns (row groups
    of 500: 96 chunks of 2 MB), hashed ids; the label follows the first column."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    names = [f"d{i}" for i in range(DENSE)]

    def frame(n: int) -> pd.DataFrame:
        dense = rng.standard_normal((n, DENSE), dtype=np.float32)
        f = pd.DataFrame(dense, columns=names)
        f["user"] = rng.integers(0, 500, n).astype(str)
        f["income"] = (dense[:, 0] > 0).astype(int)
        return f

    for i in range(FILES):
        frame(ROWS // FILES).to_parquet(root / "train" / f"part-{i:05d}.parquet",
                                        index=False, row_group_size=500)
    for split in ("valid", "test"):
        frame(2000).to_parquet(root / f"{split}.parquet", index=False)
    toml = root / "dataset.toml"
    toml.write_text(f'train = "train"\nvalid = "valid.parquet"\ntest = "test.parquet"\n'
                    f'dense = {json.dumps(names)}\nsparse = ["user"]\n'
                    'tasks = ["income"]\nread = "stream"\n[ids]\nkind = "hash"\n'
                    'buckets = 1024\n')
    return toml


@pytest.mark.timeout(900)
def test_a_pass_larger_than_the_object_store_trains_every_row_once_and_spills_nothing(
        tmp_path: Path) -> None:
    from recdistill.data.tabular import load_tabular
    from recdistill.teacher.checkpoint import save_teacher
    from recdistill.teacher.config import TeacherConfig
    from recdistill.teacher.model import TeacherModel
    toml = _dataset(tmp_path / "data")
    data = load_tabular(toml)
    assert len(data.train) == ROWS and ROWS * DENSE * 4 > STORE  # train outgrows the store
    tcfg = TeacherConfig(embedding_dim=8, dense_layers=(16, 8), cross_layers=1)
    save_teacher(TeacherModel(data.spec, tcfg, device="cpu"), tmp_path / "teacher",
                 spec=data.spec, cfg=tcfg, info={"step": 1})
    config = tmp_path / "distill.toml"
    config.write_text(
        "teachers = []\n[teacher]\nembedding_dim = 8\ndense_layers = [16, 8]\n"
        "cross_layers = 1\n[teacher_group]\nranks = 2\nbatch_size = 256\n"
        "label_batch_size = 256\ncalls_in_flight = 1\n"
        f'read_ahead_mib = 64\ncheckpoint = "{tmp_path / "teacher"}"\n'
        '[stream]\nmax_inflight = 8\n[[groups]]\nname = "kd"\nsharding = "none"\n'
        'losses = [{ name = "hard_label", weight = 0.5 }, '
        '{ name = "prediction_kd", weight = 0.5 }]\n')
    r = subprocess.run([sys.executable, "-c", _CLUSTER, _JOB, str(toml), str(config),
                        str(tmp_path / "state"), str(STORE)], capture_output=True,
                       text=True, timeout=850, env={**job_env(), "RAY_ADDRESS": ""})
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(next(ln for ln in r.stdout.splitlines()
                          if ln.startswith("RESULT "))[7:])
    for mode in ("kill-rank", "die", "resume"):
        assert out[mode]["rc"] == (-9 if mode == "die" else 0), (mode, out[mode]["err"])
    # a rank killed mid-pass: re-formed, the pass read again from after the batches
    # trained, every row once (the audit of each id in the job checks none twice)
    rank = out["kill-rank"]["result"]
    assert rank["killed"] and rank["restarts"] == 1 and rank["per_pass"] == [ROWS]
    assert rank["stream"]["skipped_batches"] >= 2
    # the driver killed in pass 2, resumed: the rest of pass 2 and nothing again
    resumed = out["resume"]["result"]
    before = resumed["resumed"]["trained_in_pass"]["kd"]
    assert resumed["resumed"]["pass"] == 2 and 0 < before < ROWS
    assert resumed["per_pass"] == [ROWS, ROWS]
    assert resumed["stream"]["acked_rows"]["kd"] == ROWS - before
    assert out["spilled_mib"] == 0, [out[m]["summary"] for m in ("kill-rank", "die", "resume")]
