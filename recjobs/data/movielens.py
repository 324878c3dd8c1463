"""Convert a downloaded MovieLens ml-100k or ml-1m directory into recjobs' table layout.

Nothing is downloaded: point it at the unpacked archive (the directory holding u.data or
ratings.dat, or its parent). Output: users/items/interactions_train/interactions_val parquet
plus config.yaml, like the synthetic data set.

Features: users get age (a number: ml-100k's age in years, ml-1m's age-group code, which is
the group's lower bound) and age_bucket (the ml-1m age groups; ml-100k ages are bucketed the
same way), gender, occupation (ml-1m codes mapped to their names) and zip_prefix (first three
characters); items get genres (all listed genres, a list column; empty for a film with none),
genre (the first listed, kept for configs that name it), year (release year, a number; null
when absent) and year_bucket (release decade, "1990s"; "unknown" when absent). The config
uses age as a numeric user column, year as a numeric item column and genres as a
multi-valued item column, next to the categorical columns.

Two splits by time:
- user-time (default, the usual protocol for comparing recommenders): each user's last
  `val_fraction` (default 20%) of ratings by time are validation, at least one for every user
  with two ratings or more; every validation user is a training user.
- global-time: one cutoff for everybody, the timestamp at the (1 - val_fraction) quantile
  (default 10%); ratings at or after it are validation. It mimics "train on the past, serve the
  future", but on ML-100k about half of the validation users then have no training ratings at
  all (users arrive over time), and for those a most-popular list is hard to beat.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recjobs.data.tables import write_dataset_dir
from recjobs.errors import DataError
from recjobs.file_kind import require_regular

ML100K_FILES = ("u.data", "u.user", "u.item")
ML1M_FILES = ("ratings.dat", "users.dat", "movies.dat")
USER_CAT_COLS = ("age_bucket", "gender", "occupation", "zip_prefix")
ITEM_CAT_COLS = ("year_bucket",)
USER_NUM_COLS = ("age",)
ITEM_NUM_COLS = ("year",)
ITEM_MULTI_COLS = ("genres",)
# The written config's feature columns (write_dataset_dir's keywords; benchmarks/quality.py
# writes its random-split data sets with the same ones).
FEATURE_COLUMNS = {
    "user_cat_cols": USER_CAT_COLS,
    "item_cat_cols": ITEM_CAT_COLS,
    "user_num_cols": USER_NUM_COLS,
    "item_num_cols": ITEM_NUM_COLS,
    "item_multi_cols": ITEM_MULTI_COLS,
}
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# ml-1m README: occupation codes.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
# ml-1m age groups (code = lower bound); ml-100k raw ages are bucketed on the same edges.
AGE_EDGES = (18, 25, 35, 45, 50, 56)
AGE_NAMES = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
SPLITS = ("user-time", "global-time")
DEFAULT_VAL_FRACTION = {"user-time": 0.2, "global-time": 0.1}


def _find(src_dir: str) -> tuple[str, str]:
    """(variant, directory) of the MovieLens files under `src_dir` (or one level below)."""
    candidates = [src_dir, os.path.join(src_dir, "ml-100k"), os.path.join(src_dir, "ml-1m")]
    for directory in candidates:
        for variant, files in (("ml-100k", ML100K_FILES), ("ml-1m", ML1M_FILES)):
            for name in files:  # isfile() would call a FIFO "not found"
                require_regular(os.path.join(directory, name), DataError)
            if os.path.isfile(os.path.join(directory, files[0])):
                for name in files[1:]:
                    if not os.path.isfile(os.path.join(directory, name)):
                        raise DataError(
                            os.path.join(directory, name),
                            f"file not found ({variant} needs {', '.join(files)})",
                        )
                return variant, directory
    raise DataError(
        src_dir,
        "no MovieLens files found",
        hint=f"looked for {', '.join(ML100K_FILES)} (ml-100k) or {', '.join(ML1M_FILES)} "
        "(ml-1m), in the directory or its ml-100k/ or ml-1m/ subdirectory",
    )


def _read(
    path: str,
    names: list[str],
    delimiter: str,
    *,
    latin1: bool = False,
    types: dict[str, pa.DataType] | None = None,
) -> pa.Table:
    """A headerless delimited MovieLens file; '::' (ml-1m) becomes a one-character delimiter."""
    require_regular(path, DataError)
    with open(path, "rb") as f:
        data = f.read()
    if latin1:
        data = data.decode("latin-1").encode("utf-8")
    if delimiter == "::":
        data, delimiter = data.replace(b"::", b"\x1f"), "\x1f"
    try:
        return pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types=types or {}),
        )
    except pa.ArrowException as exc:
        raise DataError(path, f"cannot parse as MovieLens: {str(exc).splitlines()[0]}") from exc


def _age_bucket(age: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(AGE_NAMES)[np.digitize(age.to_numpy(), AGE_EDGES)]


def _decade(year: pa.Array) -> np.ndarray:
    """'1990s' from a (possibly null) year string array; 'unknown' where absent."""
    years = pc.cast(year, pa.float64()).to_numpy(zero_copy_only=False)
    valid = ~np.isnan(years)
    decades = np.where(valid, np.floor(np.nan_to_num(years) / 10) * 10, 0).astype(np.int64)
    return np.where(valid, np.char.add(decades.astype(str), "s"), "unknown")


def _zip_prefix(zips: pa.ChunkedArray) -> pa.Array:
    return pc.utf8_slice_codeunits(pc.fill_null(zips, ""), 0, 3)


def _ml100k(d: str) -> tuple[pa.Table, pa.Table, pa.Table]:
    ratings = _read(os.path.join(d, "u.data"), ["user_id", "item_id", "rating", "timestamp"], "\t")
    users = _read(
        os.path.join(d, "u.user"),
        ["user_id", "age", "gender", "occupation", "zip"],
        "|",
        types={"zip": pa.string(), "gender": pa.string(), "occupation": pa.string()},
    )
    genre_cols = [f"g{i}" for i in range(len(ML100K_GENRES))]
    items = _read(
        os.path.join(d, "u.item"),
        ["item_id", "title", "release_date", "video_release_date", "url", *genre_cols],
        "|",
        latin1=True,
        types={"release_date": pa.string(), "video_release_date": pa.string()},
    )
    flags = np.stack([items.column(c).to_numpy() for c in genre_cols], axis=1)
    first = np.where(flags.any(axis=1), flags.argmax(axis=1), 0)
    film, genre = np.nonzero(flags == 1)  # row-major: each film's genres in the file's order
    offsets = np.zeros(len(flags) + 1, dtype=np.int32)
    np.cumsum(np.bincount(film, minlength=len(flags)), out=offsets[1:])
    genres = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(np.asarray(ML100K_GENRES)[genre], pa.string())
    )
    release_year = pc.extract_regex(
        pc.fill_null(items.column("release_date"), ""), r"(?P<y>\d{4})\s*$"
    )
    users_table = pa.table(
        {
            "user_id": users.column("user_id"),
            "age": users.column("age").cast(pa.float64()),
            "age_bucket": _age_bucket(users.column("age")),
            "gender": users.column("gender"),
            "occupation": users.column("occupation"),
            "zip_prefix": _zip_prefix(users.column("zip")),
        }
    )
    year = pc.struct_field(release_year, "y")
    items_table = pa.table(
        {
            "item_id": items.column("item_id"),
            "genres": genres,
            "genre": np.asarray(ML100K_GENRES)[first],
            "year": pc.cast(year, pa.float64()),
            "year_bucket": _decade(year),
        }
    )
    return users_table, items_table, ratings


def _ml1m(d: str) -> tuple[pa.Table, pa.Table, pa.Table]:
    ratings = _read(
        os.path.join(d, "ratings.dat"), ["user_id", "item_id", "rating", "timestamp"], "::"
    )
    users = _read(
        os.path.join(d, "users.dat"),
        ["user_id", "gender", "age", "occupation", "zip"],
        "::",
        types={"zip": pa.string(), "gender": pa.string(), "occupation": pa.int64()},
    )
    movies = _read(
        os.path.join(d, "movies.dat"),
        ["item_id", "title", "genres"],
        "::",
        latin1=True,
        types={"title": pa.string(), "genres": pa.string()},
    )
    occupation = users.column("occupation").to_numpy()
    known = (occupation >= 0) & (occupation < len(ML1M_OCCUPATIONS))
    occupation_names = np.where(
        known, np.asarray(ML1M_OCCUPATIONS)[np.where(known, occupation, 0)], "other"
    )
    genres = pc.split_pattern(pc.fill_null(movies.column("genres"), "unknown"), "|")
    year = pc.extract_regex(movies.column("title"), r"\((?P<y>\d{4})\)\s*$")
    users_table = pa.table(
        {
            "user_id": users.column("user_id"),
            "age": users.column("age").cast(pa.float64()),
            "age_bucket": _age_bucket(users.column("age")),
            "gender": users.column("gender"),
            "occupation": occupation_names,
            "zip_prefix": _zip_prefix(users.column("zip")),
        }
    )
    year = pc.struct_field(year, "y")
    items_table = pa.table(
        {
            "item_id": movies.column("item_id"),
            "genres": genres,
            "genre": pc.list_element(genres, 0),
            "year": pc.cast(year, pa.float64()),
            "year_bucket": _decade(year),
        }
    )
    return users_table, items_table, ratings


def _last_per_user(users: np.ndarray, fraction: float) -> np.ndarray:
    """For rows in time order: True for each user's last `fraction` of rows (floor, at least
    one when the user has two or more rows, never all of them)."""
    order = np.argsort(users, kind="stable")  # by user, time order kept within each user
    _, starts, counts = np.unique(users[order], return_index=True, return_counts=True)
    n_val = np.where(counts >= 2, np.maximum(1, np.floor(fraction * counts)), 0).astype(np.int64)
    n_val = np.minimum(n_val, counts - 1)
    position = np.arange(len(users)) - np.repeat(starts, counts)  # index within the user
    is_val = np.zeros(len(users), dtype=bool)
    is_val[order] = position >= np.repeat(counts - n_val, counts)
    return is_val


def convert_movielens(
    src_dir: str, out_dir: str, *, split: str = "user-time", val_fraction: float | None = None
) -> str:
    """Convert ml-100k or ml-1m in `src_dir` to parquet + config.yaml in `out_dir`.

    Returns the config path. `split` is user-time or global-time (see the module docstring);
    `val_fraction` the share of the ratings, by time, kept for validation (per user, or of all
    ratings; with global-time, rows sharing the cutoff timestamp all go to validation).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION[split]
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    variant, directory = _find(src_dir)
    users, items, ratings = (_ml100k if variant == "ml-100k" else _ml1m)(directory)

    ts = ratings.column("timestamp").to_numpy().astype(np.int64)
    order = np.lexsort(
        (ratings.column("item_id").to_numpy(), ratings.column("user_id").to_numpy(), ts)
    )
    interactions = pa.table(
        {
            "user_id": ratings.column("user_id").cast(pa.int64()),
            "item_id": ratings.column("item_id").cast(pa.int64()),
            "timestamp": pa.array(ts, pa.int64()),
            "rating": ratings.column("rating").cast(pa.float64()),
        }
    ).take(order)
    ts = ts[order]
    if split == "user-time":
        is_val = _last_per_user(interactions.column("user_id").to_numpy(), val_fraction)
    else:
        is_val = np.zeros(len(ts), dtype=bool)
        if len(ts):
            cutoff = ts[int(np.floor((1.0 - val_fraction) * len(ts)))]
            is_val = ts >= cutoff
    tables = {
        "users": users,
        "items": items,
        "interactions_train": interactions.filter(pa.array(~is_val)),
        "interactions_val": interactions.filter(pa.array(is_val)),
    }
    return write_dataset_dir(
        out_dir,
        tables,
        name=variant,
        seed=42,
        **FEATURE_COLUMNS,
    )
