"""A run on three nodes whose only shared place is its storage: an S3-compatible server
on 127.0.0.1 (SeaweedFS, the ``s3`` fixture).

How the nodes are kept apart: each node of the ``ray.cluster_utils.Cluster`` is started
from a directory of its own with a ``TMPDIR`` of its own, so its raylet and every
worker process it starts (actors, tasks) have that working directory and temp dir: a
relative path written on one node is not where another looks, and nothing may be kept in
a node's temp dir for another. What this does not cover: the nodes are processes of one
machine, so an absolute local path still resolves to the same file everywhere (the
dataset is read that way; a real cluster reads it from a URI, which ``data/files.py``
takes), and Ray's own session directory is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_NODES = r'''
import json, os, signal, subprocess, sys, tempfile, time
from pathlib import Path
base, storage_uri, config, data = Path(sys.argv[1]), *sys.argv[2:5]
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# short: Ray's and multiprocessing's sockets live under these (AF_UNIX paths are short)
short = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))
os.environ["RAY_TMPDIR"] = str(short / "ray")  # Ray's session directory: shared
import ray
from ray.cluster_utils import Cluster
from recdistill.data import storage

def in_dir(name):
    """What a node started now inherits: this working directory and TMPDIR."""
    d, tmp = base / "nodes" / name, short / name
    d.mkdir(parents=True)
    tmp.mkdir()
    os.chdir(d)
    os.environ["TMPDIR"] = str(tmp)
    return d

T0 = time.monotonic()
t = {}
in_dir("head")  # the driver's node: Ray Data's tasks, no custom resource
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
t["head"] = time.monotonic() - T0
in_dir("teachers")
teachers = cluster.add_node(num_cpus=2, resources={"teacher_node": 2})
in_dir("students")
students = cluster.add_node(num_cpus=3, resources={"student_node": 3})
cluster.wait_for_nodes()
t["nodes"] = time.monotonic() - T0
ray.init(address=cluster.address, log_to_driver=False)
t["init"] = time.monotonic() - T0
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

@ray.remote(num_cpus=0)
def cwd():
    return os.getcwd(), os.environ.get("TMPDIR"), tempfile.gettempdir()

homes = {name: ray.get(cwd.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
    node.node_id, soft=False)).remote(), timeout=60)
    for name, node in (("head", cluster.head_node), ("teachers", teachers),
                       ("students", students))}
driver = in_dir("driver")
t["cluster"] = time.monotonic() - T0
cli = str(Path(sys.executable).parent / "recdistill")
cmd = [cli, "distill", "--config", config, "--data", data, "--passes", "2",
       "--address", cluster.address, "--storage", storage_uri, "--checkpoint-every", "2",
       "--no-progress"]
state = storage.join(storage_uri, "state", "driver_state.pt")

def checkpoint():
    try:
        return storage.torch_load(state)
    except (FileNotFoundError, OSError, EOFError, RuntimeError):
        return None

def placed():
    """The node of every live named actor (Ray's actor table, from the GCS)."""
    from ray._private.state import actors
    return {a["Name"]: a["Address"]["NodeID"] for a in actors().values()
            if a["Name"] and a["State"] == "ALIVE"}

where, log = {}, open(base / "first.log", "w")
job = subprocess.Popen(cmd, cwd=driver, stdout=log, stderr=subprocess.STDOUT,
                       start_new_session=True)
deadline = time.monotonic() + 400
while job.poll() is None and time.monotonic() < deadline:
    doc = checkpoint()
    if doc is not None and "removed" not in where:  # the first driver checkpoint
        t["first_checkpoint"] = time.monotonic() - T0
        where["before"] = placed()
        where["removed"] = students.node_id
        cluster.remove_node(students)
        in_dir("students-2")
        where["added"] = cluster.add_node(num_cpus=3, resources={"student_node": 3}).node_id
    elif doc is not None and doc["pass"] == 1 and not doc["pass_done"] and all(
            json.loads(g["trained"])["examples"] > 0 for g in doc["groups"].values()):
        t["kill"] = time.monotonic() - T0
        where["after"] = placed()
        where["killed_in"] = {n: json.loads(g["trained"])["examples"]
                              for n, g in doc["groups"].items()}
        os.killpg(job.pid, signal.SIGKILL)
        break
    time.sleep(0.3)
job.wait(timeout=60)
log.close()
where["first_rc"] = job.returncode
second = subprocess.run(cmd + ["--resume"], cwd=driver, capture_output=True, text=True,
                        timeout=400)
where["resume_rc"], where["resume_tail"] = second.returncode, second.stdout[-3000:] + \
    second.stderr[-3000:]
t["resumed"] = time.monotonic() - T0
report = json.loads(storage.read_text(storage.join(storage_uri, "report.json")))
scored = {}
from recdistill.jobs.predict import main as predict
os.chdir(driver)
for name in report["students"]:
    out = base / f"predict-{name}.json"
    rc = predict(["--student", storage.join(storage_uri, "students", name), "--data", data,
                  "--split", "test", "--report", str(out)])
    scored[name] = json.loads(out.read_text())["metrics"] if rc == 0 else rc
print("RESULT " + json.dumps({
    "t": t, "where": where, "homes": homes, "short": str(short), "head": cluster.head_node.node_id, "teachers": teachers.node_id,
    "students": {n: [s["examples_per_pass"], s["restarts"], s["test"], s["artifact"]]
                 for n, s in report["students"].items()},
    "acked": report["stream"]["acked_rows"],
    "resumed": report["resumed"], "scored": scored,
    "stored": storage.walk(storage_uri),
    "local": sorted(str(p.relative_to(base)) for p in (base / "nodes").rglob("*")
                    if p.is_file())}))
ray.shutdown()
cluster.shutdown()
import shutil
shutil.rmtree(short, ignore_errors=True)
'''


@pytest.mark.timeout(900)
def test_three_nodes_keep_every_file_in_s3_through_a_lost_node_and_a_killed_driver(
        s3, tmp_path) -> None:
    """Teacher ranks (``teacher_group.resources``) on one node, student replicas
    (``groups.<g>.resources``) on another, the driver and Ray Data on the head; storage
    ``s3://runs/...``, the teacher's checkpoint already in it (a job training its
    teacher into the bucket: tests/e2e/test_submit.py). Mid-pass 1 the
    students' node is removed (and a new one added): both groups restart on it from
    their snapshots; in pass 2 the driver is killed (SIGKILL) and ``--resume`` finishes
    from the driver checkpoint in the bucket with every row once per group per pass;
    ``recdistill predict`` of each artifact in the bucket gives the report's test
    metrics; every file of the run is in the bucket and none under any node's or the
    driver's directory."""
    from testkit import SMALL, teacher_in, toml_dataset
    (tmp_path / "data").mkdir()
    data = toml_dataset(tmp_path / "data")  # 400 rows per split
    config = tmp_path / "distill.toml"
    config.write_text(
        "teachers = []\n" + SMALL + '\n[teacher_group]\nbatch_size = 64\nranks = 2\n'
        'resources = { teacher_node = 1 }\n[stream]\nbatches_per_call = 1\n'
        '[[groups]]\nname = "baseline"\nsharding = "none"\nsnapshot_every = 2\n'
        'resources = { student_node = 1 }\n'
        'losses = [{ name = "hard_label", weight = 1.0 }]\n'
        '[[groups]]\nname = "kd"\nreplicas = 2\nsnapshot_every = 2\n'  # row-wise shards
        'resources = { student_node = 1 }\n'
        'losses = [{ name = "hard_label", weight = 0.2 },\n'
        '          { name = "prediction_kd", weight = 0.8 }]\n')
    uri = "s3://runs/three-nodes"
    teacher_in(uri + "/teacher", config, data)
    r = subprocess.run([sys.executable, "-c", _NODES, str(tmp_path), uri, str(config),
                        str(data)], capture_output=True, text=True, timeout=850,
                       env={**os.environ, "RAY_ADDRESS": "", "OMP_NUM_THREADS": "1",
                            "RECDISTILL_AUDIT_IDS": "1"})
    assert r.returncode == 0, r.stderr[-4000:] + r.stdout[-2000:]
    out = json.loads(next(line for line in r.stdout.splitlines()
                          if line.startswith("RESULT "))[7:])
    w = out["where"]
    print("TIMES", out["t"])
    for name, (cwd, tmpdir, gettempdir) in out["homes"].items():  # each node's own
        assert cwd == str(tmp_path / "nodes" / name), (name, cwd)
        assert tmpdir == gettempdir == f"{out['short']}/{name}", name
    first = (tmp_path / "first.log").read_text()
    assert w["first_rc"] == -9, first[-3000:]
    assert w["resume_rc"] == 0, w["resume_tail"]
    # placement by custom resources: ranks on the teachers' node, replicas on the students'
    for when, students_node in (("before", w["removed"]), ("after", w["added"])):
        ranks = {n: v for n, v in w[when].items() if n.startswith("teacher")}
        replicas = {n: v for n, v in w[when].items() if n.startswith("student-")}
        assert len(ranks) == 2 and set(ranks.values()) == {out["teachers"]}, (when, w[when])
        assert len(replicas) == 3 and set(replicas.values()) == {students_node}, (when, w)
    # exactly once: each pass whole per group (the audit fails a run on an id trained
    # twice), the interrupted pass finished by the resume
    assert out["resumed"]["pass"] == 2 and not out["resumed"]["pass_done"]
    assert out["resumed"]["trained_in_pass"] == w["killed_in"]
    # the resumed run trained the rest of pass 2 and nothing of it again
    assert out["acked"] == {n: 400 - k for n, k in w["killed_in"].items()}
    for name, (per_pass, restarts, test, artifact) in out["students"].items():
        assert per_pass == [400, 400], name
        assert restarts >= 1, name  # re-formed after its node was removed
        assert artifact == f"{uri}/students/{name}"
        for task, m in test.items():
            for key in ("auc", "logloss"):
                assert out["scored"][name][task][key] == pytest.approx(m[key], abs=1e-5)
    stored = out["stored"]
    for f in ("report.json", "report.png", "state/driver_state.pt",
              "students/baseline/student.json", "students/kd/student.json",
              "students/kd/weights/.metadata", "teacher/versions.json"):
        assert f in stored, (f, stored)
    assert any(f.startswith("state/groups/kd/checkpoints/c") and f.endswith("/.metadata")
               for f in stored)
    assert any(f.startswith("tensorboard/kd/events.out.tfevents") for f in stored)
    assert out["local"] == []  # nothing written under a node's or the driver's directory
