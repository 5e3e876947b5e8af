"""Errors that end a job at once, in one line, before any training: an address where
no Ray cluster answers, a checkpoint path that holds something else, a resume with
nothing to resume from."""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from recdistill.teacher.checkpoint import CheckpointError, check_absent_or_checkpoint, save_teacher
from recdistill.teacher.model import TeacherModel
from testkit import CFG, tiny_dataset

ROOT = Path(__file__).parents[2]


def _distill(*args: str, timeout: float = 120) -> tuple[int, list[str], float]:
    """``recdistill distill ARGS`` in a process of its own: (exit code, the
    non-empty stderr lines, wall seconds)."""
    t = time.perf_counter()
    p = subprocess.run([str(Path(sys.executable).parent / "recdistill"), "distill",
                        "--passes", "1", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p.returncode, [ln for ln in p.stderr.splitlines() if ln.strip()], \
        time.perf_counter() - t


@pytest.mark.timeout(180)
def test_an_address_where_nothing_listens_fails_at_once_in_one_line(tmp_path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, err, wall = _distill("--address", f"127.0.0.1:{port}",
                             "--report", str(tmp_path / "r.json"))
    assert rc == 2 and wall < 90
    assert err == [f"error: --address 127.0.0.1:{port}: no Ray cluster answers there "
                   "(Connection refused)"]
    assert not (tmp_path / "r.json").exists()


def _no_join(port: int, seconds: int) -> str:
    return (f"error: --address 127.0.0.1:{port}: no Ray cluster joined within {seconds} s "
            "(is it a Ray head's GCS address, host:6379, and is this machine allowed to "
            "reach it?)")


@pytest.mark.timeout(180)
def test_an_address_that_never_answers_times_out(tmp_path) -> None:
    """A port that accepts and says nothing (Ray's own join would retry it forever): the
    cluster-id call with a deadline fails before ray.init starts, so no Ray line either."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        rc, err, wall = _distill("--address", f"127.0.0.1:{port}", "--join-timeout", "4",
                                 "--report", str(tmp_path / "r.json"))
    assert rc == 2 and wall < 60
    assert err == [_no_join(port, 4)]


@pytest.mark.timeout(180)
def test_an_address_that_speaks_something_else_is_named(tmp_path) -> None:
    srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    srv.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    try:
        rc, err, wall = _distill("--address", f"127.0.0.1:{port}",
                                 "--report", str(tmp_path / "r.json"))
    finally:
        srv.shutdown()
    assert rc == 2 and wall < 60
    # gRPC's own words follow: what it read instead of an HTTP/2 SETTINGS frame
    assert len(err) == 1
    assert err[0].startswith(f"error: --address 127.0.0.1:{port}: what answers there is "
                             "not a Ray cluster's GCS (UNAVAILABLE: Failed parsing HTTP/2 ")


@contextlib.contextmanager
def _fake_gcs(cluster_id: Callable[[Any, Any], Any]) -> Iterator[tuple[int, list[str]]]:
    """A gRPC server on loopback that answers Ray's GetClusterId with ``cluster_id`` and
    stalls every other call: (its port, the methods asked for)."""
    import grpc
    from ray.core.generated import gcs_service_pb2

    stall, asked = threading.Event(), []

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            asked.append(details.method.rsplit("/", 1)[-1])
            if asked[-1] == "GetClusterId":
                return grpc.unary_unary_rpc_method_handler(
                    cluster_id,
                    request_deserializer=gcs_service_pb2.GetClusterIdRequest.FromString,
                    response_serializer=gcs_service_pb2.GetClusterIdReply.SerializeToString)
            return grpc.unary_unary_rpc_method_handler(lambda req, ctx: stall.wait(120))

    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[Handler()])
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield port, asked
    finally:
        stall.set()
        srv.stop(0)


@pytest.mark.timeout(180)
def test_a_join_that_stalls_after_the_cluster_id_ends_with_exit_code_2(tmp_path) -> None:
    """A server that answers the cluster-id call and then nothing: ray.init itself stalls,
    the job gives up after --join-timeout and leaves with exit code 2 while Ray's join
    is still running in its thread (a normal interpreter exit there could crash)."""
    from ray.core.generated import gcs_service_pb2
    with _fake_gcs(lambda req, ctx: gcs_service_pb2.GetClusterIdReply(cluster_id=bytes(28))
                   ) as (port, asked):
        rc, err, wall = _distill("--address", f"127.0.0.1:{port}", "--join-timeout", "5",
                                 "--report", str(tmp_path / "r.json"))
    assert rc == 2 and wall < 60
    assert err == [_no_join(port, 5)]
    # the check's call, then ray.init's own (which stalled)
    assert asked[0] == "GetClusterId" and len(asked) >= 3
    assert not (tmp_path / "r.json").exists()


@pytest.mark.timeout(180)
def test_a_cluster_that_wants_a_token_says_how_to_send_it(tmp_path, monkeypatch) -> None:
    import grpc

    def refuse(req, ctx):
        ctx.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken")

    where = ("RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `ray "
             "get-auth-token` on the head prints it")
    with _fake_gcs(refuse) as (port, asked):
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        rc, err, _ = _distill("--address", f"127.0.0.1:{port}", "--report",
                              str(tmp_path / "r.json"))
        assert rc == 2 and err == [
            f"error: --address 127.0.0.1:{port}: the Ray cluster asks for its auth token: "
            f"run the job with RAY_AUTH_MODE=token in its environment (the token is read "
            f"from {where})"]
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-clusters")
        rc, err, _ = _distill("--address", f"127.0.0.1:{port}", "--report",
                              str(tmp_path / "r.json"))
        assert rc == 2 and err == [
            f"error: --address 127.0.0.1:{port}: the Ray cluster refuses this process's "
            f"auth token (read from {where})"]
    assert asked == ["GetClusterId", "GetClusterId"]  # nothing after the refusal


def test_the_gcs_check_passes_on_a_live_cluster(ray_cluster) -> None:
    from recdistill.cluster.session import _check_gcs
    host, port = ray_cluster.get_runtime_context().gcs_address.rsplit(":", 1)
    _check_gcs("live", (host, int(port)), 10.0)  # raises ClusterError if it did not answer


def test_checkpoint_paths_that_hold_something_else_are_named(tmp_path) -> None:
    assert check_absent_or_checkpoint(tmp_path / "new") is False  # trained into
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    (tmp_path / "partial" / "v00000010").mkdir(parents=True)
    for name, what in (("file", "a file"), ("empty", "an empty directory"),
                       ("other", "a directory of 1 entries (notes.txt)"),
                       ("partial", "a directory whose versions ['v00000010'] are "
                                   "incomplete")):
        with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / name}: {what}")):
            check_absent_or_checkpoint(tmp_path / name)
    data = tiny_dataset()
    save_teacher(TeacherModel(data.spec, CFG, device="cpu"), tmp_path / "ok" / "v00000003",
                 spec=data.spec, cfg=CFG, info={"step": 3})
    assert check_absent_or_checkpoint(tmp_path / "ok")  # a root of versions
    assert check_absent_or_checkpoint(tmp_path / "ok" / "v00000003")  # one version


@pytest.mark.timeout(180)
def test_bad_checkpoint_and_missing_resume_state_fail_before_any_training(tmp_path
                                                                          ) -> None:
    (tmp_path / "some_file").write_text("not a checkpoint")
    rc, err, _ = _distill("--teacher-checkpoint", str(tmp_path / "some_file"),
                          "--report", str(tmp_path / "r.json"))
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path / 'some_file'}: a file, not a teacher "
                             "checkpoint")
    rc, err, _ = _distill("--resume", "--state-dir", str(tmp_path / "none"),
                          "--report", str(tmp_path / "r.json"))
    assert rc == 2
    assert err == [f"error: {tmp_path / 'none' / 'driver_state.pt'}: no driver checkpoint "
                   "to resume from"]
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "none").exists()
    rc, err, _ = _distill("--storage", str(tmp_path / "some_file" / "run"))
    assert rc == 2 and len(err) == 1  # a storage it cannot write: before any data
    assert err[0].startswith(f"error: {tmp_path / 'some_file' / 'run'}: cannot write "
                             "there ([Errno 20] Not a directory")
