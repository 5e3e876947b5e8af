"""What the jobs share: config files, dataset choice, reports. Config files are parsed
into frozen dataclasses here (and only in jobs/); TOML is data, nothing in it runs."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import tomllib
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch

from recdistill.data.errors import ConfigError, DataError
from recdistill.data.movielens import SPLITS, load_movielens
from recdistill.data.spec import Dataset
from recdistill.data.synthetic import SyntheticConfig, synthetic_dataset, synthetic_stream_dataset
from recdistill.data.tabular import load_tabular
from recdistill.teacher.registry import PLUGINS_ENV, load_plugins  # noqa: F401 (--plugin)

DATASETS = ("movielens", "synthetic", "synthetic-stream")


CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the configs that come with the package (``jobs/configs/*.toml``)."""
    return sorted(f.stem for f in CONFIGS.glob("*.toml"))


def config_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a file, else the shipped config of that name (``distill_movielens``,
    ``distill_movielens.toml`` or ``jobs/configs/distill_movielens.toml`` all name it), so
    the README's commands work from any directory once the package is installed."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = CONFIGS / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"{p}: config file not found (shipped configs, usable by name: "
                      f"{', '.join(shipped_configs())})")


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML config file (or a shipped config's name) as a dict; errors name the file."""
    p = config_path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None


def check_sections(doc: dict[str, Any], known: tuple[str, ...], path: str) -> None:
    for key in doc:
        if key not in known:
            raise ConfigError(f"{path}: unknown section or key {key!r}; known: {list(known)}")


def add_data_arguments(p: Any) -> None:
    """The dataset flags every job takes (``--data``, ``--split``, ``--rows``,
    ``--max-cardinality``) on an ``argparse`` parser; None where not given."""
    p.add_argument("--data", help="movielens (default), synthetic, synthetic-stream "
                                  "(jobs.distill only) or a dataset .toml")
    p.add_argument("--split", help=f"MovieLens split: {', '.join(SPLITS)} (default "
                                   "user_time)")
    p.add_argument("--rows", type=int, help="synthetic rows (default 100000)")
    p.add_argument("--max-cardinality", type=int, dest="max_cardinality",
                   help="cap on synthetic ids per feature (default 100000; 10000000 gives "
                        "Criteo's own sizes: a 1.08e9-parameter teacher at embedding dim "
                        "32)")


def add_plugin_argument(p: Any) -> None:
    """``--plugin MODULE`` (repeatable): a module that registers teacher architectures
    (``recdistill.teacher.registry``), imported from the working directory."""
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE (from the working directory) before the config "
                        "is read: it registers teacher architectures that [teacher] arch "
                        "names; repeatable")


def add_labelling_arguments(p: Any) -> None:
    """How the teacher labels (``--label-batch-size``, ``--table-dtype``): the
    ``teacher_group`` keys of the same names; None where not given."""
    from recdistill.teacher.config import TABLE_DTYPES
    p.add_argument("--label-batch-size", type=int, dest="label_batch_size",
                   help="rows per teacher forward, a multiple of the student batch "
                        "(teacher_group.label_batch_size; default 4096)")
    p.add_argument("--table-dtype", choices=TABLE_DTYPES, dest="table_dtype",
                   help="embedding tables the teacher labels from: fp32 (default) or "
                        "quantized to fp16, int8 or int4 (teacher_group.table_dtype)")


def load_dataset(data: str, *, split: str = "user_time", seed: int = 0,
                 rows: int = 100_000, max_cardinality: int = 100_000) -> Dataset:
    """``movielens`` (recbole's copy), ``synthetic`` (``rows`` rows in memory, split
    80/10/10), ``synthetic-stream`` (``rows`` training rows generated as they are read,
    50,000 validation and test rows; online distillation only), or a dataset TOML.
    ``max_cardinality`` caps the synthetic features' ids."""
    if data == "movielens":
        if split not in SPLITS:
            raise ConfigError(f"--split: unknown {split!r}; expected one of {SPLITS}")
        return load_movielens(split=split, seed=seed)
    if data in ("synthetic", "synthetic-stream"):
        cfg = SyntheticConfig(rows=rows, seed=seed, max_cardinality=max_cardinality)
        return synthetic_dataset(cfg) if data == "synthetic" else synthetic_stream_dataset(cfg)
    if data.endswith(".toml"):
        d = load_tabular(data)
        for split, s in d.skipped.items():  # skip_bad_rows: say what was left out
            print(f"warning: {s['file']}: skipped {s['rows']} malformed row(s) of {split} "
                  f"({'; '.join(f'{k}: {n}' for k, n in s['reasons'].items())}); first: "
                  f"{'; '.join(s['first'])}", file=sys.stderr, flush=True)
        return d
    raise DataError(f"--data: expected {' or '.join(DATASETS)} or a dataset .toml file, "
                    f"got {data!r}")


def in_memory(data: Dataset, job: str) -> Dataset:
    """``data`` if its training rows are in memory; jobs that index rows need that."""
    from recdistill.data.synthetic import SyntheticStream
    if isinstance(data.train, SyntheticStream):
        raise ConfigError(f"--data synthetic-stream streams its training rows for "
                          f"jobs.distill only; {job} needs them in memory: use --data "
                          "synthetic (the same generator and feature spec)")
    return data


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write JSON to a temp file beside ``path`` and rename it in: never half a report."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False))
    os.replace(tmp, p)
    return p


def quiet_library_warnings() -> None:
    """Silence deprecation chatter from the pinned libraries that a user cannot act on
    (ShardedTensor -> DTensor in DCP, DDP's broadcast_buffers in TorchRec, fx tracing)."""
    for module in ("torch.distributed", "torchrec"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def set_threads() -> None:
    """One intra-op thread per process when several processes share the cores."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("OMP_NUM_THREADS") == "1":
        torch.set_num_threads(1)


def metrics_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """A text table: one line per (model, task) with AUC, logloss, NE, calibration."""
    lines = [f"{'model':<14}{'task':<10}{'AUC':>8}{'logloss':>9}{'NE':>8}{'calib':>8}"]
    for model, per_task in rows.items():
        for task, m in per_task.items():
            lines.append(f"{model:<14}{task:<10}{m['auc']:>8.4f}{m['logloss']:>9.4f}"
                         f"{m['ne']:>8.4f}{m['calibration']:>8.3f}")
    return "\n".join(lines)


JOIN_TIMEOUT_S = 60.0  # the most joining a Ray cluster may take before the job gives up


class ClusterError(ConfigError):
    """The Ray cluster the job was told to join (``--address`` / ``RAY_ADDRESS``)
    cannot be joined; the message names the address."""


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
    return (f"--address {address}: no Ray cluster joined within {timeout_s:.0f} s (is it "
            "a Ray head's GCS address, host:6379, and is this machine allowed to reach it?)")


def join_ray(address: str, *, timeout_s: float = JOIN_TIMEOUT_S,
             log_to_driver: bool = True) -> None:
    """Join the Ray cluster at ``address``, or fail with one line naming it.

    Ray's own join retries a GCS that does not answer without end, so: the address's
    port is tried first (refused or unreachable: fail at once), then asked for its
    cluster id with a deadline (:func:`_check_gcs`), and the join itself is given
    ``timeout_s``. A loopback address stays loopback (the driver joins as 127.0.0.1
    instead of the machine's address)."""
    import socket

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
