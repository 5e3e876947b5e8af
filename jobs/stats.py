"""Count a dataset TOML's train statistics on a Ray cluster, once, for every job to reuse.

    python -m jobs.stats --data my.toml [--address host:6379]

A streamed train split (``read = "stream"``, or "auto" above 2e6 Parquet rows) needs its
statistics before the first pass: each ``vocab`` column's vocabulary (counts per value,
``min_count``, ``max_size``), the dense columns' mean and standard deviation, and its
rows. The jobs count them in their driver, block by block, when nothing is kept yet;
this job counts them as a Ray Data aggregation (one task per train file, the value
counts added up by ``groupby``) on the cluster it starts or joins, and keeps them beside
the TOML (``.recdistill-stats/``, keyed by the id rules and each train file's path, size
and modification time). A bad value fails naming its file, row and column, before
anything is kept.
"""

from __future__ import annotations

import argparse
import sys
import time

from recdistill.data.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="recdistill stats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a dataset .toml")
    p.add_argument("--address", default="",
                   help="join this Ray cluster (default: start a local one)")
    a = p.parse_args(argv)
    if not a.data.endswith(".toml"):
        print(f"error: --data {a.data}: expected a dataset .toml", file=sys.stderr)
        return 2
    import os

    import ray

    from recdistill.cluster.calls import input_error
    from recdistill.cluster.session import join_ray, start_local_ray
    from recdistill.cluster.train_stats import count_with_ray_data
    from recdistill.data.tabular import load_tabular
    t0 = time.perf_counter()
    own = not ray.is_initialized()
    if own:
        if a.address:
            join_ray(a.address)
        else:
            start_local_ray(max(2, os.cpu_count() or 1), dashboard=False)
    try:
        data = load_tabular(a.data, read="stream", count_train=count_with_ray_data)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a Ray Data task's bad input, named
        bad = input_error(e)
        if bad is None:
            raise
        print(f"error: {bad}", file=sys.stderr)
        return 2
    finally:
        if own:
            ray.shutdown()
    t = data.transform
    sizes = ", ".join(f"{c} {len(v):,}" for c, v in sorted(t.vocabs.items())) or "none"
    print(f"{a.data}: {len(data.train):,} train rows; vocabularies: {sizes}; "
          f"{data.reading} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
