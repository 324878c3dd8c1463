"""Recommendations and scores from a trained model: the Python API, and what the CLI runs.

>>> from recjobs import Recommender
>>> rec = Recommender.load("runs/quickstart")    # a run directory or its model/
>>> rec.topk([10017, 10342], k=10)                 # table: user_id, item_id, score, rank
>>> rec.score([(10017, 50123), (10342, 50007)])    # table: user_id, item_id, score

Everything comes from the exported model directory (`recjobs.training.export`): the vocabularies
turn the users' own ids into rows and back, `catalogue.pt` holds the users' and items' feature rows
and every user's training items; no data file is read.

Scores: retrieval, the dot product of the user's and the item's unit vectors (a cosine, as in
training); ranking, the model's output for the pair, a probability for bce and the predicted
label for mse. Retrieval's top K are found over the whole catalogue exactly as the trainer's
validation ranks it (training items and the OOV item excluded, `top_k_items`), so recall@K
computed from `topk` equals the logged val/recall@K of the same weights. Ranking models score
candidates: given pairs, e.g. a retrieval model's recommendations to re-rank.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from recjobs.atomic import atomic_file
from recjobs.config.exported import load_config, remake_hint
from recjobs.config.schema import ResolvedConfig
from recjobs.data import Encoders, Features, Vocabulary, read_table
from recjobs.data.tables import as_key_array, column_names, key_kind, table_format
from recjobs.errors import CheckpointError, UserError, cannot_write
from recjobs.file_kind import require_regular
from recjobs.holdings import MODEL_FILES, found
from recjobs.models import build_model
from recjobs.training.export import (
    CATALOGUE,
    ITEM_EMBEDDINGS,
    check_manifest,
    reading_model_file,
    require_files,
)
from recjobs.training.metrics import csr_chunk

log = logging.getLogger(__name__)

# Users scored at a time: a [CHUNK_USERS, items] float32 score buffer (400 MB at 100k items).
CHUNK_USERS = 1024
# Pairs scored at a time by a ranking model, or by the towers in `score`.
CHUNK_PAIRS = 65536
# Columns per block when pruning a chunk's scores by block maxima (see `top_k_items`).
BLOCK = 64
PART = re.compile(r"^part-(\d{5})-of-(\d{5})\.")


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """model/catalogue.pt: rows indexed by vocabulary index, row 0 the OOV entry."""

    user_features: Tensor  # [users + 1, user columns]
    item_features: Tensor  # [items + 1, item columns]
    seen_indptr: Tensor  # [users + 2]: CSR over user rows of their distinct training items
    seen_indices: Tensor  # item rows
    item_counts: Tensor  # [items + 1]: training interactions per item
    # The numeric columns, standardized at export with the training statistics, and the
    # multi-valued columns' padded index matrices; absent when the model has none.
    user_dense: Tensor | None = None
    item_dense: Tensor | None = None
    user_multi: list[Tensor] | None = None
    item_multi: list[Tensor] | None = None

    @property
    def n_items(self) -> int:
        return self.item_features.shape[0] - 1

    def users(self) -> Features:
        """The users' feature rows as the model reads them."""
        return Features(self.user_features, self.user_dense, tuple(self.user_multi or ()))

    def items(self) -> Features:
        return Features(self.item_features, self.item_dense, tuple(self.item_multi or ()))

    def to(self, device: torch.device) -> Catalogue:
        """The feature rows on `device` (the CSR and counts stay in host memory)."""
        users, items = self.users().to(device), self.items().to(device)
        return dataclasses.replace(
            self,
            user_features=users.cat,
            item_features=items.cat,
            user_dense=users.dense,
            item_dense=items.dense,
            user_multi=list(users.multi) if self.user_multi is not None else None,
            item_multi=list(items.multi) if self.item_multi is not None else None,
        )


