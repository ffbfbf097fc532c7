"""Lake layout and table I/O shared by every job.

Tables lakescore writes are external Delta tables at `<root>/tables/<database>/<table>`,
registered in the catalog under `<database>.<table>`, so analysts find them by name and
JVM-free readers (delta-rs, DuckDB, Ray Data) find them by path.

One exception: flagged rows are stored in the folder `flagged` but registered as `flagged_all`
(every row a run appended, published or not), and `flagged` is the view of the published runs'
rows (`register_flagged`). A reader by path takes `published_flagged`, not the folder as it is.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakescore import schemas as S
from lakescore.config import ConfigError, Settings, check_identifier, check_table_name

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


class SourceError(ValueError):
    """A source table or path cannot be read; the message says what to do."""


# Tables stored in a folder of another name: flagged rows stayed in the folder they had before
# `flagged` became the view of published runs, so lakes written before keep their files.
_FOLDERS = {S.FLAGGED_ALL: S.FLAGGED}


def table_path(settings: Settings, table: str) -> Path:
    """Storage location of one of lakescore's own tables."""
    qualified = settings.table(table)
    database, name = qualified.split(".")
    return settings.lake.tables_dir / database / _FOLDERS.get(name, name)


def published_flagged_sql(settings: Settings) -> str:
    """The query of the `flagged` view: the rows of `flagged_all` whose run is published, i.e.
    whose `run_complete` metric is in `run_metrics`. A run's metrics are replaced in one commit
    with its slice's, so each slice shows exactly one run, entirely, or none."""
    return (
        f"SELECT f.* FROM {settings.table(S.FLAGGED_ALL)} f LEFT SEMI JOIN "
        f"(SELECT {S.RUN_ID} FROM {settings.table(S.RUN_METRICS)} WHERE {S.METRIC} = '{S.RUN_COMPLETE_METRIC}') p "
        f"ON f.{S.RUN_ID} = p.{S.RUN_ID}"
    )


def published_flagged(spark: SparkSession, settings: Settings) -> DataFrame | None:
    """What the view `flagged` shows, read by path (this lake's tables, whatever the catalog
    says): the flagged rows of published runs; None before the first run."""
    flagged, metrics = table_path(settings, S.FLAGGED_ALL), table_path(settings, S.RUN_METRICS)
    if not (flagged / "_delta_log").is_dir() or not (metrics / "_delta_log").is_dir():
        return None
    published = (
        spark.read.format("delta")
        .load(str(metrics))
        .where(F.col(S.METRIC) == S.RUN_COMPLETE_METRIC)
        .select(S.RUN_ID)
    )
    return spark.read.format("delta").load(str(flagged)).join(published, S.RUN_ID, "left_semi")


def delta_conflicts() -> tuple[type[Exception], ...]:
    """Delta's exceptions for a commit it refused because a concurrent commit changed what the
    transaction read (none is a subclass of another in delta-spark's Python API)."""
    from delta import exceptions as e

    return (
        e.DeltaConcurrentModificationException, e.ConcurrentWriteException, e.MetadataChangedException,
        e.ProtocolChangedException, e.ConcurrentAppendException, e.ConcurrentDeleteReadException,
        e.ConcurrentDeleteDeleteException, e.ConcurrentTransactionException,
    )


def register_flagged(spark: SparkSession, settings: Settings) -> str:
    """Register `flagged_all` and `run_metrics`, and create or replace the view `flagged` of the
    published runs' rows (`published_flagged_sql`); return the view's qualified name.

    A lake written before runs were published kept its flagged rows as the TABLE `flagged`: its
    catalog entry is dropped (an external table: the files stay, and are `flagged_all` now) and
    the view takes its name. A managed table of that name is not lakescore's; it is refused."""
    view = settings.table(S.FLAGGED)
    ensure_database(spark, settings, view.split(".")[0])
    if spark.catalog.tableExists(view):
        kind = spark.catalog.getTable(view).tableType
        if kind == "EXTERNAL":
            log.info("%s was a table (a lake written by an older lakescore): it becomes the view of published runs", view)
            spark.sql(f"DROP TABLE {view}")
        elif kind != "VIEW":
            raise ConfigError(
                f"{view} is a {kind.lower()} table, not lakescore's flagged rows; rename or drop it, or set another "
                "lake.database"
            )
    register_table(spark, settings, S.FLAGGED_ALL, table_path(settings, S.FLAGGED_ALL), "delta")
    register_table(spark, settings, S.RUN_METRICS, table_path(settings, S.RUN_METRICS), "delta")
    spark.sql(
        f"CREATE OR REPLACE VIEW {view} COMMENT 'flagged rows of published runs only (every row: "
        f"{settings.table(S.FLAGGED_ALL)})' AS {published_flagged_sql(settings)}"
    )
    return view


