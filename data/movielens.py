"""MovieLens-100k, read from the copy the ``recbole`` wheel ships (no network).

Each rating is one example with two tasks: ``like`` (rating >= 4) and ``love``
(rating == 5). Every feature of a rating is computed from what was known strictly before
its timestamp, so no split leaks the future into its features:

- sparse: user_id, item_id, age bucket, gender, occupation, zip prefix, release year,
  genres (bag), and ``user_history`` (the last 50 items the user rated strictly before
  this rating; a bag in the ``item_id`` table). ``user_history`` is privileged: only the
  teacher may use it.
- dense: log counts and shrunk mean ratings of the user's and of the item's earlier
  ratings, and the movie's age at rating time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from recdistill.data.errors import DataError
from recdistill.data.ids import OOV_ID, IdRule, as_text, cardinality, hash_ids
from recdistill.data.spec import Dataset, ExampleTable, FeatureSpec, SparseFeature

HISTORY_LEN = 50
SPLITS = ("user_time", "random", "global_time")
_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])  # MovieLens-1M's age groups
_PRIOR_WEIGHT = 5.0  # pseudo-ratings at the global mean that shrink a short history's mean


def movielens_dir() -> Path:
    """The ml-100k folder inside the installed recbole package."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("MovieLens-100k comes from the 'recbole' package, which is not "
                        "installed; run `make setup` (it installs recbole==1.2.1 --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not path.is_dir():
        raise DataError("recbole is installed but ships no dataset_example/ml-100k",
                        path=str(path))
    return path


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """A RecBole atomic file: tab-separated, header 'name:type'."""
    if not path.is_file():
        raise DataError("file not found", path=str(path))
    with open(path, encoding="utf-8", errors="replace") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        rows = []
        for lineno, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise DataError(f"expected {len(header)} tab-separated fields, got "
                                f"{len(parts)}", path=str(path), row=lineno)
            rows.append(parts)
    return header, rows


def _vocab(values: list[str]) -> dict[str, int]:
    """Sorted distinct values -> ids 1..V (0 stays the OOV id)."""
    return {v: i + 1 for i, v in enumerate(sorted(set(values)))}


