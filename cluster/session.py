"""The driver's Ray session: starting a local cluster bound to 127.0.0.1, joining one at
an address (or failing in one line that names it), the dashboard it has, and how a
job's process ends after a join that was given up on."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from recdistill.cluster.config import DistillConfig
from recdistill.cluster.demand import ACTORS_PER_CPU, Demand  # noqa: F401 - re-exported
from recdistill.cluster.interrupts import rearm
from recdistill.data.errors import ConfigError
from recdistill.teacher.registry import PLUGINS_ENV

JOIN_TIMEOUT_S = 60.0  # the most joining a Ray cluster may take before the job gives up


class ClusterError(ConfigError):
    """The Ray cluster the job was told to join (``--address`` / ``RAY_ADDRESS``)
    cannot be joined; the message names the address."""


def start_ray(address: str, cfg: DistillConfig, join_timeout_s: float = JOIN_TIMEOUT_S,
              verbose: bool = False, teacher: bool = True) -> None:
    """The distill job's cluster: join ``address`` (giving up after ``join_timeout_s``),
    or start a single-node cluster bound to 127.0.0.1; a ``ConfigError`` where it has
    too few CPUs or GPUs for ``cfg``'s actors (said before any starts). ``teacher``
    false: the labels come from files (their readers hold no GPU)."""
    import ray
    import torch
    need = Demand.of(cfg, teacher)
    if address:
        # worker output stays in the workers' logs (the dashboard shows them) unless --verbose
        join_ray(address, timeout_s=join_timeout_s, log_to_driver=verbose)
        try:
            need.check_cluster(address, ray.cluster_resources())
        except ConfigError:
            ray.shutdown()
            raise
        return
    need.check_machine(os.cpu_count() or 1, torch.cuda.device_count(),
                       f"{len(cfg.groups)} groups' replicas and {len(cfg.members)} x "
                       f"{cfg.teacher_group.ranks} teacher ranks")
    # On top of the actors' share, Ray Data's read and shuffle tasks need CPUs of their
    # own or they never run.
    start_local_ray(int(need.cpus + 0.999) + max(2, os.cpu_count() or 1), verbose=verbose)


def _gcs_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``host:port`` or ``ray://host:port`` address; None for
    ``auto`` and other forms Ray resolves itself."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _keep_loopback() -> None:
    """Ray's one-machine switch (see :func:`start_local_ray`): without it Ray swaps
    127.0.0.1 for the machine's address, and its processes bind that."""
    from ray._private import ray_constants
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


# Set when a join was given up on while Ray's own join still runs in its thread; see
# :func:`end_if_join_left_running`.
_JOIN_LEFT_RUNNING = threading.Event()


def _check_gcs(address: str, where: tuple[str, int], timeout_s: float) -> None:
    """Ask what answers at ``where`` for its Ray cluster id (the first call ray.init
    makes to a GCS), with a deadline, before ray.init is started. A port that accepts
    and says nothing, one that speaks something other than a Ray GCS, and a GCS that
    wants an auth token this process does not send fail here in one line each, instead
    of inside Ray's join, which retries them without end or says only "Failed to
    connect"."""
    import grpc
    # Ray's own channel factory: TLS (RAY_USE_TLS) and token auth as ray.init has them
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    host = f"[{where[0]}]" if ":" in where[0] else where[0]  # an IPv6 host in brackets
    channel = init_grpc_channel(f"{host}:{where[1]}")
    try:
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
            gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise ClusterError(_no_join(address, timeout_s)) from None
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:  # a GCS that wants Ray's token
            raise ClusterError(_token_error(address)) from None
        details = (e.details() or "").rsplit(": ", 1)[-1]
        raise ClusterError(f"--address {address}: what answers there is not a Ray "
                           f"cluster's GCS ({e.code().name}: {details})") from None
    finally:
        channel.close()