def ensure_database(spark: SparkSession, settings: Settings, database: str | None = None) -> None:
    database = check_identifier(database or settings.lake.database, "database")
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")


def register_table(spark: SparkSession, settings: Settings, table: str, path: Path | str, fmt: str) -> None:
    """Register `path` as `<database>.<table>` in the catalog (idempotent).

    Delta tables keep their schema in the log; Parquet tables are registered with their
    partitions discovered, so `SELECT` sees every date written so far.
    """
    qualified = settings.table(table)
    ensure_database(spark, settings, qualified.split(".")[0])
    if fmt == "delta":
        spark.sql(f"CREATE TABLE IF NOT EXISTS {qualified} USING DELTA LOCATION '{path}'")
    elif fmt == "parquet":
        spark.sql(f"DROP TABLE IF EXISTS {qualified}")
        spark.sql(f"CREATE TABLE {qualified} USING PARQUET LOCATION '{path}'")
        spark.sql(f"MSCK REPAIR TABLE {qualified}")
    else:
        raise ValueError(f"unknown format {fmt!r}; use delta or parquet")


def ensure_own_table(spark: SparkSession, settings: Settings, table: str, schema) -> str:
    """Create one of lakescore's Delta tables if needed (empty, with `schema`) and register it in
    the catalog; return its path, by which lakescore reads and writes it (the catalog entry is
    for SQL, and lakescore.catalog checks that it names the same place)."""
    path = table_path(settings, table)
    if not (path / "_delta_log").is_dir():
        spark.createDataFrame([], schema).write.format("delta").mode("ignore").save(str(path))
    if not spark.catalog.tableExists(settings.table(table)):
        register_table(spark, settings, table, path, "delta")
    return str(path)


@dataclass(frozen=True)
class Source:
    """A resolved source: how to read it and which version was read."""

    name: str  # as the user gave it
    path: str
    format: str  # "delta" or "parquet"
    version: int | None  # Delta version at resolve time; None for Parquet


def resolve_source(spark: SparkSession, settings: Settings, source: str) -> Source:
    """Resolve a catalog table name (`t` or `db.t`) or a path to a readable source.

    A path is Delta if it holds a `_delta_log`, else Parquet. Raises SourceError naming the
    problem and the fix.
    """
    if "/" in source or source.startswith("file:") or Path(source).exists():
        path = source.removeprefix("file:")
        if Path(path).is_dir() and (Path(path) / "_delta_log").is_dir():
            return Source(source, str(Path(path).resolve()), "delta", delta_version(spark, path))
        if Path(path).exists():
            return Source(source, str(Path(path).resolve()), "parquet", None)
        raise SourceError(f"source path {source!r} does not exist; check the path or name a catalog table")
    try:
        qualified = settings.table(source)
    except ConfigError as exc:
        raise SourceError(str(exc)) from None
    if not spark.catalog.tableExists(qualified):
        database = qualified.split(".")[0]
        known = (
            [t.name for t in spark.catalog.listTables(database)]
            if spark.catalog.databaseExists(database)
            else []
        )
        hint = f"tables in {database}: {', '.join(sorted(known))}" if known else f"database {database} has no tables"
        raise SourceError(
            f"table {qualified} does not exist ({hint}); run `lakescore generate` or give a path"
        )
    detail = spark.sql(f"DESCRIBE DETAIL {qualified}").collect()[0] if _is_delta(spark, qualified) else None
    if detail is not None:
        location = detail["location"].removeprefix("file:")
        return Source(source, location, "delta", delta_version(spark, location))
    location = _table_location(spark, qualified)
    return Source(source, location, "parquet", None)


