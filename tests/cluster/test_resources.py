import os

from recdistill.cluster.resources import ResourceSampler, role


def test_sampler_names_actor_processes_and_keeps_their_peaks(ray_cluster) -> None:
    ray = ray_cluster

    @ray.remote(num_cpus=0)
    class Probe:
        def grow(self, mb: int) -> int:
            self.block = bytearray(mb * 2**20)
            for i in range(0, len(self.block), 4096):  # touch every page: it counts in RSS
                self.block[i] = 1
            return os.getpid()

        def shrink(self) -> None:
            self.block = bytearray(0)

    probe = Probe.remote()
    pid = ray.get(probe.grow.remote(1))
    sampler = ResourceSampler(interval=3600, object_store=False)  # sampled by hand here
    first = sampler.sample().rss[pid]
    ray.get(probe.grow.remote(200))
    grown = sampler.sample().rss[pid]
    ray.get(probe.shrink.remote())
    sampler.sample()
    assert grown - first > 150 * 2**20
    summary = sampler.summary()
    assert sampler.roles[pid] == "Probe"
    seen = summary["roles"]["Probe"]
    assert (seen["peak_rss"], seen["processes"], seen["peak_rss_each"]) == \
        (grown, 1, [grown])
    # the bytearray is private memory: it shows in RSS minus shared pages as well
    assert seen["peak_private"] == sampler.samples[1].private[pid]
    assert sampler.samples[1].private[pid] - sampler.samples[0].private[pid] > 150 * 2**20
    assert summary["samples"] == 3
    assert summary["roles"]["driver"]["processes"] == 1
    assert summary["peak_total_rss"] == max(sum(s.rss.values()) for s in sampler.samples)
    curve = sampler.curve()
    assert curve[1]["by_role"]["Probe"] == grown
    ray.kill(probe)


class _Proc:
    def __init__(self, pid: int, cmd: list[str]) -> None:
        self.pid, self._cmd = pid, cmd

    def cmdline(self) -> list[str]:
        return self._cmd

    def name(self) -> str:
        return "x"


def test_role_names() -> None:
    assert role(_Proc(1, ["python"]), driver=1) == "driver"
    assert role(_Proc(2, ["ray::TeacherRank.label_next()"]), driver=1) == "TeacherRank"
    assert role(_Proc(2, ["ray::StudentReplica"]), driver=1) == "StudentReplica"
    assert role(_Proc(2, ["ray::MapBatches(_Chunks)"]), driver=1) == "MapBatches(_Chunks)"
    assert role(_Proc(2, ["/x/bin/raylet", "--flag"]), driver=1) == "raylet"
    assert role(_Proc(2, ["/x/python", "/x/ray/_private/log_monitor.py"]), driver=1) == \
        "log_monitor"


def test_soak_boundedness_compares_last_third_with_middle_third() -> None:
    from recdistill.jobs.soak import bounded
    # t = 0..8: start-up spike in the first third, flat middle, +10% driver at the end
    curve = [{"t": float(t), "total_rss": 100 + (50 if t < 3 else 0), "total_private": 80,
              "object_store": 10,
              "by_role": {"driver": 40 if t < 6 else 44, "TeacherRank": 60},
              "by_role_private": {"driver": 30, "TeacherRank": 50 if t < 6 else 60}}
             for t in range(9)]
    b = bounded(curve)
    assert b["rss"]["middle_third_peaks"]["total"] == 100  # t in [8/3, 16/3): 3, 4, 5
    assert b["rss"]["growth"] == {"total": 1.0, "object_store": 1.0, "TeacherRank": 1.0,
                                  "driver": 1.1}
    assert b["private"]["growth"] == {"total": 1.0, "object_store": 1.0,
                                      "TeacherRank": 1.2, "driver": 1.0}