def _token_error(address: str) -> str:
    """Why a GCS refused this process. Ray reads RAY_AUTH_MODE once, when it is imported,
    and sends its token only in token mode: a cluster started with token auth (``ray
    start`` turns it on by default) refuses a driver started without it."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    where = ("RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `ray "
             "get-auth-token` on the head prints it")
    if is_token_auth_enabled():
        return (f"--address {address}: the Ray cluster refuses this process's auth token "
                f"(read from {where})")
    return (f"--address {address}: the Ray cluster asks for its auth token: run the job "
            f"with RAY_AUTH_MODE=token in its environment (the token is read from {where})")


def _no_join(address: str, timeout_s: float) -> str:
    """The one line of a join that did not finish within ``timeout_s``."""
    return (f"--address {address}: no Ray cluster joined within {timeout_s:.0f} s (is it "
            "a Ray head's GCS address, host:6379, and is this machine allowed to reach it?)")


def join_ray(address: str, *, timeout_s: float = JOIN_TIMEOUT_S,
             log_to_driver: bool = True) -> None:
    """Join the Ray cluster at ``address``, or fail with one line naming it.

    Ray's own join retries a GCS that does not answer without end, so: the address's
    port is tried first (refused or unreachable: fail at once), then asked for its
    cluster id with a deadline (:func:`_check_gcs`), and the join itself is given
    ``timeout_s``. A loopback address stays loopback (the driver joins as 127.0.0.1
    instead of the machine's address).

    Raises:
        ClusterError: nothing joinable answers at ``address`` within ``timeout_s``.
    """
    import ray
    where = _gcs_host_port(address)
    loopback = where is not None and where[0] in ("127.0.0.1", "localhost", "::1")
    if where is not None:
        try:
            socket.create_connection(where, timeout=min(10.0, timeout_s)).close()
        except OSError as e:
            raise ClusterError(f"--address {address}: no Ray cluster answers there "
                               f"({e.strerror or e})") from None
        if not address.startswith("ray://"):  # a Ray Client server is not a GCS
            _check_gcs(address, where, timeout_s)
    if loopback:
        _keep_loopback()
    # Ray's join logs a line per step and per retry (its Python logger and the core
    # worker's C++ log): the job says in one line whether it joined.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    failed: list[BaseException] = []
    done = threading.Event()

    def join() -> None:
        try:
            ray.init(address=address, log_to_driver=log_to_driver,
                     logging_level=logging.ERROR, runtime_env=_plugin_env() or None,
                     **({"_node_ip_address": "127.0.0.1"} if loopback else {}))
        except BaseException as e:  # noqa: BLE001 - reported by the caller, one line
            failed.append(e)
        finally:
            done.set()

    # A thread, so the wait has a limit; one that never returns ends with the process
    # (end_if_join_left_running).
    threading.Thread(target=join, name="ray-join", daemon=True).start()
    if not done.wait(timeout_s):
        _JOIN_LEFT_RUNNING.set()
        raise ClusterError(_no_join(address, timeout_s))
    if failed:
        lines = [ln for ln in str(failed[0]).splitlines() if ln.strip()]
        raise ClusterError(f"--address {address}: cannot join the Ray cluster: "
                           f"{lines[0] if lines else type(failed[0]).__name__}")
    rearm()  # the join's core worker put its native SIGTERM handler in
    logging.getLogger("ray").setLevel(logging.WARNING)


def end_if_join_left_running(rc: int) -> None:
    """After a join that was given up on, end the process with exit code ``rc`` at once.

    Ray's core worker is then still connecting in its threads, and the interpreter's
    normal exit (module teardown, C++ static destructors) runs under them and can crash
    with SIGSEGV instead of returning ``rc``; so this flushes and leaves with os._exit.
    Otherwise it returns."""
    if _JOIN_LEFT_RUNNING.is_set():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def exit_process(rc: int) -> NoReturn:
    """``sys.exit(rc)`` for a job's ``__main__``, through :func:`end_if_join_left_running`."""
    end_if_join_left_running(rc)
    sys.exit(rc)


def ray_dashboard() -> dict[str, str]:
    """The dashboard the connected Ray cluster really has (Ray takes the next free port
    when 8265 is busy) and where its auth token is (Ray's token auth is on by default:
    the page asks for it)."""
    # what ray.init's own context reports as dashboard_url; no public getter after init
    from ray._private.worker import get_dashboard_url
    try:
        url = get_dashboard_url() or ""
    except Exception:  # noqa: BLE001 - a cluster without a dashboard
        url = ""
    if url and "://" not in url:
        url = "http://" + url
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        token = ""
    elif os.environ.get("RAY_AUTH_TOKEN"):
        token = "the RAY_AUTH_TOKEN environment variable"
    else:
        token = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" /
                                                             "auth_token")
    return {"url": url, "token": token}


def dashboard_line(d: dict[str, str]) -> str:
    """The job's line about :func:`ray_dashboard`'s answer ``d``."""
    if not d["url"]:
        return "Ray dashboard: none on this cluster"
    token = (f"; it asks for the auth token in {d['token']} (`ray get-auth-token` prints "
             "it)" if d["token"] else "")
    return f"Ray dashboard: {d['url']}{token}"


def quiet_ray(verbose: bool) -> None:
    """Ray's start-up lines (token auth, "Started a local Ray instance") off unless
    ``verbose``; the job prints what a user needs itself (:func:`dashboard_line`)."""
    if not verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)


def _plugin_env() -> dict[str, Any]:
    """The plugins (``--plugin``) for every actor and task of the job: Ray merges this
    with a submitted job's own runtime_env (whose working_dir holds the modules)."""
    plugins = os.environ.get(PLUGINS_ENV, "")
    return {"env_vars": {PLUGINS_ENV: plugins}} if plugins else {}


def start_local_ray(num_cpus: int, *, dashboard: bool = True,
                    log_to_driver: bool = False, verbose: bool = False) -> Any:
    """Start a new single-node Ray cluster bound to 127.0.0.1 (the local mode of the jobs).

    Ray turns 127.0.0.1 into the machine's address unless told this is a one-machine
    "cluster" (its macOS/Windows mode); with it every Ray process (GCS, raylet, workers,
    dashboard and its agents) listens on loopback only (``tests/cluster/test_security.py``),
    and gloo (which Ray Train and the actor groups use on CPU) is kept on loopback too.
    ``address="local"``: always a new cluster, never silently joining one `ray start` left.
    """
    import ray
    # Ray reads this switch from the environment when it is imported, which in the
    # driver has already happened; set it for the processes Ray is about to start and
    # on the imported module (node_ip_address() reads the module attribute), or every
    # Ray server and worker would bind the machine's address or all interfaces.
    _keep_loopback()
    quiet_ray(verbose)
    ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                   dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                   log_to_driver=log_to_driver,
                   logging_level=logging.INFO if verbose else logging.ERROR,
                   runtime_env={"env_vars": {"GLOO_SOCKET_IFNAME": "lo",
                                             **_plugin_env().get("env_vars", {})}})
    rearm()  # ray.init put its own SIGTERM handlers in
    if not verbose:
        logging.getLogger("ray").setLevel(logging.WARNING)  # the job's own run: warnings
    return ctx


def connect_ray(address: str, num_cpus: int, *, log_to_driver: bool = False,
                verbose: bool = False) -> None:
    """Join the Ray cluster at ``address`` (:func:`join_ray`), or start a local one with
    ``num_cpus``."""
    if address:
        join_ray(address)
    else:
        start_local_ray(num_cpus, log_to_driver=log_to_driver, verbose=verbose)