def _is_delta(spark: SparkSession, qualified: str) -> bool:
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {qualified}").collect()
    provider = [r["data_type"] for r in rows if r["col_name"] == "Provider"]
    return bool(provider) and provider[0].lower() == "delta"


def _table_location(spark: SparkSession, qualified: str) -> str:
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {qualified}").collect()
    location = [r["data_type"] for r in rows if r["col_name"] == "Location"]
    return location[0].removeprefix("file:")


def delta_version(spark: SparkSession, path: str) -> int:
    """Latest committed version of the Delta table at `path`."""
    from delta.tables import DeltaTable

    history = DeltaTable.forPath(spark, path).history(1).select("version").collect()
    return int(history[0]["version"])


def write_date_partitions(
    df: DataFrame,
    path: Path | str,
    fmt: str,
    date_column: str,
    first: "dt.date",
    last: "dt.date",
) -> None:
    """Write `df` partitioned by `date_column`, replacing exactly the dates [first, last].

    Delta: one atomic commit with `replaceWhere`, so readers see the old dates or the new ones,
    never a mix, and a re-run gives the same table. Parquet: dynamic partition overwrite
    (per-partition, not atomic across dates: prefer Delta for anything readers depend on).
    """
    writer = df.write.partitionBy(date_column)
    if fmt == "delta":
        condition = f"{date_column} >= '{first.isoformat()}' AND {date_column} <= '{last.isoformat()}'"
        (
            writer.format("delta")
            .mode("overwrite")
            .option("replaceWhere", condition)
            .save(str(path))
        )
    elif fmt == "parquet":
        (
            writer.format("parquet")
            .mode("overwrite")
            .option("partitionOverwriteMode", "dynamic")
            .save(str(path))
        )
    else:
        raise ValueError(f"unknown format {fmt!r}; use delta or parquet")


# Spark's concurrent-writers setting: with it at 0 (Spark's default), a partitioned file write
# sorts every task's rows by the partition columns first.
CONCURRENT_WRITERS = "spark.sql.maxConcurrentOutputFileWriters"


@contextmanager
def unsorted_partition_writes(spark: SparkSession) -> Iterator[None]:
    """Within it, a partitioned file write (Delta or Parquet) sends each task's rows through one
    open file writer instead of sorting them by the partition columns first.

    For writes whose rows share one partition value, as a scoring run's (every row has the run
    date): there is nothing to sort, and the sort takes a page of execution memory per task
    (64 MiB, Spark's page size for a 4g heap), allocated and zeroed for the few thousand flagged
    rows of a scoring task (see docs/measurements.md, "Spark session and JVM"). A task that meets
    a second value falls back to sorting its remaining rows, so a wider write is still correct. A
    launcher's own setting above 0 is kept.
    """
    previous = spark.conf.get(CONCURRENT_WRITERS)
    if int(previous) > 0:
        yield
        return
    spark.conf.set(CONCURRENT_WRITERS, "1")
    try:
        yield
    finally:
        spark.conf.set(CONCURRENT_WRITERS, previous)


def read_source(spark: SparkSession, source: Source, version: int | None = None) -> DataFrame:
    """Read a resolved source; for Delta, at `version` (default: the version resolved)."""
    if source.format == "delta":
        pinned = source.version if version is None else version
        return spark.read.format("delta").option("versionAsOf", pinned).load(source.path)
    try:
        return _nanosecond_timestamps_as_timestamps(spark.read.parquet(source.path))
    except Exception as exc:  # AnalysisException: pyspark's class differs between Classic and Connect
        if "PARQUET_TYPE_ILLEGAL" not in str(exc):
            raise
        raise SourceError(
            f"{source.name} holds a Parquet type Spark cannot read ({str(exc).splitlines()[0]}). For "
            "nanosecond timestamps (pandas' and pyarrow's default), leave "
            "spark.sql.legacy.parquet.nanosAsLong at lakescore's true, or write the table with "
            "microsecond timestamps (pandas: df.to_parquet(..., coerce_timestamps='us'))"
        ) from None