class Recommender:
    """A trained model with everything it needs to recommend: see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        cfg: ResolvedConfig,
        encoders: Encoders,
        catalogue: Catalogue,
        item_embeddings: Tensor | None,
        model_dir: Path,
        device: torch.device,
    ):
        self.model, self.cfg, self.encoders = model.eval(), cfg, encoders
        self.catalogue, self.item_embeddings, self.model_dir = catalogue, item_embeddings, model_dir
        self.device = device

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Recommender:
        """Load a run directory's model/ (or that model/ itself) onto `device`.

        The model, the feature rows and the item vectors go to the device; results come back
        as Arrow tables in host memory.

        Raises:
            UserError: no such directory; CheckpointError: no exported model in it, one
                exported by an older recjobs (no catalogue.pt), a file missing (deleted, an
                incomplete copy) or that cannot be read: each names the file and what to do.
        """
        model_dir = find_model_dir(Path(path))
        manifest = check_manifest(model_dir)
        cfg = load_config(model_dir)
        require_files(model_dir, cfg, manifest)
        with reading_model_file(model_dir / cfg.shared.encoder_cache):
            encoders = Encoders.load(str(model_dir / cfg.shared.encoder_cache))
        with reading_model_file(model_dir / CATALOGUE):
            catalogue = Catalogue(**_torch_load(model_dir / CATALOGUE))
        with reading_model_file(model_dir / cfg.training.checkpoint):
            model = build_model(
                cfg.task,
                cfg.model,
                encoders.user_cardinalities(),
                encoders.item_cardinalities(),
                **encoders.feature_widths(),
            )
            model.load_state_dict(_torch_load(model_dir / cfg.training.checkpoint))
        item_embeddings = None
        if cfg.task == "retrieval":
            with reading_model_file(model_dir / ITEM_EMBEDDINGS):
                item_embeddings = _torch_load(model_dir / ITEM_EMBEDDINGS)["embeddings"].float()
                if item_embeddings.shape[0] != catalogue.n_items:
                    raise ValueError(
                        f"{item_embeddings.shape[0]} item vectors for {catalogue.n_items} items"
                    )
        device = torch.device(device)
        catalogue = catalogue.to(device)
        if item_embeddings is not None:
            item_embeddings = item_embeddings.to(device)
        return cls(model.to(device), cfg, encoders, catalogue, item_embeddings, model_dir, device)

    @property
    def task(self) -> str:
        return self.cfg.task

    def all_users(self) -> pa.Array:
        """Every user of the exported users table, in vocabulary order."""
        return self.encoders.user_id.decode_array(np.arange(1, len(self.encoders.user_id)))

    # ------------------------------------------------------------------ the API

    @torch.no_grad()
    def topk(
        self,
        user_ids: Sequence[Any] | np.ndarray | pa.Array | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        candidates: pa.Table | Sequence[tuple[Any, Any]] | None = None,
    ) -> pa.Table:
        """The `k` best items of each user: a table of user_id, item_id, score, rank (1 = best).

        `user_ids` in the users' own form (strings stay strings; None: every user of the
        exported users table); users the model does not know are left out with one warning.
        Retrieval ranks the whole catalogue; with `candidates` (pairs of user and item ids,
        a table with user_id and item_id columns or a list of tuples), any model ranks only
        those, and a ranking model needs them. `exclude_seen` leaves out each user's training
        items. A user with fewer than `k` items left gets fewer rows. Rows come per user, in
        the order of `user_ids` (or of first appearance in `candidates`), best first.
        """
        if k < 1:
            raise UserError("k", f"must be at least 1, got {k}")
        if candidates is not None:
            users, items = self._pair_rows(candidates, "candidates")
            if user_ids is not None:
                wanted = self._user_rows(user_ids, "user_ids")
                keep = np.isin(users, wanted)
                users, items = users[keep], items[keep]
            return self._rank_candidates(users, items, k, exclude_seen)
        if self.task != "retrieval":
            raise UserError(
                "candidates",
                "a ranking model scores given candidates, it does not search the catalogue",
                "pass candidates: user_id,item_id pairs, e.g. a retrieval model's recommendations",
            )
        users = (
            np.arange(1, len(self.encoders.user_id))
            if user_ids is None
            else self._user_rows(user_ids, "user_ids")
        )
        return self._retrieve(users, k, exclude_seen)

    @torch.no_grad()
    def score(self, pairs: pa.Table | Sequence[tuple[Any, Any]]) -> pa.Table:
        """Scores of (user id, item id) pairs: a table of user_id, item_id, score, in the order
        given; pairs with a user or item the model does not know are left out (one warning)."""
        users, items = self._pair_rows(pairs, "pairs")
        return self._table(users, items, self._pair_scores(users, items).cpu().numpy())

    # ------------------------------------------------------------------ retrieval

    def _retrieve(self, users: np.ndarray, k: int, exclude_seen: bool) -> pa.Table:
        catalogue = self.catalogue
        user_emb = self._user_embeddings(torch.from_numpy(users).to(self.device))
        exclude = None
        if exclude_seen:
            exclude = _rows_of_csr(catalogue.seen_indptr, catalogue.seen_indices, users)
            exclude = (exclude[0], exclude[1] - 1)  # item rows -> columns of item_embeddings
        scores, columns = top_k_items(user_emb, self.item_embeddings, k, exclude)
        scores, columns = scores.cpu(), columns.cpu()
        found = columns >= 0  # short rows (few items left) end in -1
        ranks = torch.arange(1, scores.shape[1] + 1).expand_as(scores)
        user_rows = np.repeat(users, found.sum(dim=1).numpy())
        return self._table(
            user_rows, (columns[found] + 1).numpy(), scores[found].numpy(), ranks[found].numpy()
        )

    def _user_embeddings(self, rows: Tensor) -> Tensor:
        features = self.catalogue.users()
        parts = [
            self.model.user_embeddings(features[rows[s : s + CHUNK_PAIRS]]).float()
            for s in range(0, len(rows), CHUNK_PAIRS)
        ]
        if not parts:
            return torch.empty(0, self.item_embeddings.shape[1], device=self.device)
        return torch.cat(parts)

    # ------------------------------------------------------------------ pairs

    def _pair_scores(self, users: np.ndarray, items: np.ndarray) -> Tensor:
        user_rows = torch.from_numpy(users).to(self.device)
        item_rows = torch.from_numpy(items).to(self.device)
        if self.task == "retrieval":
            user_emb = self._user_embeddings(user_rows)
            return (user_emb * self.item_embeddings[item_rows - 1]).sum(dim=1)
        features_u, features_i = self.catalogue.users(), self.catalogue.items()
        out = [
            self.model(
                features_u[user_rows[s : s + CHUNK_PAIRS]],
                features_i[item_rows[s : s + CHUNK_PAIRS]],
            ).float()
            for s in range(0, len(users), CHUNK_PAIRS)
        ]
        logits = torch.cat(out) if out else torch.empty(0, device=self.device)
        return torch.sigmoid(logits) if self.cfg.training.loss_func == "bce" else logits

    def _rank_candidates(
        self, users: np.ndarray, items: np.ndarray, k: int, exclude_seen: bool
    ) -> pa.Table:
        # Each pair once (its first occurrence), then, unless asked, not the user's own history.
        width = self.catalogue.n_items + 1
        _, first = np.unique(users * width + items, return_index=True)
        users, items = users[np.sort(first)], items[np.sort(first)]
        if exclude_seen:
            unseen = ~self._seen(users, items)
            if not unseen.all():
                # Said, not silent: a re-ranked list shorter than its candidates needs a reason.
                log.info(
                    "candidates: left out %d of %d pairs whose item is in the user's training "
                    "items (include seen items to keep them)",
                    len(users) - int(unseen.sum()),
                    len(users),
                )
            users, items = users[unseen], items[unseen]
        scores = self._pair_scores(users, items).cpu().numpy()
        # Users in order of first appearance, best score first within a user.
        _, first, group = np.unique(users, return_index=True, return_inverse=True)
        appearance = np.argsort(np.argsort(first))[group]
        order = np.lexsort((-scores, appearance))
        users, items, scores, appearance = (a[order] for a in (users, items, scores, appearance))
        starts = np.flatnonzero(np.r_[True, appearance[1:] != appearance[:-1]])
        ranks = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)])) + 1
        keep = ranks <= k
        return self._table(users[keep], items[keep], scores[keep], ranks[keep])

    def _seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user row, item row) pair is one of the user's training items."""
        indptr, indices = self.catalogue.seen_indptr, self.catalogue.seen_indices
        width = self.catalogue.n_items + 1
        lengths = (indptr[1:] - indptr[:-1]).numpy()
        seen_keys = np.repeat(np.arange(len(lengths)), lengths) * width + indices.numpy()
        return np.isin(users * width + items, seen_keys)

    # ------------------------------------------------------------------ ids in, ids out

    def _user_rows(self, user_ids: Any, where: str) -> np.ndarray:
        """Vocabulary rows of `user_ids`, unknown ones left out, each user once, in order."""
        rows = _encode(self.encoders.user_id, user_ids, where, "user")
        known = rows > 0
        _warn_unknown(int((~known).sum()), len(rows), "users", where)
        if len(rows) and not known.any():
            raise UserError(
                where,
                "none of the given users is in the model's users table",
                "ids are matched as they are: 7 and '7' differ",
            )
        rows = rows[known]
        _, first = np.unique(rows, return_index=True)
        return rows[np.sort(first)]

    def _pair_rows(self, pairs: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(pairs, pa.Table):
            missing = [c for c in ("user_id", "item_id") if c not in pairs.column_names]
            if missing:
                raise UserError(
                    where,
                    f"no {missing[0]} column (columns: {', '.join(pairs.column_names)})",
                    "pairs need user_id and item_id columns",
                )
            user_ids, item_ids = pairs.column("user_id"), pairs.column("item_id")
        else:
            pairs = list(pairs)
            user_ids, item_ids = [p[0] for p in pairs], [p[1] for p in pairs]
        users = _encode(self.encoders.user_id, user_ids, where, "user")
        items = _encode(self.encoders.item_id, item_ids, where, "item")
        known = (users > 0) & (items > 0)
        _warn_unknown(int((~known).sum()), len(users), "pairs (unknown user or item)", where)
        return users[known], items[known]

    def _table(
        self,
        users: np.ndarray,
        items: np.ndarray,
        scores: np.ndarray,
        ranks: np.ndarray | None = None,
    ) -> pa.Table:
        columns = {
            "user_id": self.encoders.user_id.decode_array(users),
            "item_id": self.encoders.item_id.decode_array(items),
            "score": pa.array(np.asarray(scores, dtype=np.float32)),
        }
        if ranks is not None:
            columns["rank"] = pa.array(np.asarray(ranks, dtype=np.int32))
        return pa.table(columns)


# ---------------------------------------------------------------------- top K


@torch.no_grad()
def top_k_items(
    user_emb: Tensor,
    item_emb: Tensor,
    k: int,
    exclude: tuple[Tensor, Tensor] | None = None,
    *,
    chunk_size: int = CHUNK_USERS,
) -> tuple[Tensor, Tensor]:
    """Each user's `k` highest-scoring items by dot product: (scores, item columns), [U, k].

    `exclude` is a CSR (indptr [U + 1], item columns) of items user u must not get. A user with
    fewer than k items left gets -inf scores and column -1 at the end of its row. Users go
    `chunk_size` at a time, so memory is one [chunk_size, items] buffer whatever U is.

    On a large catalogue torch.topk over every score costs as much as the matmul. So each
    chunk's scores are cut into blocks of BLOCK columns first, and torch.topk runs on the
    scores of each row's k blocks with the highest maxima only: the k best scores lie in those
    blocks (a score outside them is below k block maxima, so below k other scores). The same
    items as torch.topk over all of them, ties aside, at 1/20 of the scores at 100k items.
    """
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    k = min(k, n_items)
    device = user_emb.device
    out_scores = torch.full((n_users, k), float("-inf"), device=device)
    out_items = torch.full((n_users, k), -1, dtype=torch.long, device=device)
    if n_users == 0 or k == 0:
        return out_scores, out_items
    n_blocks = -(-n_items // BLOCK)
    prune = n_blocks >= 4 * k
    width = n_blocks * BLOCK if prune else n_items
    item_t = torch.zeros(item_emb.shape[1], width, device=device)
    item_t[:, :n_items] = item_emb.float().T
    buffer = torch.empty(min(chunk_size, n_users), width, device=device)
    if exclude is not None:
        exclude = (exclude[0].to(device), exclude[1].to(device))
    for start in range(0, n_users, chunk_size):
        stop = min(start + chunk_size, n_users)
        scores = buffer[: stop - start]
        torch.matmul(user_emb[start:stop].float(), item_t, out=scores)
        scores[:, n_items:] = float("-inf")  # the padding of the last block
        if exclude is not None:
            rows, cols = csr_chunk(*exclude, start, stop)
            scores[rows, cols] = float("-inf")
        values, columns = _pruned_top_k(scores, k) if prune else torch.topk(scores, k, dim=1)
        columns[values == float("-inf")] = -1
        out_scores[start:stop], out_items[start:stop] = values, columns
    return out_scores, out_items


def _pruned_top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """torch.topk(scores, k) by block maxima (see `top_k_items`); columns a multiple of BLOCK."""
    rows, width = scores.shape
    n_blocks = width // BLOCK
    block_max = scores.view(rows, n_blocks, BLOCK).amax(dim=2)
    _, blocks = torch.topk(block_max, k, dim=1, sorted=False)  # [rows, k]
    # The k best blocks' scores, side by side: [rows, k * BLOCK] instead of [rows, width].
    flat = (torch.arange(rows, device=scores.device).unsqueeze(1) * n_blocks + blocks).view(-1)
    candidates = scores.view(-1, BLOCK).index_select(0, flat).view(rows, k * BLOCK)
    values, position = torch.topk(candidates, k, dim=1)
    columns = blocks.gather(1, position // BLOCK) * BLOCK + position % BLOCK
    return values, columns


def _rows_of_csr(indptr: Tensor, indices: Tensor, rows: np.ndarray) -> tuple[Tensor, Tensor]:
    """The CSR of `rows` of a CSR matrix (indptr [len(rows) + 1], indices)."""
    rows_t = torch.from_numpy(rows)
    starts, lengths = indptr[rows_t], indptr[rows_t + 1] - indptr[rows_t]
    sub_indptr = torch.zeros(len(rows) + 1, dtype=torch.long)
    sub_indptr[1:] = torch.cumsum(lengths, dim=0)
    offsets = torch.arange(int(sub_indptr[-1])) - torch.repeat_interleave(sub_indptr[:-1], lengths)
    return sub_indptr, indices[torch.repeat_interleave(starts, lengths) + offsets]


# ---------------------------------------------------------------------- files and model dirs


def find_model_dir(path: Path) -> Path:
    """`path` itself when it is an exported model/, else its model/ subdirectory."""
    if not path.exists():
        raise UserError(str(path), "not found", "give a run directory or its model/")
    if (path / "model").is_dir():
        model_dir = path / "model"
    elif (path / "metrics.jsonl").exists() or (path / "checkpoints").exists():
        raise CheckpointError(
            str(path),
            "holds no exported model yet (no model/): the run has not finished",
            "wait for it, or finish it with `recjobs train TASK --run-dir RUN_DIR --resume`",
        )
    else:
        model_dir = path
    require_regular(model_dir / "config.yaml", CheckpointError)  # not "not found" for a FIFO
    if not (model_dir / "config.yaml").is_file():
        others = found(model_dir, MODEL_FILES)
        if others:  # a model folder that lost its config.yaml
            raise CheckpointError(
                str(model_dir / "config.yaml"),
                f"missing from the model folder (it holds {', '.join(others)}): deleted since "
                "the export, or the folder was copied in part",
                remake_hint(model_dir),
            )
        raise CheckpointError(
            str(path),
            "holds no exported model (no model/config.yaml)",
            "give the run directory of a finished run, or its model/",
        )
    return model_dir


def _torch_load(path: Path) -> Any:
    require_regular(path, CheckpointError)
    return torch.load(path, map_location="cpu", weights_only=True)


def _encode(vocab: Vocabulary, values: Any, where: str, entity: str) -> np.ndarray:
    arr = as_key_array(values)
    _check_id_kind(vocab, arr, where, entity)
    return vocab.encode(values if arr is None else arr)


def _check_id_kind(vocab: Vocabulary, arr: pa.Array | None, where: str, entity: str) -> None:
    """Integer ids against a model with string ids (or the reverse) match nothing: say so."""
    if {key_kind(arr), vocab.kind} == {"int", "str"}:
        names = {"int": "integers", "str": "strings"}
        raise UserError(
            where,
            f"{entity} ids are {names[key_kind(arr)]} but the model's are {names[vocab.kind]}",
            "ids are matched as they are: 7 and '7' differ",
        )


def _warn_unknown(n_unknown: int, n: int, what: str, where: str) -> None:
    if n_unknown:
        log.warning("%s: left out %d of %d %s the model does not know", where, n_unknown, n, what)


def read_ids(
    path: str, flag: str, columns: dict[str, tuple[str, Vocabulary]]
) -> dict[str, pa.ChunkedArray]:
    """Id columns of a Parquet/CSV file, as the vocabularies hold them (CSV ids of a model with
    string ids stay strings: "007" is not 7). `columns`: output name -> (the name the
    config gives it, its vocabulary); the file may use either name."""
    hint = f"check {flag}"
    present = column_names(path, role=flag, hint=hint)
    picked, types = {}, {}
    for name, (config_name, vocab) in columns.items():
        options = list(dict.fromkeys([name, config_name]))
        found = [c for c in options if c in present]
        if not found:
            raise UserError(
                f"{path}: column '{name}'",
                f"not in the file (columns present: {', '.join(present)})",
                f"name the column {' or '.join(options)}",
            )
        picked[name] = found[0]
        if vocab.kind == "str":
            types[found[0]] = pa.large_string()
    table = read_table(path, list(picked.values()), role=flag, hint=hint, column_types=types)
    found = {name: table.column(column) for name, column in picked.items()}
    for name, (_, vocab) in columns.items():
        where = f"{path}: column '{picked[name]}'"
        _check_id_kind(vocab, as_key_array(found[name]), where, name.removesuffix("_id"))
    return found


def check_output_path(path: str) -> None:
    """An --out the writer can write: its extension decides the format (before any work)."""
    if os.path.isdir(path):
        raise UserError(
            path, "is a directory", "name a .parquet or .csv file, or write parts with --parts"
        )
    table_format(path)


def write_output(table: pa.Table, path: str) -> None:
    """Write `table` as Parquet or CSV/TSV (by extension, .gz compressed), atomically."""
    fmt = table_format(path)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with atomic_file(path, suffix=os.path.basename(path)) as tmp:
            if fmt == "parquet":
                pq.write_table(table, tmp)
            else:
                delimiter = "\t" if ".tsv" in path.lower() else ","
                options = pacsv.WriteOptions(delimiter=delimiter)
                if path.lower().endswith(".gz"):
                    with pa.CompressedOutputStream(tmp, "gzip") as out:
                        pacsv.write_csv(table, out, write_options=options)
                else:
                    pacsv.write_csv(table, tmp, write_options=options)
    except OSError as exc:
        raise UserError(path, cannot_write(exc, path), "check --out") from None


def shard(n: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous share of n items: the shares of all ranks cover each once."""
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


def part_path(out_dir: str, rank: int, world_size: int, fmt: str) -> str:
    """The file one process of a batch job writes: part-RRRRR-of-WWWWW.parquet (or .csv).

    Before writing, a directory holding parts of a job with another number of processes is
    refused: their union with these would repeat users.
    """
    try:  # created when the part is written: a command that fails leaves no empty folder
        names = os.listdir(out_dir) if os.path.lexists(out_dir) else []
        others = [p for p in names if (m := PART.match(p)) and int(m[2]) != world_size]
    except OSError as exc:
        raise UserError(
            out_dir, cannot_write(exc, os.path.join(out_dir, "part")), "check --out"
        ) from None
    if others:
        raise UserError(
            out_dir,
            f"holds {others[0]}, a part of a job with another number of processes",
            "use an empty --out directory",
        )
    return os.path.join(out_dir, f"part-{rank:05d}-of-{world_size:05d}.{fmt}")
