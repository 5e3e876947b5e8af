"""What a job's actors reserve (CPUs, GPUs, processes), checked against what the cluster
or this machine has before any actor starts, in an error that names the resource and
the config keys that ask for it."""

from __future__ import annotations

from dataclasses import dataclass

from recdistill.cluster.config import DistillConfig
from recdistill.data.errors import ConfigError

ACTORS_PER_CPU = 10  # the most actor processes a local cluster starts per core
EPS = 1e-6  # fractions of a GPU add up in floating point (0.1 x 3 > 0.3)


@dataclass(frozen=True)
class Demand:
    """A job's reservations: CPUs, GPUs and custom resources over its actors, and how
    many actors."""

    cpus: float
    gpus: float
    actors: int
    gpu_terms: str  # how ``gpus`` adds up, in config keys
    resources: tuple[tuple[str, float], ...] = ()  # custom ones, summed over the actors

    @classmethod
    def of(cls, cfg: DistillConfig, teacher: bool = True) -> Demand:
        """``cfg``'s actors; ``teacher`` false: soft-label readers, which hold no GPU."""
        tg = cfg.teacher_group
        ranks = len(cfg.members) * tg.ranks
        teacher_gpus = tg.gpus if teacher else 0.0
        terms = [f"teacher_group.gpus {teacher_gpus:g} x {ranks} ranks"] + [
            f"groups.{g.name}.gpus {g.gpus:g} x {g.replicas} replicas"
            for g in cfg.groups if g.gpus]
        custom: dict[str, float] = {}
        for n, per in [(ranks, tg.resources)] + [(g.replicas, g.resources) for g in cfg.groups]:
            for name, amount in per.items():
                custom[name] = custom.get(name, 0.0) + n * amount
        return cls(resources=tuple(sorted(custom.items())),
                   cpus=ranks * tg.cpus + sum(g.replicas * g.cpus for g in cfg.groups),
                   gpus=ranks * teacher_gpus + sum(g.replicas * g.gpus for g in cfg.groups),
                   actors=ranks + sum(g.replicas for g in cfg.groups),
                   gpu_terms=" + ".join(terms))

    def _gpu_error(self, where: str, have: float) -> ConfigError:
        return ConfigError(
            f"{where} has {have:g} GPUs; this job's actors reserve {self.gpus:g} "
            f"({self.gpu_terms}): run where there are {self.gpus:g} GPUs, or lower those "
            f"keys (0: the actor runs on CPU)")

    def check_cluster(self, address: str, have: dict[str, float]) -> None:
        """Against a joined cluster's ``ray.cluster_resources()``."""
        cpus = have.get("CPU", 0.0)
        # Actors reserve their CPUs; Ray Data's tasks need at least one more.
        if cpus < self.cpus + 1:
            raise ConfigError(
                f"the cluster at {address} has {cpus:g} CPUs; this job's actors reserve "
                f"{self.cpus:g} (teacher_group.cpus x ranks + groups' cpus x replicas) and "
                f"Ray Data needs 1 more: start it with `ray start --head --num-cpus "
                f"{int(self.cpus) + 2}` or lower the cpus in the config")
        if have.get("GPU", 0.0) < self.gpus - EPS:
            raise self._gpu_error(f"the cluster at {address}", have.get("GPU", 0.0))
        for name, need in self.resources:
            if have.get(name, 0.0) < need - EPS:
                raise ConfigError(
                    f"the cluster at {address} has {have.get(name, 0.0):g} of resource "
                    f"{name!r}; this job's actors reserve {need:g} (teacher_group.resources "
                    f"and groups' resources): start nodes with `ray start --resources "
                    f"'{{\"{name}\": N}}'` or change those keys")

    def check_machine(self, cores: int, gpus: int, what: str) -> None:
        """Against this machine, for the single-node cluster the job starts. CPUs are
        logical: the actors mostly wait on each other, so the job may reserve more than
        the machine has (each actor runs one intra-op thread). But each actor is a
        process of its own: past ACTORS_PER_CPU per core they only thrash (and hold
        ~0.5 GiB each). ``what``: the job's actors, in words."""
        if self.actors > ACTORS_PER_CPU * cores:
            raise ConfigError(
                f"this job needs {self.actors} actor processes ({what}); this machine's "
                f"{cores} CPUs hold at most {ACTORS_PER_CPU * cores} ({ACTORS_PER_CPU} per "
                f"CPU): sweep fewer sizes or settings, run fewer --seeds, or join a larger "
                f"cluster with --address")
        if self.resources:
            raise ConfigError(
                f"this job's actors reserve custom resources {dict(self.resources)} "
                "(teacher_group.resources, groups' resources), which the single-node "
                "cluster it starts does not declare: join a cluster whose nodes do "
                "(--address)")
        if gpus < self.gpus - EPS:
            raise self._gpu_error("this machine", gpus)