def partition_columns(spark: SparkSession, source: Source) -> tuple[str, ...]:
    """The source's partition columns (Delta: from its log; Parquet: its `name=value` folders).

    By path through DeltaTable, not `DESCRIBE DETAIL delta.`path``: SQL resolves the name through
    the session catalog, which boots the metastore, and an embedded Derby one admits one process
    (two nightly runs at once, each with an in-memory catalog, would collide on it)."""
    if source.format == "delta":
        from delta.tables import DeltaTable

        detail = DeltaTable.forPath(spark, source.path).detail().collect()[0]
        return tuple(detail["partitionColumns"] or ())
    root = Path(source.path)
    return tuple(sorted({p.name.split("=", 1)[0] for p in root.glob("*=*") if p.is_dir()})) if root.is_dir() else ()


def _nanosecond_timestamps_as_timestamps(df: DataFrame) -> DataFrame:
    """Read TIMESTAMP(NANOS) columns (pandas' and pyarrow's default when they write Parquet) as
    Spark timestamps, truncated to Spark's microseconds.

    Spark has no nanosecond timestamp type: it refuses such a column (PARQUET_TYPE_ILLEGAL)
    unless `spark.sql.legacy.parquet.nanosAsLong` is on (lakescore's session sets it), and then
    reads it as a bigint of nanoseconds. Which bigints are such timestamps is in the files'
    Parquet schema, read here from one file's footer: a timestamp with a time zone (adjusted to
    UTC) becomes TIMESTAMP, one without becomes TIMESTAMP_NTZ (the session time zone is UTC,
    so its wall-clock value is kept).
    """
    nanos = _nanosecond_columns(df)
    if not nanos:
        return df
    from pyspark.sql import functions as F

    def column(name: str):
        if name not in nanos:
            return F.col(f"`{name}`")
        instant = F.timestamp_micros(F.expr(f"`{name}` div 1000"))
        return (instant if nanos[name] else instant.cast("timestamp_ntz")).alias(name)

    return df.select(*[column(c) for c in df.columns])


