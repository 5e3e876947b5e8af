"""ids: how each way of turning raw ids into table rows trains a student, on
MovieLens-100k with the baseline student (true labels, no teacher): each feature's
vocabulary (``vocab``), the same vocabulary numbered in another order (``vocab_perm``,
a seeded relabelling per run: no collision, the same tables and first rows, so how far
any renumbering of ids moves a seed's AUC, the comparison's noise floor), the ``hash`` rule at 16x and 64x buckets per value, the 64x one
with each table's first rows drawn at the vocabulary's scale (``hash_64x_init``:
TorchRec draws a table's rows from U(+-sqrt(1/rows)), so a hashed table 64x larger
starts 8x smaller), and TorchRec's managed-collision remap (MCH:
``MCHManagedCollisionModule``, LFU eviction) of ids hashed into a 2^20x space, onto a
table of 2x the values, learnt as it trains.
Test AUC at the best validation pass per seed, paired with ``vocab`` of the same seed,
and the share of test lookups that collide (hash: a bucket another value of the
feature also hashes to; MCH: an id without a slot of its own, sent to the miss row)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import numpy as np

SCHEMES = ("vocab", "vocab_perm", "hash_16x", "hash_64x", "hash_64x_init", "mch_2x")
MCH_SPACE = 1 << 20  # buckets per value of the hash MCH remaps: ids as good as raw


def _student(seed: int) -> Any:
    from recdistill.cluster.config import default_groups
    return dataclasses.replace(default_groups(seed)[0].student, seed=seed)


def _mcc(model: Any) -> Any:
    """A managed-collision collection for the student's tables: 2x each table's values
    (its vocabulary's size), the last row the misses'."""
    import torch
    from torchrec.modules.mc_modules import (LFU_EvictionPolicy, ManagedCollisionCollection,
                                             MCHManagedCollisionModule)
    configs = model.ebc.embedding_bag_configs()
    modules = {c.name: MCHManagedCollisionModule(
        zch_size=c.num_embeddings, device=torch.device("cpu"),
        eviction_policy=LFU_EvictionPolicy(), eviction_interval=1,
        input_hash_size=1 << 62) for c in configs}
    return ManagedCollisionCollection(modules, configs)


def _mch_spec(hashed_spec: Any, vocab_spec: Any) -> Any:
    """``hashed_spec`` with each table sized 2x its vocabulary (the MCH table)."""
    return dataclasses.replace(hashed_spec, sparse=tuple(
        dataclasses.replace(f, cardinality=2 * vocab_spec.feature(f.name).cardinality)
        for f in hashed_spec.sparse))


def _relabelled(vocab: Any, seed: int) -> Any:
    """``vocab`` with each table's ids 1..V renumbered by a permutation drawn from
    ``seed`` (id 0, unknown, stays 0; features sharing a table share it)."""
    rng = np.random.default_rng(seed)
    perm = {}
    for f in vocab.spec.sparse:
        if f.table not in perm:
            n = vocab.spec.feature(f.table).cardinality
            perm[f.table] = np.concatenate([[0], 1 + rng.permutation(n - 1)])

    def table(t: Any) -> Any:
        return dataclasses.replace(t, sparse={
            k: (off, perm[vocab.spec.feature(k).table][v]) for k, (off, v) in t.sparse.items()})
    return dataclasses.replace(vocab, train=table(vocab.train), valid=table(vocab.valid),
                               test=table(vocab.test), name=f"{vocab.name}/relabelled")


def _collisions(vocab: Any, hashed: Any, keys: tuple[str, ...]) -> float:
    """Share of the test lookups whose bucket another value of the feature (one in
    the spec's vocabulary, seen in any split) hashes to."""
    shared = looked = 0
    for k in keys:
        pairs = {}
        for split in ("train", "valid", "test"):
            _, v = getattr(vocab, split).sparse[k]
            _, h = getattr(hashed, split).sparse[k]
            pairs.update(zip(v.tolist(), h.tolist()))
        per_bucket: dict[int, int] = {}
        for b in pairs.values():
            per_bucket[b] = per_bucket.get(b, 0) + 1
        _, h = hashed.test.sparse[k]
        shared += sum(per_bucket[b] > 1 for b in h.tolist())
        looked += len(h)
    return shared / looked


def _train(data: Any, spec: Any, cfg: Any, passes: int, mcc: Any = None,
           init_like: Any = None) -> tuple[dict[str, float], float]:
    """(test AUC per task at the best validation pass, the MCH miss share of the test
    lookups or nan). ``init_like``: a spec whose tables' sizes set the scale of the
    first rows (TorchRec's U(+-sqrt(1/rows)))."""
    import torch

    from recdistill.data.spec import Batch
    from recdistill.student.losses import build_objective
    from recdistill.student.metrics import task_metrics
    from recdistill.student.model import StudentModel
    from recdistill.student.train import make_student_optimizer, student_step
    torch.manual_seed(cfg.seed)
    model = StudentModel(spec, cfg)
    if init_like is not None:
        with torch.no_grad():
            for c, bag in zip(model.ebc.embedding_bag_configs(),
                              model.ebc.embedding_bags.values()):
                bound = init_like.feature(c.feature_names[0]).cardinality ** -0.5
                bag.weight.uniform_(-bound, bound)
    opt = make_student_optimizer(model, cfg)
    objective = build_objective(cfg, spec.tasks)
    keys = model.feature_names

    def remapped(batch: Batch) -> Batch:
        if mcc is None:
            return batch
        return Batch(batch.dense, mcc(batch.sparse), batch.labels, batch.ids)

    @torch.no_grad()
    def score(table: Any) -> tuple[dict[str, Any], float]:
        model.eval()
        if mcc is not None:
            mcc.eval()
        logits, labels, misses, looked = [], [], 0, 0
        for arrays in table.iter_batches(4096, keys=keys):
            b = remapped(arrays.to_batch())
            logits.append(model(b.dense, b.sparse).logits)
            labels.append(b.labels)
            if mcc is not None:  # a miss goes to its table's last row
                for k in keys:
                    v = b.sparse[k].values()
                    misses += int((v == spec.feature(k).cardinality - 1).sum())
                    looked += len(v)
        model.train()
        if mcc is not None:
            mcc.train()
        m = task_metrics(torch.cat(logits).numpy(), torch.cat(labels).numpy(), spec.tasks)
        return m, misses / looked if looked else float("nan")

    best, out = -1.0, ({}, float("nan"))
    for p in range(passes):
        for arrays in data.train.iter_batches(512, shuffle=True, seed=cfg.seed * 1000 + p,
                                              keys=keys):
            student_step(model, opt, objective, remapped(arrays.to_batch()), None)
        valid, _ = score(data.valid)
        if valid[spec.tasks[0]]["auc"] > best:
            best = valid[spec.tasks[0]]["auc"]
            test, miss = score(data.test)
            out = ({t: test[t]["auc"] for t in spec.tasks}, miss)
    return out


def bench_ids(seeds: int = 3, passes: int = 8) -> dict[str, Any]:
    """Each scheme of ``SCHEMES`` per seed; AUC gains paired by seed against vocab."""
    from recdistill.data.movielens import load_movielens
    vocab = load_movielens()
    datasets = {"vocab": vocab, "hash_16x": load_movielens(ids="hash", hash_space=16),
                "hash_64x": load_movielens(ids="hash", hash_space=64),
                "hash_64x_init": load_movielens(ids="hash", hash_space=64),
                "mch_2x": load_movielens(ids="hash", hash_space=MCH_SPACE)}
    keys = vocab.spec.student_view().sparse_names
    runs: dict[str, list[tuple[dict[str, float], float]]] = {s: [] for s in SCHEMES}
    seconds: dict[str, float] = {s: 0.0 for s in SCHEMES}
    for seed in range(seeds):
        for scheme in SCHEMES:  # interleaved per seed: the machine's drift hits each alike
            data = _relabelled(vocab, seed) if scheme == "vocab_perm" else datasets[scheme]
            cfg = _student(seed)
            t = time.perf_counter()
            if scheme == "mch_2x":
                from recdistill.student.model import StudentModel
                spec = _mch_spec(data.spec, vocab.spec)
                runs[scheme].append(_train(data, spec, cfg, passes,
                                           _mcc(StudentModel(spec, cfg))))
            else:
                runs[scheme].append(_train(data, data.spec, cfg, passes, init_like=(
                    vocab.spec if scheme == "hash_64x_init" else None)))
            seconds[scheme] += time.perf_counter() - t
            print(f"seed {seed} {scheme}: {runs[scheme][-1]}", flush=True)
    tasks = vocab.spec.tasks
    out: dict[str, Any] = {"seeds": seeds, "passes": passes, "schemes": {}}
    for scheme in SCHEMES:
        aucs = {t: [r[0][t] for r in runs[scheme]] for t in tasks}
        gains = {t: [a - v[0][t] for a, v in zip(aucs[t], runs["vocab"])] for t in tasks}
        out["schemes"][scheme] = {
            "test_auc_mean": {t: statistics.mean(aucs[t]) for t in tasks},
            "gain_vs_vocab_mean": {t: statistics.mean(gains[t]) for t in tasks},
            "gain_vs_vocab_sd": {t: statistics.stdev(gains[t]) if seeds > 1 else 0.0
                                 for t in tasks},
            "test_lookups_colliding": (
                _collisions(vocab, datasets[scheme], keys) if scheme.startswith("hash")
                else statistics.mean(r[1] for r in runs[scheme]) if scheme == "mch_2x"
                else 0.0),
            "seconds_per_run": seconds[scheme] / seeds}
    return out


def table(result: dict[str, Any]) -> str:
    """The README / BENCHMARKS table of a ``bench_ids`` result."""
    lines = ["| ids | test lookups colliding | like AUC | love AUC | vs vocab like | "
             "vs vocab love |", "|---|---|---|---|---|---|"]
    for scheme, r in result["schemes"].items():
        a, g, sd = r["test_auc_mean"], r["gain_vs_vocab_mean"], r["gain_vs_vocab_sd"]
        lines.append(f"| {scheme} | {r['test_lookups_colliding']:.2%} | {a['like']:.4f} | "
                     f"{a['love']:.4f} | {g['like']:+.4f} ± {sd['like']:.4f} | "
                     f"{g['love']:+.4f} ± {sd['love']:.4f} |")
    return "\n".join(lines)


def run(args: Any, teacher: str) -> dict[str, Any]:  # no teacher: students alone
    return bench_ids(args.seeds, args.student_passes)


def summary(result: dict[str, Any]) -> None:
    print(table(result))
