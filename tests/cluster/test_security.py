"""Security defaults of a local run: every listening socket on loopback."""

import ipaddress
import json
import subprocess
import sys

_SCRIPT = r'''
import json, os, time
import psutil, ray, torch.distributed as dist
from recdistill.cluster.session import start_local_ray
from recdistill.cluster.process import free_port, init_group, node_address
import torch

ctx = start_local_ray(4, dashboard=True)

@ray.remote(num_cpus=1)
class Rank:  # what a teacher rank or student replica does to form its gloo group
    def address(self):
        host = node_address()
        return host, free_port(host)
    def join(self, addr, port, rank):
        init_group(addr, port, rank, 2, torch.device("cpu"))
        t = torch.ones(1) * (rank + 1)
        dist.all_reduce(t)
        return float(t)

ranks = [Rank.remote(), Rank.remote()]
addr, port = ray.get(ranks[0].address.remote())
sums = ray.get([r.join.remote(addr, port, i) for i, r in enumerate(ranks)])
rows = ray.data.range(1000).map_batches(lambda b: {"id": b["id"] * 2}).sum("id")
time.sleep(2)  # the dashboard's agents come up after ray.init returns
me = psutil.Process()
pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
listen = []
for c in psutil.net_connections(kind="inet"):
    if c.status == psutil.CONN_LISTEN and c.pid in pids:
        try:
            name = psutil.Process(c.pid).name()
        except psutil.NoSuchProcess:
            name = "?"
        listen.append([c.laddr.ip, c.laddr.port, name])
print("RESULT " + json.dumps({"listen": listen, "gloo_addr": addr, "sums": sums,
                              "rows": rows, "dashboard": ctx.dashboard_url}))
ray.shutdown()
'''


def _loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a.is_loopback


def test_local_run_listens_on_loopback_only() -> None:
    """A local cluster as the jobs start it (dashboard on), with a gloo group of two
    actors and a Ray Data job running: psutil lists every listening socket of the
    driver's process tree; each is on 127.0.0.1 (or its IPv6-mapped form)."""
    r = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                       timeout=240, env={**__import__("os").environ, "RAY_ADDRESS": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(next(line for line in r.stdout.splitlines()
                          if line.startswith("RESULT "))[7:])
    assert out["sums"] == [3.0, 3.0] and out["rows"] == 999_000  # the work really ran
    assert out["gloo_addr"] == "127.0.0.1"
    assert out["dashboard"].startswith("127.0.0.1:")
    names = {n for _, _, n in out["listen"]}
    assert {"gcs_server", "raylet"} <= names  # the daemons were seen listening
    assert int(out["dashboard"].split(":")[1]) in {p for _, p, _ in out["listen"]}
    exposed = [x for x in out["listen"] if not _loopback(x[0])]
    assert exposed == [], exposed