def _nanosecond_columns(df: DataFrame) -> dict[str, bool]:
    """{column: has a time zone} for the TIMESTAMP(NANOS) columns Spark read as bigint."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs

    longs = {f.name for f in df.schema.fields if f.dataType.simpleString() == "bigint"}
    files = df.inputFiles()
    if not longs or not files:
        return {}
    filesystem, path = fs.FileSystem.from_uri(files[0])
    schema = pq.read_schema(path, filesystem=filesystem)
    return {
        f.name: f.type.tz is not None
        for f in schema
        if f.name in longs and pa.types.is_timestamp(f.type) and f.type.unit == "ns"
    }


__all__ = [
    "Source",
    "SourceError",
    "check_table_name",
    "delta_version",
    "write_date_partitions",
    "ensure_database",
    "ensure_own_table",
    "partition_columns",
    "read_source",
    "register_table",
    "resolve_source",
    "table_path",
]


# --- Delta commits of Parquet files written by Python tasks -----------------------------------

# What a task that wrote a file returns to the driver, which commits every task's file at once.
WRITTEN_FILE_SCHEMA = "path string, size long, rows long, partition string, stats string"


def write_partition_file(table: "pa.Table", root: Path | str, partition_column: str, value: str, name: str) -> dict:
    """Write `table` (without `partition_column`) as one Parquet file in `root`'s folder
    `partition_column=value`, as Spark lays out a partitioned Delta table; return its
    `WRITTEN_FILE_SCHEMA` record for `commit_written_files`.

    The file is not part of the table until the commit: a task that fails or is retried leaves a
    file no version refers to, which VACUUM removes, as it does for Spark's own failed writes.
    """
    import pyarrow.parquet as pq

    relative = f"{partition_column}={value}/{name}.snappy.parquet"
    target = Path(root) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    data = table.drop_columns([partition_column])
    pq.write_table(data, target, compression="snappy")
    return {
        "path": relative,
        "size": target.stat().st_size,
        "rows": data.num_rows,
        "partition": value,
        "stats": _file_stats(data),
    }


def _file_stats(data: "pa.Table") -> str:
    """Delta's per-file statistics: the row count, and the minimum, maximum and null count of each
    column Spark's data skipping reads (numbers, dates, times in UTC milliseconds, strings)."""
    import json

    import pyarrow as pa
    import pyarrow.compute as pc

    low, high, nulls = {}, {}, {}
    for name, column in zip(data.column_names, data.columns):
        nulls[name] = column.null_count
        kind = column.type
        if pa.types.is_boolean(kind) or column.null_count == len(column):
            continue
        bounds = pc.min_max(column)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if pa.types.is_timestamp(kind):
            # Delta's statistics hold milliseconds; the maximum is rounded up so that no row lies above it.
            lo = lo.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{lo.microsecond // 1000:03d}Z"
            up = hi + dt.timedelta(microseconds=(-hi.microsecond) % 1000)
            hi = up.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{up.microsecond // 1000:03d}Z"
        elif pa.types.is_date(kind):
            lo, hi = lo.isoformat(), hi.isoformat()
        elif pa.types.is_floating(kind) and not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        elif pa.types.is_string(kind) and max(len(lo), len(hi)) > 32:
            continue  # Delta truncates long strings; leave them out rather than bound them wrongly
        low[name], high[name] = lo, hi
    return json.dumps({"numRecords": data.num_rows, "minValues": low, "maxValues": high, "nullCount": nulls})


def commit_written_files(
    path: Path | str, files: list, schema: "pa.Schema", partition_column: str, replace: list[str], operation: str
) -> None:
    """Commit the files of `write_partition_file` to the Delta table at `path` in one version that
    replaces exactly the partitions `replace` (the table is created if it does not exist).

    Readers see the partitions as they were or as written, never a mix; on a conflict with
    another writer nothing is committed and delta-rs raises (the written files stay orphaned).
    """
    import time

    import pyarrow as pa
    from deltalake import CommitProperties, DeltaTable
    from deltalake import Schema as DeltaSchema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    now = int(time.time() * 1000)
    actions = [
        AddAction(f["path"], int(f["size"]), {partition_column: f["partition"]}, now, True, f["stats"]) for f in files
    ]
    # Nullable, as Delta records a table Spark creates from a DataFrame.
    table_schema = pa.schema([field.with_nullable(True) for field in schema])
    # Shown by DESCRIBE HISTORY in `userMetadata`: what replaced which partitions.
    note = f"lakescore {operation}: replaced {partition_column} in ({', '.join(replace)}) with {len(files)} file(s)"
    properties = CommitProperties(custom_metadata={"userMetadata": note})
    if (Path(path) / "_delta_log").is_dir():
        DeltaTable(str(path)).create_write_transaction(
            actions,
            mode="overwrite",
            schema=table_schema,
            partition_by=[partition_column],
            partition_filters=[(partition_column, "in", list(replace))],
            commit_properties=properties,
        )
    else:
        create_table_with_add_actions(
            str(path), DeltaSchema.from_arrow(table_schema), actions, mode="error", partition_by=[partition_column], commit_properties=properties
        )


@dataclass(frozen=True)
class DataFile:
    """One Parquet file of a source's snapshot, as the scoring files path reads it
    (`udfs.arrow_files`)."""

    uri: str  # what pyarrow opens: a local path, or a URI (s3://, hdfs://, gs://, abfss://)
    size: int  # bytes
    # The file's partition values, (column, value) in the table's partition order: JSON values
    # (a date or timestamp in ISO form), None for null; cast to the column's type when read.
    partition: tuple[tuple[str, object], ...] = ()


class FilesUnreadable(Exception):
    """Why the files of a source cannot be read exactly with pyarrow (the message says)."""


def delta_files(source: Source, partition: tuple[str, object] | None = None) -> list[DataFile]:
    """The Parquet files of a Delta source at its pinned version, with their partition values
    from the log; only those whose partition `column` holds `value` when `partition` is
    (column, value) (value as a JSON value: a date in ISO form).

    Raises FilesUnreadable where reading the files as they are would not give the snapshot's rows
    or columns: deletion vectors on any listed file (rows deleted in the snapshot are still in
    the file), column mapping (the files' column names are not the table's), type widening (a
    file may hold an older, narrower type).
    """
    import pyarrow as pa
    from deltalake import DeltaTable

    table = DeltaTable(source.path, version=source.version)
    reader = set(table.protocol().reader_features or ())
    configuration = table.metadata().configuration or {}
    mapping = configuration.get("delta.columnMapping.mode", "none").lower()
    if "columnMapping" in reader or mapping != "none":
        raise FilesUnreadable(f"the table uses column mapping (mode {mapping}): its files' column names are not the table's")
    widening = {"typeWidening", "typeWidening-preview"} & reader
    if widening:
        raise FilesUnreadable(f"the table uses {sorted(widening)[0]}: a file may hold a column's older, narrower type")
    columns = list(table.metadata().partition_columns)
    actions = pa.table(table.get_add_actions(flatten=True))
    uris = table.file_uris()
    if len(uris) != actions.num_rows:
        raise FilesUnreadable(f"delta-rs listed {len(uris)} file URIs for {actions.num_rows} files")
    values = {c: actions.column(f"partition.{c}").to_pylist() for c in columns}
    sizes = actions.column("size_bytes").to_pylist()
    paths = actions.column("path").to_pylist()
    files = []
    for i, uri in enumerate(uris):
        if Path(uri).name != Path(_unquoted(paths[i])).name and Path(uri).name != Path(paths[i]).name:
            raise FilesUnreadable(f"delta-rs listed file {uri} beside the log's {paths[i]}")
        spelled = tuple((c, _json_value(values[c][i])) for c in columns)
        if partition is not None and dict(spelled).get(partition[0]) != partition[1]:
            continue
        files.append(DataFile(uri=_local(uri), size=int(sizes[i]), partition=spelled))
    if "deletionVectors" in reader and files:
        marked = {_local(str(u)) for u in pa.table(table.deletion_vectors()).column("filepath").to_pylist()}
        hit = [f.uri for f in files if f.uri in marked]
        if hit:
            raise FilesUnreadable(
                f"{len(hit)} of the {len(files)} files carry deletion vectors (rows deleted in the snapshot are still in "
                "the files); an OPTIMIZE or a REORG TABLE ... APPLY (PURGE) rewrites them without"
            )
    return files


def parquet_files(df: DataFrame, root: str) -> list[DataFile]:
    """The files Spark would scan for `df` (a Parquet source's rows, after partition pruning),
    with the partition values of their `column=value` folders under `root` (as text)."""
    from urllib.parse import unquote

    import pyarrow.fs as pafs

    files = []
    base = Path(root.removeprefix("file:")).resolve()
    for uri in sorted(df.inputFiles()):
        local = _local(uri)
        filesystem, path = (pafs.LocalFileSystem(), local) if "://" not in local else pafs.FileSystem.from_uri(local)
        size = filesystem.get_file_info(path).size
        try:
            folders = Path(local).parent.relative_to(base).parts
        except ValueError:
            folders = ()
        spelled = []
        for folder in folders:
            if "=" in folder:
                column, value = folder.split("=", 1)
                value = unquote(value)
                spelled.append((unquote(column), None if value == "__HIVE_DEFAULT_PARTITION__" else value))
        files.append(DataFile(uri=local, size=int(size or 0), partition=tuple(spelled)))
    return files


def _local(uri: str) -> str:
    """A `file:` URI as a local path (what pyarrow opens without a file system); others as they are."""
    from urllib.parse import unquote, urlparse

    if uri.startswith("file:"):
        return unquote(urlparse(uri).path)
    return uri


def _unquoted(path: str) -> str:
    from urllib.parse import unquote

    return unquote(path)


def _json_value(value: object) -> object:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
