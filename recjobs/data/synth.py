"""The built-in synthetic data set: small, deterministic, and with structure a model can learn.

How it is generated (all vectorised numpy from `np.random.default_rng(seed)`):

* Users belong to one of 8 latent groups; each group prefers 3 of 12 item categories. The
  observed `user_group` column is the latent group only 80% of the time, so a model has to
  learn user ids as well as features. `region` and `age_group` are pure noise.
* Items get a category (balanced), a price band and a style. Popularity is Zipf-skewed within
  each category (the k-th most popular item of a category has weight 1 / k^1.1).
* Each user gets at least min(3, interactions // users) interactions plus a share of the rest
  proportional to a log-normal activity level. An interaction picks a category (one of the
  group's preferred ones with probability 0.8, else uniform), then an item by popularity.
  Duplicate (user, item) pairs are resampled a few times; rare leftovers are kept.
* The rating (1..5, whole numbers as floats) grows with affinity (preferred category or not)
  and a per-item quality, plus noise.
* Timestamps are uniform over 180 days from 2023-11-14; rows are sorted by time.
* Validation split by time with one global cutoff: the timestamp at the 85% quantile of all
  interactions; rows at or after it are validation. A global cutoff (not a per-user one)
  mimics production, where a model trained on the past is evaluated on the future, and every
  validation timestamp is >= every training timestamp.

A large data set takes minutes, most of it in single numpy calls of seconds each (a sort of
10^8 ids), during which Python runs no signal handler. So, where a caller can be stopped
(`stop_requested`), the tables are generated in a worker thread while the caller's thread
waits in short slices, asks whether to stop and runs its signal handlers: a SIGTERM or Ctrl-C
stops it within a fraction of a second. The numpy calls used release the GIL (`np.repeat`,
which does not, is done with a cumulative sum instead), and the worker gives up at its next
step once abandoned.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from recjobs.data.tables import write_dataset_dir

log = logging.getLogger(__name__)

N_GROUPS = 8
N_CATEGORIES = 12
PREFERRED_PER_GROUP = 3
P_PREFERRED = 0.8
P_GROUP_OBSERVED = 0.8
ZIPF_EXPONENT = 1.1
VAL_FRACTION = 0.15
TIME_START = 1_700_000_000
TIME_SPAN = 180 * 24 * 3600
USER_ID_BASE = 10_000  # ids are not row indices, so code that confuses the two fails tests
ITEM_ID_BASE = 50_000
REGIONS = ("north", "south", "east", "west", "central")
AGE_GROUPS = ("18-24", "25-34", "35-44", "45-54", "55+")
PRICE_BANDS = ("budget", "mid", "premium", "luxury")
STYLES = ("classic", "modern", "sporty", "casual", "minimal", "vintage")
USER_CAT_COLS = ("user_group", "region", "age_group")
ITEM_CAT_COLS = ("category", "price_band", "style")


# How often the waiting thread asks whether to stop.
POLL_S = 0.05


class GenerationStopped(Exception):
    """A stop was asked for while the synthetic tables were generated; nothing was kept."""


def generate_tables(
    users: int,
    items: int,
    interactions: int,
    seed: int,
    stop_requested: Callable[[], bool] | None = None,
) -> dict[str, pa.Table]:
    """The four tables (users, items, interactions_train, interactions_val), in memory.

    With `stop_requested`, generated in a worker thread while this one waits, asking it every
    POLL_S seconds and running its signal handlers (module docstring): GenerationStopped when
    it answers True; an exception a signal handler raises here passes through at once.
    """
    if users < 1 or items < 1 or interactions < 0:
        raise ValueError(
            f"need users >= 1, items >= 1, interactions >= 0; got {users}, {items}, {interactions}"
        )
    log.info(
        "generating the synthetic data set: %d users, %d items, %d interactions (seed %d)",
        users,
        items,
        interactions,
        seed,
    )
    if stop_requested is None:
        return _generate(users, items, interactions, seed, lambda: None)
    abandoned = threading.Event()

    def step() -> None:  # between the worker's numpy calls
        if abandoned.is_set():
            raise GenerationStopped

    done: dict[str, object] = {}

    def work() -> None:
        try:
            done["tables"] = _generate(users, items, interactions, seed, step)
        except BaseException as exc:  # handed to the waiting thread
            done["error"] = exc

    worker = threading.Thread(target=work, name="recjobs-synth", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            if stop_requested():
                raise GenerationStopped
            worker.join(POLL_S)
        # A signal that came while the data was generated stops the command even when the
        # worker finished before this thread looked again (small data on a busy machine).
        if stop_requested():
            raise GenerationStopped
    finally:
        abandoned.set()  # however this thread leaves: the worker stops at its next step
    if "error" in done:
        raise done["error"]  # type: ignore[misc]
    return done["tables"]  # type: ignore[return-value]


def _repeat_index(counts: np.ndarray) -> np.ndarray:
    """`np.repeat(np.arange(len(counts)), counts)`, by a cumulative sum: np.repeat holds the
    GIL for seconds at 10^8 rows, np.cumsum does not."""
    n = int(counts.sum())
    starts = np.cumsum(counts) - counts
    rows = np.flatnonzero(counts > 0)
    marks = np.zeros(n, dtype=np.int64)
    marks[starts[rows]] = np.diff(rows, prepend=0)
    return np.cumsum(marks)


def _generate(
    users: int, items: int, interactions: int, seed: int, step: Callable[[], None]
) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    n_cat = min(N_CATEGORIES, items)
    n_pref = min(PREFERRED_PER_GROUP, n_cat)
    prefs = np.argsort(rng.random((N_GROUPS, n_cat)), axis=1)[:, :n_pref]

    # Items, and a sampler drawing an item of a given category by popularity.
    item_cat = rng.permutation(np.arange(items) % n_cat)
    order = np.lexsort((rng.random(items), item_cat))  # by category, random within
    sorted_cat = item_cat[order]
    cat_start = np.searchsorted(sorted_cat, np.arange(n_cat), side="left")
    cat_end = np.searchsorted(sorted_cat, np.arange(n_cat), side="right")
    rank = np.arange(items) - cat_start[sorted_cat]  # popularity rank within category
    weight = 1.0 / (1.0 + rank) ** ZIPF_EXPONENT
    cum = np.concatenate([[0.0], np.cumsum(weight)])
    lo, hi = cum[cat_start[sorted_cat]], cum[cat_end[sorted_cat]]
    # Category c's items hold keys in (c, c + 1]: one searchsorted samples every category.
    keys = sorted_cat + (cum[1:] - lo) / (hi - lo)

    def sample_items(cats: np.ndarray) -> np.ndarray:
        u = rng.random(len(cats)) * (1.0 - 1e-9)
        pos = np.searchsorted(keys, cats + u, side="right")
        return order[np.minimum(pos, items - 1)]

    # Users: latent group, noisy observed group, noise features.
    group = rng.integers(N_GROUPS, size=users)
    observed = np.where(
        rng.random(users) < P_GROUP_OBSERVED, group, rng.integers(N_GROUPS, size=users)
    )

    # Interactions per user.
    base = min(3, interactions // users)
    activity = rng.lognormal(0.0, 0.6, size=users)
    counts = base + rng.multinomial(interactions - base * users, activity / activity.sum())
    inter_user = _repeat_index(counts)
    n = len(inter_user)
    step()
    preferred = rng.random(n) < P_PREFERRED
    cats = np.where(
        preferred,
        prefs[group[inter_user], rng.integers(n_pref, size=n)],
        rng.integers(n_cat, size=n),
    )
    inter_item = sample_items(cats)
    for attempt in range(6):  # resample duplicate (user, item) pairs; the last tries uniform
        step()
        _, first = np.unique(inter_user * items + inter_item, return_index=True)
        step()
        dup = np.ones(n, dtype=bool)
        dup[first] = False
        if not dup.any():
            break
        if attempt < 5:
            inter_item[dup] = sample_items(cats[dup])
        else:
            inter_item[dup] = rng.integers(items, size=int(dup.sum()))

    step()
    affinity = (prefs[group[inter_user]] == item_cat[inter_item][:, None]).any(axis=1)
    quality = rng.normal(0.0, 0.5, size=items)
    rating = np.clip(
        np.round(2.6 + 1.4 * affinity + quality[inter_item] + rng.normal(0.0, 0.7, size=n)),
        1,
        5,
    )
    timestamp = TIME_START + rng.integers(0, TIME_SPAN, size=n)
    step()
    by_time = np.lexsort((inter_item, inter_user, timestamp))
    step()
    inter_user, inter_item = inter_user[by_time], inter_item[by_time]
    rating, timestamp = rating[by_time], timestamp[by_time]
    is_val = np.zeros(n, dtype=bool)
    if n:
        cutoff = timestamp[int(np.floor((1.0 - VAL_FRACTION) * n))]
        is_val = timestamp >= cutoff

    step()
    # Table rows in random order: the row position must not matter to the loader.
    user_rows = rng.permutation(users)
    item_rows = rng.permutation(items)
    users_table = pa.table(
        {
            "user_id": (USER_ID_BASE + user_rows).astype(np.int64),
            "user_group": _names("g", N_GROUPS)[observed[user_rows]],
            "region": np.asarray(REGIONS)[rng.integers(len(REGIONS), size=users)][user_rows],
            "age_group": np.asarray(AGE_GROUPS)[rng.integers(len(AGE_GROUPS), size=users)][
                user_rows
            ],
        }
    )
    items_table = pa.table(
        {
            "item_id": (ITEM_ID_BASE + item_rows).astype(np.int64),
            "category": _names("cat", n_cat)[item_cat[item_rows]],
            "price_band": np.asarray(PRICE_BANDS)[rng.integers(len(PRICE_BANDS), size=items)][
                item_rows
            ],
            "style": np.asarray(STYLES)[rng.integers(len(STYLES), size=items)][item_rows],
        }
    )

    def interactions_table(mask: np.ndarray) -> pa.Table:
        step()
        return pa.table(
            {
                "user_id": (USER_ID_BASE + inter_user[mask]).astype(np.int64),
                "item_id": (ITEM_ID_BASE + inter_item[mask]).astype(np.int64),
                "timestamp": timestamp[mask].astype(np.int64),
                "rating": rating[mask].astype(np.float64),
            }
        )

    return {
        "users": users_table,
        "items": items_table,
        "interactions_train": interactions_table(~is_val),
        "interactions_val": interactions_table(is_val),
    }


def _names(prefix: str, n: int) -> np.ndarray:
    width = len(str(n - 1))
    return np.asarray([f"{prefix}{i:0{width}d}" for i in range(n)])


def write_dataset(
    out_dir: str,
    users: int,
    items: int,
    interactions: int,
    seed: int,
    interruptible: bool = False,
) -> str:
    """Write the synthetic tables as parquet plus config.yaml into `out_dir`; return its path.

    The files let users inspect the data and copy the layout for their own data set.
    `interruptible`: generated in a worker thread, so that an exception the caller's signal
    handlers raise stops it at once (`generate_tables`); nothing is written then.
    """
    stop = (lambda: False) if interruptible else None
    tables = generate_tables(users, items, interactions, seed, stop)
    return write_dataset_dir(
        out_dir,
        tables,
        name="synth",
        seed=seed,
        user_cat_cols=USER_CAT_COLS,
        item_cat_cols=ITEM_CAT_COLS,
    )