def _prior_stats(group: np.ndarray, ts: np.ndarray, value: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each row: how many rows of its group came strictly earlier, and their sum.

    Returns (count, sum, order, start, first): ``order`` sorts rows by (group, ts),
    stable; for sorted position j, ``start[j]`` is where its group begins and
    ``first[j]`` the first position of its group with an equal timestamp, so sorted
    positions [start[j], first[j]) are exactly the strictly earlier rows.
    """
    order = np.lexsort((ts, group))
    g, t, v = group[order], ts[order], value[order]
    key = g.astype(np.int64) * (1 << 32) + t.astype(np.int64)
    first = np.searchsorted(key, key, side="left")
    start = np.searchsorted(g, g, side="left")
    csum = np.concatenate([[0.0], np.cumsum(v)])
    count = np.empty(len(order), np.int64)
    total = np.empty(len(order), np.float64)
    count[order] = first - start
    total[order] = csum[first] - csum[start]
    return count, total, order, start, first


def _split_masks(user: np.ndarray, ts: np.ndarray, split: str, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(user)
    if split == "user_time":
        # Each user's earliest 80% of ratings train, next 10% valid, last 10% test.
        order = np.lexsort((np.arange(n), ts, user))
        u = user[order]
        start = np.searchsorted(u, u, side="left")
        size = np.searchsorted(u, u, side="right") - start
        pos = np.arange(n) - start
        part = np.where(pos < (size * 8) // 10, 0, np.where(pos < (size * 9) // 10, 1, 2))
        which = np.empty(n, np.int64)
        which[order] = part
    elif split == "global_time":
        order = np.lexsort((np.arange(n), ts))
        which = np.empty(n, np.int64)
        which[order] = np.digitize(np.arange(n), [int(n * 0.8), int(n * 0.9)])
    elif split == "random":
        perm = np.random.default_rng(seed).permutation(n)
        which = np.empty(n, np.int64)
        which[perm] = np.digitize(np.arange(n), [int(n * 0.8), int(n * 0.9)])
    else:
        raise DataError(f"unknown MovieLens split {split!r}; expected one of {SPLITS}")
    return which == 0, which == 1, which == 2


HASH_SPACE = 16  # movielens-hashed: buckets per distinct value, at least


def _hashed(values: list[str], space: int = HASH_SPACE) -> tuple[np.ndarray, int]:
    """(id -> hashed id, the table's rows) for a feature whose ids 1..V stand for
    ``values`` (id 0, unknown, stays 0): ``data.ids``' hash rule into the smallest power
    of two of at least ``space`` V buckets, as a user would size a hash space for V
    values."""
    buckets = 1 << max(3, (space * len(values) - 1).bit_length())
    rule = IdRule("hash", buckets=buckets)
    return (np.concatenate([[OOV_ID], hash_ids(as_text(np.array(values, object)),
                                                 buckets)]), cardinality(rule, None))


def load_movielens(split: str = "user_time", seed: int = 0,
                   path: str | os.PathLike[str] | None = None, ids: str = "vocab",
                   hash_space: int = HASH_SPACE) -> Dataset:
    """Load MovieLens-100k as a :class:`Dataset`.

    Args:
        split: ``user_time`` (per-user chronological 80/10/10, the default), ``random``
            (seeded 80/10/10) or ``global_time`` (by timestamp; mostly cold users in test).
        seed: seed of the ``random`` split.
        path: folder holding ``ml-100k.{inter,user,item}``; defaults to recbole's copy.
        ids: ``vocab`` (each feature's values numbered 1..V) or ``hash`` (each value's
            text hashed as a dataset TOML's ``ids = "hash"`` does, into ``hash_space`` V
            buckets or more: the hashing path on a known dataset, collisions included).
    """
    if split not in SPLITS:
        raise DataError(f"unknown MovieLens split {split!r}; expected one of {SPLITS}")
    if ids not in ("vocab", "hash"):
        raise DataError(f"unknown MovieLens ids {ids!r}; expected vocab or hash")
    root = Path(path) if path is not None else movielens_dir()

    _, inter = _read_atomic(root / "ml-100k.inter")
    _, users = _read_atomic(root / "ml-100k.user")
    _, items = _read_atomic(root / "ml-100k.item")
    arr = np.array(inter, dtype=np.float64)
    user = arr[:, 0].astype(np.int64)
    item = arr[:, 1].astype(np.int64)
    rating = arr[:, 2]
    ts = arr[:, 3].astype(np.int64)
    n = len(user)

    # User side: age bucket, gender, occupation, zip prefix (ids 1..V; 0 = unknown).
    n_users = max(int(user.max()), max(int(r[0]) for r in users)) + 1
    gender_v = _vocab([r[2] for r in users])
    occ_v = _vocab([r[3] for r in users])
    zip_v = _vocab([r[4][:2] for r in users])
    u_age = np.zeros(n_users, np.int64)
    u_gender = np.zeros(n_users, np.int64)
    u_occ = np.zeros(n_users, np.int64)
    u_zip = np.zeros(n_users, np.int64)
    for uid, age, gender, occ, zipc in users:
        u = int(uid)
        u_age[u] = 1 + int(np.searchsorted(_AGE_EDGES, int(age), side="right"))
        u_gender[u], u_occ[u], u_zip[u] = gender_v[gender], occ_v[occ], zip_v[zipc[:2]]

    # Item side: release year and genres (bag).
    n_items = max(int(item.max()), max(int(r[0]) for r in items)) + 1
    # RecBole's file writes a missing year as 'unkonwn' (sic): keep it OOV.
    year_v = _vocab([r[2] for r in items if r[2].isdigit()])
    genre_v = _vocab([g for r in items for g in r[3].split()])
    i_year = np.zeros(n_items, np.int64)
    i_year_num = np.full(n_items, np.nan)
    i_genres: list[list[int]] = [[] for _ in range(n_items)]
    for iid, _title, year, genres in items:
        i = int(iid)
        if year.isdigit():
            i_year[i] = year_v[year]
            i_year_num[i] = float(year)
        i_genres[i] = [genre_v[g] for g in genres.split()]

    # Dense features from strictly earlier ratings only.
    like = (rating >= 4).astype(np.float32)
    love = (rating == 5).astype(np.float32)
    u_cnt, u_sum, u_order, start_sorted, first_sorted = _prior_stats(user, ts, rating)
    i_cnt, i_sum, *_ = _prior_stats(item, ts, rating)
    mean = float(rating.mean())
    u_mean = (u_sum + _PRIOR_WEIGHT * mean) / (u_cnt + _PRIOR_WEIGHT)
    i_mean = (i_sum + _PRIOR_WEIGHT * mean) / (i_cnt + _PRIOR_WEIGHT)
    year_at = 1970.0 + ts / (365.25 * 86400.0)
    movie_age = np.nan_to_num(year_at - i_year_num[item], nan=0.0)
    dense = np.stack([np.log1p(u_cnt), u_mean, np.log1p(i_cnt), i_mean,
                      np.log1p(np.clip(movie_age, 0, None))], axis=1)

    # user_history: last HISTORY_LEN items of the user strictly before this rating.
    # In (user, ts) order, row j's earlier ratings are positions [start_j, first_j).
    items_by_user = item[u_order]
    begin_sorted = np.maximum(start_sorted, first_sorted - HISTORY_LEN)
    hist_len = np.empty(n, np.int64)
    hist_begin = np.empty(n, np.int64)
    hist_len[u_order] = first_sorted - begin_sorted
    hist_begin[u_order] = begin_sorted

    g_len = np.array([len(g) for g in i_genres], np.int64)
    g_off = np.concatenate([[0], np.cumsum(g_len)])
    g_val = np.array([x for g in i_genres for x in g], np.int64)

    def single(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(len(v) + 1, dtype=np.int64), v.astype(np.int64)

    def ragged(begin: np.ndarray, length: np.ndarray, src: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.concatenate([[0], np.cumsum(length)]).astype(np.int64)
        pos = np.repeat(begin - offsets[:-1], length) + np.arange(offsets[-1])
        return offsets, src[pos]

    # Each feature's vocabulary, in id order (ids 1..V); the hashed ids replace them.
    values = {"user_id": [str(u) for u in range(1, n_users)],
              "item_id": [str(i) for i in range(1, n_items)],
              "age": [str(a) for a in range(1, len(_AGE_EDGES) + 2)],
              "gender": list(gender_v), "occupation": list(occ_v), "zip_prefix": list(zip_v),
              "release_year": list(year_v), "genres": list(genre_v)}
    sizes = {"user_id": n_users, "item_id": n_items, "age": len(_AGE_EDGES) + 2,
             **{k: len(v) + 1 for k, v in values.items() if k not in ("user_id", "item_id",
                                                                       "age")}}
    remap: dict[str, np.ndarray] = {}
    if ids == "hash":
        for k, v in values.items():
            remap[k], sizes[k] = _hashed(v, hash_space)
    remap["user_history"] = remap.get("item_id", np.arange(n_items))

    def table(rows: np.ndarray) -> ExampleTable:
        u, i = user[rows], item[rows]
        sparse = {
            "user_id": single(u),
            "item_id": single(i),
            "age": single(u_age[u]),
            "gender": single(u_gender[u]),
            "occupation": single(u_occ[u]),
            "zip_prefix": single(u_zip[u]),
            "release_year": single(i_year[i]),
            "genres": ragged(g_off[i], g_len[i], g_val),
            "user_history": ragged(hist_begin[rows], hist_len[rows], items_by_user),
        }
        if ids == "hash":
            sparse = {k: (off, remap[k][v]) for k, (off, v) in sparse.items()}
        return ExampleTable(
            dense=((dense[rows] - mu) / sd).astype(np.float32),
            labels=np.stack([like[rows], love[rows]], axis=1),
            ids=rows.astype(np.int64), sparse=sparse)

    spec = FeatureSpec(
        dense=("user_prior_count", "user_prior_mean", "item_prior_count",
               "item_prior_mean", "movie_age"),
        sparse=(
            *(SparseFeature(k, sizes[k], multi_valued=k == "genres") for k in values),
            SparseFeature("user_history", sizes["item_id"], multi_valued=True,
                          table="item_id"),
        ),
        tasks=("like", "love"),
        privileged=("user_history",),
        group_key="user_id",  # GAUC and NDCG@10 per user
    )
    tr, va, te = _split_masks(user, ts, split, seed)
    # Dense features are standardised with train statistics only.
    mu, sd = dense[tr].mean(axis=0), dense[tr].std(axis=0) + 1e-6
    return Dataset(spec, table(np.flatnonzero(tr)), table(np.flatnonzero(va)),
                   table(np.flatnonzero(te)),
                   name=f"movielens-100k/{split}" + ("/hashed" if ids == "hash" else ""))
