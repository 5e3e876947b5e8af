"""The label side of the stream: one teacher, or a committee of teachers, as label groups.

A committee has one :class:`LabelGroup` per member, each its own K sharded ranks. The
first member leads: its ranks read the pass's Ray Data stream (the sparse features of
every member) and store each labelled batch, inputs included, once. Every other member
labels the lead's stored batches: member rank k gets lead rank k's batch refs as
arguments of one call, so Ray runs it as soon as they are stored and the members label
side by side, a batch apart, instead of each reading and decoding the stream again.
A batch is published when every member has labelled it; the driver checks that the
members' example ids agree (the fan-in join), and the stream item holds one ref per
member. The replicas combine them (``codec.committee_outputs``): the mean of the
members' logits, every member's features side by side, and each member's logits by name.

Failure handling is the label group's, for the whole committee: a rank of any member
that dies ends the round as failed, every member is re-formed from the same checkpoint
versions and the pass is read again (batches already published are dropped), so
backpressure, exactly-once and the driver checkpoint see one label source.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from recdistill.cluster.config import DistillConfig
from recdistill.cluster.calls import CALL_TIMEOUT_S
from recdistill.cluster.contracts import LabelResult
from recdistill.cluster.label_group import LabelGroup
from recdistill.teacher.checkpoint import read_meta, resolve
from recdistill.teacher.model import teacher_features


class Committee:
    """The label groups of one label source (one for a single teacher or soft labels).

    Args:
        members: the label groups, the lead first.
    """

    def __init__(self, members: list[LabelGroup]) -> None:
        self.members = members

    # ------------------------------------------------------------------ building
    @classmethod
    def teacher(cls, cfg: DistillConfig) -> Committee:
        """The configured teacher or committee, each member's version resolved once
        here: every rank (and a re-formed group) loads the same version."""
        return cls.from_sources(cfg, [str(resolve(m.checkpoint, cfg.teacher_group.version))
                                      for m in cfg.members])

    @classmethod
    def from_sources(cls, cfg: DistillConfig, sources: list[str]) -> Committee:
        """Members loading these checkpoint versions (in ``cfg.members`` order)."""
        names = [m.name for m in cfg.members]
        if len(sources) != len(names):
            raise ValueError(f"{len(sources)} checkpoints for members {names}")
        if len(sources) == 1:
            return cls([LabelGroup(cfg, sources[0])])
        # The lead reads the union of the members' features, in schema order.
        metas = [read_meta(s) for s in sources]
        spec = metas[0][0]
        wanted = {f for s, c, _ in metas for f in teacher_features(s, c)}
        keys = tuple(f for f in spec.sparse_names if f in wanted)
        return cls([LabelGroup(cfg, src, member=name, read_keys=keys if i == 0 else (),
                               follower=i > 0)
                    for i, (name, src) in enumerate(zip(names, sources))])

    @classmethod
    def soft_labels(cls, cfg: DistillConfig, root: str) -> Committee:
        return cls([LabelGroup(cfg, root, soft_labels=True)])

    @classmethod
    def resume(cls, cfg: DistillConfig, source: str) -> Committee:
        """The members a driver checkpoint's ``source`` names (see :attr:`source`)."""
        return cls.from_sources(cfg, json.loads(source) if source.startswith("[")
                                else [source])

    # ------------------------------------------------------------------ facts
    @property
    def lead(self) -> LabelGroup:
        return self.members[0]

    @property
    def names(self) -> list[str]:
        return [m.member or m.name for m in self.members]

    @property
    def ranks(self) -> int:
        return self.lead.ranks

    @property
    def info(self) -> dict[str, Any]:
        """The lead's setup info, with ``parameters`` and the features' widths summed
        over the members (a committee's features are every member's side by side)."""
        info = dict(self.lead.info)
        if len(self.members) > 1 and info:
            info["parameters"] = sum(int(m.info["parameters"]) for m in self.members)
            info["feature_dims"] = {k: sum(int(m.info["feature_dims"][k])
                                           for m in self.members)
                                    for k in info["feature_dims"]}
        return info

    @property
    def source(self) -> str:
        """What was loaded: the one checkpoint version, or the members' as a JSON list
        (the driver checkpoint's record; :meth:`resume` reads it back)."""
        sources = [m.source for m in self.members]
        return sources[0] if len(sources) == 1 else json.dumps(sources)

    @property
    def generation(self) -> int:
        return self.lead.generation

    @property
    def in_flight(self) -> int:
        """Labelling calls in flight (each on every rank of every member)."""
        return self.lead.in_flight

    @property
    def actors(self) -> list[Any]:
        """Every member's rank actors, the lead's first."""
        return [a for m in self.members for a in m.actors]

    @property
    def pids(self) -> list[int]:
        return [p for m in self.members for p in m.pids]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> dict[str, Any]:
        for m in self.members:
            m.start()
        return self.info

    def shutdown(self) -> None:
        for m in self.members:
            m.shutdown()

    def discard(self) -> None:
        for m in self.members:
            m.discard()

    # ------------------------------------------------------------------ calls
    def start_pass(self, shards: list[Any], index: int) -> None:
        """The lead's ranks take their shares of pass ``index`` (the others read the
        lead's)."""
        self.lead.start_pass(shards, index)

    def request(self, n: int, index: int) -> None:
        """Every member's next ``n`` batches per rank of pass ``index``: the lead's from
        the stream, the others' of the lead's (each call waits only for its lead
        batches)."""
        self.lead.request(n, index)
        for m in self.members[1:]:
            m.request_from(self.lead.pending[-1], n)

    def pending_refs(self) -> list[Any]:
        return [ref for m in self.members for ref in m.pending_refs()]

    def oldest_done(self, ready: set[Any]) -> bool:
        """Whether the oldest call in flight is done on every rank of every member."""
        return all(m.oldest_done(ready) for m in self.members)

    def outcomes(self, ready: set[Any]) -> list[bool | None]:
        """Per rank of every member: True, False (it failed, or the lead's batches it
        labels did) or None (still running)."""
        return [o for m in self.members for o in m.outcomes(ready)]

    def collect(self) -> LabelResult:
        """The oldest call's batches (every member's calls are done), each with one ref
        per member: the lead's, then each other member's."""
        results = [m.collect() for m in self.members]
        if len(results) == 1:
            return results[0]
        lead = results[0]
        batches = []
        for n, (rank, i, ids, refs) in enumerate(lead.batches):
            joined = list(refs)
            for name, r in zip(self.names[1:], results[1:]):
                other_ids, other_refs = r.batches[n][2:]
                if not np.array_equal(other_ids, ids):  # the fan-in join, by example id
                    raise RuntimeError(f"committee member {name} labelled other examples "
                                       f"than the lead in batch {n} of a labelling call")
                joined += other_refs
            batches.append((rank, i, ids, tuple(joined)))
        return LabelResult(batches, lead.ended)

    def evaluate_members(self, split_ref: Any, block: int, batch_size: int,
                         group_key: str = ""
                         ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
        """(labels, member -> logits, the rows' ``group_key`` ids or None) of every row
        of one block of a split, the members side by side."""
        import ray

        refs = [[t.evaluate.remote(split_ref, block, batch_size, group_key)
                 for t in m.actors] for m in self.members]
        got = [ray.get(r, timeout=CALL_TIMEOUT_S)[0] for r in refs]
        return got[0][1], {name: g[0] for name, g in zip(self.names, got)}, got[0][2]

    def reload(self, checkpoint: str) -> int:
        if len(self.members) > 1:  # DistillConfig refuses refresh_every for a committee
            raise RuntimeError("a committee's members are not refreshed")
        return self.lead.reload(checkpoint)

    def usage(self) -> dict[str, Any]:
        """What the ranks of every member spent and produced, summed, and per member
        (``members``) for a committee."""
        per = {name: m.usage() for name, m in zip(self.names, self.members)}
        if len(per) == 1:
            return per[self.names[0]]
        total: dict[str, Any] = {key: sum(u[key] for u in per.values())
                                 for key in per[self.names[0]]}
        # every member labels the same examples: count them once
        total["examples"] = per[self.names[0]]["examples"]
        total["batches"] = per[self.names[0]]["batches"]
        return {**total, "members": per}
