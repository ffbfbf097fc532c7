"""Reading a training window from the lake with Ray Data, and the train/validation/test split.

The job resolves a source with Spark (catalog name or path -> path, format, Delta version) and
passes the result in; nothing here imports pyspark. Rows are read with Ray Data, never collected
to one process:

- Delta: `ray.data.read_delta` at the pinned version. It lists the version's files through
  delta-rs and reads them as Parquet, so it cannot honour deletion vectors or column mapping;
  such tables are refused up front (`check_delta_readable`) instead of silently yielding deleted
  rows or wrongly named columns. Partition columns (event_date) come from the Delta log.
- Parquet: `ray.data.read_parquet` with hive partitioning, so `event_date=...` directories arrive
  as a column.

Splits follow the feature spec. A spec with a `date_column` (a partition column of the table) is
split in time: the last `test_days` dates are the test window, the `validation_days` before them
validation, the rest training. Otherwise the rows are split per class by a hash of the spec's
`keys`, so each split keeps the class balance and a row always lands in the same split: a single
integer key is hashed as the integer, any other key (strings, several columns) as its record key
text (`lakescore.feedback_keys.record_keys`) through pandas' fixed-key SipHash, the same on every
machine and run (Python's `hash()` of a string is salted per process and would not be).

Labels (`labels_of`): true for a boolean true, a number equal to 1, or the text "true"/"1"
(any case); everything else, nulls included, is not anomalous. Unlabelled rows are kept as normal
rather than dropped, so the splits and the features see every row of the window.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from lakescore.feedback_keys import record_keys

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

TRAIN = "train"
VALIDATION = "validation"
TEST = "test"
SPLITS = (TRAIN, VALIDATION, TEST)

# Columns the feature step adds next to the features (double underscores: never a source column).
LABEL_COLUMN = "__label"
SPLIT_COLUMN = "__split"
TYPE_COLUMN = "__type"


class UnreadableSourceError(ValueError):
    """The source cannot be read correctly by Ray Data; the message says what to do instead."""


class SourceLike(Protocol):
    """What the job resolved (lakescore.lake.Source has these attributes)."""

    name: str
    path: str
    format: str
    version: int | None


@dataclass(frozen=True)
class TableSource:
    """A resolved source as training sees it (no Spark needed to build one)."""

    name: str
    path: str
    format: str  # "delta" or "parquet"
    version: int | None = None


def check_delta_readable(path: str, version: int | None) -> None:
    """Refuse a Delta table whose reader features Ray Data's Parquet-based reader cannot honour.

    Deletion vectors would leave deleted rows in the training data; column mapping would read
    physical column names (`col-3f2a...`) or nothing. Both are refused with the fix.
    """
    from deltalake import DeltaTable

    table = DeltaTable(path, version=version)
    protocol = table.protocol()
    reader_features = set(protocol.reader_features or ())
    configuration = table.metadata().configuration or {}
    problems = []
    if "deletionVectors" in reader_features or configuration.get("delta.enableDeletionVectors", "").lower() == "true":
        problems.append("deletion vectors")
    mapping = configuration.get("delta.columnMapping.mode", "none").lower()
    if "columnMapping" in reader_features or mapping != "none":
        problems.append(f"column mapping (mode {mapping})")
    if problems:
        raise UnreadableSourceError(
            f"Delta table at {path} (version {version}) uses {' and '.join(problems)}, which the Ray Data "
            "reader cannot honour: it would train on wrong rows or columns. Write a Parquet snapshot first, "
            f"e.g. in Spark: spark.read.format('delta').option('versionAsOf', {version}).load('{path}')"
            ".write.partitionBy('event_date').parquet('/path/to/snapshot'), then train on that path"
        )


def source_dates(source: SourceLike, column: str) -> list[dt.date]:
    """The distinct values of the date partition `column` of a source, from metadata (no scan of
    the rows).

    Delta: the partition values of the pinned version's files. Parquet: the `column=` directory
    names. Empty if `column` is not a partition column.
    """
    if source.format == "delta":
        from deltalake import DeltaTable

        partitions = DeltaTable(source.path, version=source.version).partitions()
        values = {p.get(column) for p in partitions}
    else:
        prefix = f"{column}="
        values = {p.name[len(prefix):] for p in Path(source.path).glob(f"{prefix}*") if p.is_dir()}
    return sorted(_date(v) for v in values if v and v != "__HIVE_DEFAULT_PARTITION__")


def _in(value: str | None, dates: "Collection[dt.date]") -> bool:
    """Whether a partition value (text, as the Delta log or a folder name holds it) is one of `dates`."""
    if not value or value == "__HIVE_DEFAULT_PARTITION__":
        return False
    try:
        return _date(value) in dates
    except ValueError:
        return False


def _read_delta_partitions(source: SourceLike, columns: Sequence[str], column: str, dates: "Collection[dt.date]") -> "ray.data.Dataset":
    """`ray.data.read_delta` of the pinned version's files in the partitions of `dates` only: the
    same pyarrow dataset (delta-rs, the log's partition values and schema) with delta-rs' own
    partition filter, read by the same datasource."""
    import ray.data
    from deltalake import DeltaTable
    from ray.data._internal.datasource.parquet_datasource import ParquetDatasource  # what read_delta uses (ray pinned)

    table = DeltaTable(source.path, version=source.version)
    values = sorted({p[column] for p in table.partitions() if _in(p.get(column), dates)})
    if not values:  # the columns' schema from the log, no file opened
        return ray.data.from_arrow(table.to_pyarrow_dataset().schema.empty_table().select(list(columns)))
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=[(column, "in", values)])
    return ray.data.read_datasource(ParquetDatasource.from_pyarrow_dataset(dataset, columns=list(columns)))


def _date(value: str) -> dt.date:
    # A date partition is `yyyy-MM-dd`; a timestamp partition's value starts with one.
    return dt.date.fromisoformat(str(value)[:10])


def read_rows(
    source: SourceLike, columns: Sequence[str], dates: "tuple[str, Collection[dt.date]] | None" = None
) -> "ray.data.Dataset":
    """Read `columns` of the source with Ray Data (Delta at `source.version`).

    `dates`: (date partition column, dates): only the files of those partitions are listed and
    read, so a window of three days costs three days of reading however long the table's history.
    (A filter on the Dataset would not do it: Ray 2.60 pushes it into the Parquet reader, which
    still opens every file.)"""
    import ray.data

    if source.format == "delta":
        check_delta_readable(source.path, source.version)
        if dates is None:
            return ray.data.read_delta(source.path, version=source.version, columns=list(columns))
        return _read_delta_partitions(source, columns, *dates)
    if source.format == "parquet":
        # Ray's default partitioning is hive: `event_date=...` directories become a column.
        if dates is None:
            return ray.data.read_parquet(source.path, columns=list(columns))
        from ray.data.datasource import PathPartitionFilter

        column, wanted = dates
        only = PathPartitionFilter.of(lambda values: _in(values.get(column), wanted), base_dir=source.path)
        return ray.data.read_parquet(source.path, columns=list(columns), partition_filter=only)
    raise UnreadableSourceError(f"source {source.name} has format {source.format!r}; train from delta or parquet")


def date_splits(
    dates: Sequence[dt.date],
    validation_days: int,
    test_days: int,
    first: dt.date | None = None,
    last: dt.date | None = None,
) -> dict[dt.date, str]:
    """Assign each date in [first, last] to a split, in time order (later = held out).

    Raises ValueError if the window leaves no training date.
    """
    window = sorted(d for d in set(dates) if (first is None or d >= first) and (last is None or d <= last))
    held_out = validation_days + test_days
    if len(window) <= held_out:
        raise ValueError(
            f"the training window has {len(window)} date(s) ({_span(window)}), but {validation_days} validation "
            f"and {test_days} test day(s) are held out, leaving none to train on; widen the window "
            "(train.first_date/last_date) or lower train.validation_days/test_days"
        )
    splits = {}
    for i, day in enumerate(reversed(window)):
        splits[day] = TEST if i < test_days else VALIDATION if i < held_out else TRAIN
    return dict(sorted(splits.items()))


def _span(dates: Sequence[dt.date]) -> str:
    return f"{dates[0]}..{dates[-1]}" if dates else "no dates"


def hash_uniform(keys: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic uniform in [0, 1) per integer key (splitmix64 of key and salt; the same on
    every machine, run and partitioning)."""
    with np.errstate(over="ignore"):
        z = np.asarray(keys).astype(np.uint64) + np.uint64(salt & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def key_hashes(raw: pd.DataFrame, keys: Sequence[str]) -> np.ndarray:
    """A deterministic unsigned 64-bit integer per row from its key columns: a single integer key
    is its own value (the split it always had), any other key its record key text hashed with
    pandas' SipHash under a fixed key."""
    if len(keys) == 1 and pd.api.types.is_integer_dtype(raw[keys[0]]):
        return raw[keys[0]].to_numpy().astype(np.int64).astype(np.uint64)
    text = record_keys(raw, keys).fillna("").to_numpy(dtype=object)
    return pd.util.hash_array(text, hash_key=_HASH_KEY, categorize=False)


_HASH_KEY = "lakescore-split0"  # 16 bytes: SipHash's key; changing it moves every row's split


def labels_of(values: pd.Series | None, rows: int) -> np.ndarray:
    """The label column as booleans (see the module docstring); all false without a label."""
    if values is None:
        return np.zeros(rows, dtype=bool)
    if pd.api.types.is_bool_dtype(values):
        return values.eq(True).fillna(False).to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(values):
        return (pd.to_numeric(values, errors="coerce") == 1).fillna(False).to_numpy(dtype=bool)
    return np.fromiter((False if pd.isna(v) else _label_value(v) for v in values), dtype=bool, count=len(values))


def _label_value(v) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return v == 1
    return str(v).strip().lower() in ("true", "1")


def stratified_split(
    keys: np.ndarray, labels: np.ndarray, validation_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Split names for undated rows: per class (the hash is salted with the label), a row lands
    in test with probability `test_fraction`, in validation with `validation_fraction`."""
    labels = np.asarray(labels, dtype=bool)
    u = np.where(labels, hash_uniform(keys, 2 * seed + 1), hash_uniform(keys, 2 * seed))
    return np.where(u < test_fraction, TEST, np.where(u < test_fraction + validation_fraction, VALIDATION, TRAIN))


@dataclass(frozen=True)
class SplitPlan:
    """How rows are assigned to splits; picklable, applied inside Ray Data tasks.

    Dated: by the value of `date_column`; otherwise stratified by a hash of the `keys` columns."""

    dated: bool
    date_to_split: Mapping[dt.date, str] | None = None
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 7
    date_column: str | None = None
    keys: tuple[str, ...] = ()

    @property
    def partitions(self) -> "tuple[str, frozenset[dt.date]] | None":
        """(date partition column, the window's dates) for a dated plan: what the reads prune to."""
        return (self.date_column, frozenset(self.date_to_split)) if self.dated else None

    @property
    def columns(self) -> tuple[str, ...]:
        """The source columns `assign` reads."""
        return (self.date_column,) if self.dated else tuple(self.keys)

    def assign(self, raw: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
        """The split name of every row; rows outside a dated window get ''."""
        if self.dated:
            # The window's few distinct values are looked up once each, not once per row.
            codes, values = pd.factorize(raw[self.date_column], use_na_sentinel=True)
            names = np.array([*(self.date_to_split.get(_date(v), "") for v in values), ""], dtype=object)
            return names[codes]  # a null's code is -1: the last name, ''
        return stratified_split(
            key_hashes(raw, self.keys), labels, self.validation_fraction, self.test_fraction, self.seed
        )

    def describe(self) -> str:
        """How the rows were split, for the manifest's lineage."""
        if self.dated:
            return "time" if self.date_column == "event_date" else f"time, by {self.date_column}"
        return f"stratified hash of {', '.join(self.keys)}"

    def window(self) -> dict[str, str] | None:
        """The window's first and last date, and first..last per split, for the manifest's lineage."""
        if not self.dated:
            return None
        out = {"first": str(min(self.date_to_split)), "last": str(max(self.date_to_split))}
        for name in SPLITS:
            days = [d for d, s in self.date_to_split.items() if s == name]
            out[name] = f"{min(days)}..{max(days)}"
        return out
