"""Submit ``recdistill distill`` to a running Ray cluster with Ray's JobSubmissionClient.

    recdistill submit [--address http://127.0.0.1:8265] [--no-wait] -- --passes 4

Everything after ``--`` goes to ``recdistill distill``. From a source checkout the
repository is uploaded as the job's working directory (Ray skips what ``.gitignore``
lists, so ``.venv`` and ``runs`` stay home); from an installed package the package itself
is shipped (Ray's ``py_modules``), and ``--working-dir`` uploads a directory of your own
(your plugin modules, dataset descriptions). The cluster's Python needs recdistill's
dependencies. The job's logs are streamed here until it ends, and the exit status follows
the job's.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def runtime_env(working_dir: str | None) -> dict[str, object]:
    """Ray's runtime_env that makes ``recdistill`` importable on the cluster."""
    import recdistill
    package = Path(recdistill.__file__).resolve().parent
    env: dict[str, object] = {"excludes": [".venv", "runs", ".git"]}
    if (package / "cluster").is_dir():  # an installed wheel: recdistill/ holds it all
        env["py_modules"] = [str(package)]
        if working_dir:
            env["working_dir"] = working_dir
    else:  # a checkout: recdistill/ beside cluster/, teacher/ ... at the root
        root = package.parent
        if working_dir and Path(working_dir).resolve() != root:
            raise SystemExit(f"--working-dir {working_dir}: from a checkout the job's working "
                             f"directory is the checkout ({root}); put your modules there, "
                             "or install the package (pip install .)")
        env["working_dir"] = str(root)
    return env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    job_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, job_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="recdistill submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default="http://127.0.0.1:8265",
                   help="the cluster's dashboard / job server (default: local)")
    p.add_argument("--no-wait", action="store_true", help="submit and return the job id")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow the job")
    p.add_argument("--working-dir", default=None,
                   help="directory uploaded as the job's working directory (default: the "
                        "checkout when run from one, none for an installed package)")
    a = p.parse_args(argv)

    if not any(x == "--storage" or x.startswith("--storage=") for x in job_args):
        print("warning: no --storage after --: the job writes under runs/distill of its "
              "working directory on the cluster, a temporary copy; give --storage a "
              "URI (s3://bucket/prefix) or a path every node sees", file=sys.stderr)
    from ray.job_submission import JobStatus, JobSubmissionClient
    client = JobSubmissionClient(a.address)
    entrypoint = " ".join(["python", "-m", "recdistill.jobs.distill",
                           *map(shlex.quote, job_args)])
    job_id = client.submit_job(entrypoint=entrypoint,
                               runtime_env=runtime_env(a.working_dir))
    print(f"submitted {job_id}: {entrypoint}", flush=True)
    if a.no_wait:
        return 0
    printed = 0
    deadline = time.monotonic() + a.timeout
    status = client.get_job_status(job_id)
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            print(logs[printed:], end="", flush=True)
            printed = len(logs)
        if str(status) in TERMINAL or status in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                 JobStatus.STOPPED):
            break
        time.sleep(1.0)
    print(f"\njob {job_id}: {status}")
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
