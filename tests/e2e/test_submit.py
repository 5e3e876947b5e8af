"""``recdistill submit`` to a cluster started with ``ray start --head`` (loopback), its
storage an ``s3://`` URI on the ``s3`` fixture's server: the job's files all land in the
bucket, none in the submitting directory or the job's (temporary) working directory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


def _wait_for_dashboard(port: int, head: subprocess.Popen, log: Path) -> None:
    import time
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and head.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=5):
                return
        except urllib.error.HTTPError:  # it answers (401 without the auth token): up
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"ray start did not serve its dashboard: {log.read_text()[-2000:]}")


@pytest.mark.timeout(600)
def test_submit_writes_every_file_of_the_job_to_the_bucket(s3, tmp_path) -> None:
    """The head node gets the server's endpoint and keys in its environment (as a cloud
    node gets an instance role); the submission carries none of them."""
    from recdistill.data import storage
    from s3server import free_ports
    from testkit import SMALL, teacher_in, toml_dataset
    (tmp_path / "data").mkdir()
    data = toml_dataset(tmp_path / "data")
    config = tmp_path / "distill.toml"
    config.write_text("teachers = []\n" + SMALL + '\n[teacher_group]\nbatch_size = 64\n'
                      '[[groups]]\nname = "kd"\nsharding = "none"\n'
                      'losses = [{ name = "hard_label", weight = 0.2 },\n'
                      '          { name = "prediction_kd", weight = 0.8 }]\n')
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths
    gcs, dash, client, agent, agent_grpc, runtime_env, metrics = free_ports(7)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **s3.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "token", "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "",
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    head = subprocess.Popen(
        [str(Path(bin_dir) / "ray"), "start", "--head", "--block",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=6",
         f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
         f"--temp-dir={ray_tmp}"],
        cwd=tmp_path, env=env, stdout=(tmp_path / "head.log").open("w"),
        stderr=subprocess.STDOUT, start_new_session=True)
    uri = "s3://runs/submitted"
    teacher_in(uri + "/teacher", config, data)  # (test_storage.py trains one into S3)
    submitting = tmp_path / "here"
    submitting.mkdir()
    try:
        _wait_for_dashboard(dash, head, tmp_path / "head.log")
        job_env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
        r = subprocess.run(
            [str(Path(bin_dir) / "recdistill"), "submit", "--address",
             f"http://127.0.0.1:{dash}", "--timeout", "420", "--", "--config", str(config),
             "--data", str(data), "--passes", "1", "--storage", uri, "--no-progress"],
            cwd=submitting, env=job_env, capture_output=True, text=True, timeout=540)
        # the job ran in an uploaded copy of the checkout: no runs/ was made in it
        copies = list(ray_tmp.rglob("working_dir_files"))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "SUCCEEDED" in r.stdout
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in r.stdout + r.stderr  # never logged
    stored = storage.walk(uri)
    for f in ("report.json", "report.png", "state/driver_state.pt",
              "students/kd/student.json", "teacher/versions.json"):
        assert f in stored, (f, stored)
    assert any(f.startswith("tensorboard/kd/") for f in stored)
    report = json.loads(storage.read_text(f"{uri}/report.json"))
    assert report["students"]["kd"]["examples_per_pass"] == [400]
    assert report["students"]["kd"]["artifact"] == f"{uri}/students/kd"
    assert f"report {uri}/report.json" in r.stdout
    assert not any(submitting.rglob("*"))  # nothing where it was submitted from
    assert copies and not [p for c in copies for p in c.rglob("runs")]
