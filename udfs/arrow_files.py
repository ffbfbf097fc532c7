"""The files path of the nightly job: Spark schedules the partition's Parquet files, Python reads
them with pyarrow and scores, and only the flagged rows return to the JVM.

    files = lake.source_files(...)                      # driver: the snapshot's files of the date
    tasks = plan_tasks(files, task_bytes, parallelism)  # driver: byte ranges, packed into tasks
    flagged = score_files_dataframe(spark, tasks, models, schema=..., totals=...)
    flagged_records(flagged, ...)...write...            # ONE action, as with the UDF path

On the UDF path (`udfs.scoring`) Spark decodes every row, converts it to Arrow and sends it to
Python, which is most of the scoring stage's cost (docs/measurements.md, "Scoring worker and
UDF"). Here each Spark task is a row holding a list of byte ranges of files: a `mapInArrow`
function reads the row groups whose middle falls in each range (the rule Spark's own Parquet
splits follow, so every row group is read by exactly one task), builds the same Arrow batches
the UDF would receive, scores them with the same `score_rows`, adds the same `RunTotals` to the
run's accumulators, and yields the flagged rows only, in the columns and types of the UDF path's
result, so `udfs.flagged.flagged_records` and everything after it are shared.

A task reads the same row groups on every attempt and scores them in the same batches, so a
retried task yields the same rows, bit for bit; as on the UDF path, Spark applies a successful
task's accumulator update once (use the result in ONE action).

`pipelines.nightly.choose_read` decides when this path is exact (no deletion vectors, no column
mapping, file types pyarrow reads as Spark does, a file system pyarrow can open).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
from pyspark import Accumulator
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from lakescore import schemas as S
from lakescore.lake import DataFile, FilesUnreadable
from udfs.arrow_output import to_arrow_flagged
from udfs.broadcast import BroadcastModel, load_scoring_model
from udfs.scorer import reason_value_mask, score_rows

# A file smaller than this still costs about as much as reading this many bytes (its footer,
# its open): Spark's spark.sql.files.openCostInBytes default, used the same way when packing.
OPEN_COST_BYTES = 4 * 1024 * 1024

_TASK_SCHEMA = T.StructType([T.StructField("task", T.StringType(), False)])


@dataclass(frozen=True)
class FileRange:
    """Bytes [start, start + length) of a file: its row groups whose middle falls in them."""

    file: DataFile
    start: int
    length: int


def plan_tasks(files: Sequence[DataFile], task_bytes: int, parallelism: int) -> list[tuple[FileRange, ...]]:
    """Split `files` into tasks of about the same size, as Spark splits a Parquet scan.

    The split size is min(task_bytes, max(OPEN_COST_BYTES, total / parallelism)), total counting
    OPEN_COST_BYTES per file: a small partition still spreads over every core, a large one is
    read in pieces of `task_bytes`. A file larger than the split is cut into ranges of it (a
    range owns the row groups whose middle it holds, so a range can own none); smaller ones are
    packed, largest first, into tasks of at most one split (next-fit decreasing). The plan
    depends only on the files, so a retried task reads what it read before.
    """
    if task_bytes <= 0 or parallelism <= 0:
        raise ValueError(f"task_bytes={task_bytes} and parallelism={parallelism} must be positive")
    if not files:
        return []
    total = sum(f.size + OPEN_COST_BYTES for f in files)
    split = max(1, min(task_bytes, max(OPEN_COST_BYTES, -(-total // parallelism))))
    ranges = [
        FileRange(f, start, min(split, f.size - start))
        for f in sorted(files, key=lambda f: (-f.size, f.uri))
        for start in range(0, max(f.size, 1), split)
    ]
    tasks: list[tuple[FileRange, ...]] = []
    current: list[FileRange] = []
    size = 0
    for piece in ranges:
        if current and size + piece.length + OPEN_COST_BYTES > split:
            tasks.append(tuple(current))
            current, size = [], 0
        current.append(piece)
        size += piece.length + OPEN_COST_BYTES
    if current:
        tasks.append(tuple(current))
    return tasks


def check_readable(files: Sequence[DataFile], schema: T.StructType, spark: SparkSession) -> None:
    """Raise FilesUnreadable unless pyarrow opens the first of `files` (so the file system and
    its credentials work from here) and reads each column of `schema` it holds as Spark does:
    the same type, or one that widens to it exactly (a narrower integer or float, a string or
    binary of another width, a timestamp in micro- or milliseconds). A nanosecond timestamp is
    refused: Spark truncates it to microseconds its own way (lakescore.lake)."""
    if not files:
        return
    first = files[0]
    try:
        stored = _open(first.uri).schema_arrow
    except Exception as exc:  # the file system, its credentials, or not Parquet: all mean "use Spark's reader"
        raise FilesUnreadable(f"pyarrow cannot open {first.uri}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    partitioned = {c for c, _ in first.partition}
    for field in _arrow_schema(spark, schema):
        if field.name in partitioned or field.name not in stored.names:
            continue
        found = stored.field(field.name).type
        if not _widens_exactly(found, field.type):
            raise FilesUnreadable(f"column {field.name} is {found} in {first.uri}, which Spark reads as {field.type}")


def _widens_exactly(found: pa.DataType, wanted: pa.DataType) -> bool:
    if found == wanted:
        return True
    types = pa.types
    if types.is_integer(found) and types.is_integer(wanted):
        return types.is_signed_integer(found) == types.is_signed_integer(wanted) and found.bit_width <= wanted.bit_width
    if types.is_floating(found) and types.is_floating(wanted):
        return found.bit_width <= wanted.bit_width
    if (types.is_string(found) or types.is_large_string(found)) and (types.is_string(wanted) or types.is_large_string(wanted)):
        return True
    if (types.is_binary(found) or types.is_large_binary(found)) and (types.is_binary(wanted) or types.is_large_binary(wanted)):
        return True
    if types.is_timestamp(found) and types.is_timestamp(wanted):
        return found.unit in ("s", "ms", "us")
    return False


def _arrow_schema(spark: SparkSession, schema: T.StructType) -> pa.Schema:
    """`schema` in the Arrow types Spark exchanges with Python in this session."""
    conf = spark.conf
    return to_arrow_schema(
        schema,
        timezone=conf.get("spark.sql.session.timeZone"),
        prefers_large_types=conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false").lower() == "true",
    )


def _encode_task(task: Sequence[FileRange]) -> str:
    return json.dumps(
        [{"uri": r.file.uri, "start": r.start, "length": r.length, "partition": list(r.file.partition)} for r in task]
    )


def score_files_dataframe(
    spark: SparkSession,
    tasks: Sequence[Sequence[FileRange]],
    models: Sequence[BroadcastModel],
    *,
    schema: T.StructType,
    totals: Sequence[Accumulator],
    top_k: int = 3,
    sensitive: Sequence[str] = (),
    date_filter: tuple[str, str] | None = None,
    batch_rows: int = 10_000,
    before_task: Callable[[], None] | None = None,
) -> DataFrame:
    """The flagged rows of the files in `tasks`, scored by every model of `models` in one pass:
    what `udfs.scoring.score_dataframe(..., flagged_only=True)` returns for one model (the
    columns of `schema`, then score, is_flagged, reasons) or `score_models_dataframe` for several
    (with `S.MODEL_INDEX` before score), so `udfs.flagged.flagged_records` takes either.

    Args:
        tasks: from `plan_tasks`; each becomes one Spark task.
        schema: the source columns to read and return, in Spark's types (the rows' DataFrame
            schema on the UDF path); a partition column is filled from the file's partition
            values, a column a file lacks with nulls, as Spark reads them.
        totals: one `udfs.scoring.new_run_totals` accumulator per model: every row's totals.
        sensitive: as for `score_dataframe`.
        date_filter: (column, yyyy-mm-dd): keep only the rows whose date column (a DateType
            column inside the files) holds that date; None: every row of the files.
        batch_rows: rows per Arrow batch (settings.spark.arrow_batch_size, as on the UDF path).
        before_task: called at the start of every task in the executor (a test's fault hook).
    """
    if len(models) != len(totals):
        raise ValueError(f"{len(models)} models but {len(totals)} totals; give one accumulator per model")
    if not models:
        raise ValueError("no models to score with; give at least one")
    several = len(models) > 1
    shipped = [(m.files, m.sha256) for m in models]
    masks = [reason_value_mask(m.feature_set, sensitive) if sensitive else None for m in models]
    columns_schema = _arrow_schema(spark, schema)
    out_fields = [T.StructField(f.name, f.dataType, True) for f in schema.fields]
    if several:
        out_fields.append(T.StructField(S.MODEL_INDEX, T.IntegerType(), False))
    out_fields += [
        T.StructField(S.SCORE, T.DoubleType(), True),
        T.StructField(S.IS_FLAGGED, T.BooleanType(), True),
        T.StructField(S.REASONS, S.REASONS_TYPE, True),
    ]
    out_type = T.StructType(out_fields)
    out_schema = _arrow_schema(spark, out_type)

    def score(task_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        if before_task is not None:
            before_task()
        scorings = [load_scoring_model(files, sha256) for files, sha256 in shipped]
        for task_batch in task_batches:
            for encoded in task_batch.column(0).to_pylist():
                for raw in read_task(json.loads(encoded), columns_schema, date_filter, batch_rows):
                    yield from _flagged_batches(raw, scorings, totals, masks, top_k, several, out_schema)

    rows = spark.sparkContext.parallelize([(_encode_task(t),) for t in tasks], max(1, len(tasks)))
    return spark.createDataFrame(rows, _TASK_SCHEMA).mapInArrow(score, out_type)


def _flagged_batches(raw, scorings, totals, masks, top_k, several, out_schema) -> Iterator[pa.RecordBatch]:
    for i, (scoring, model_totals, shown) in enumerate(zip(scorings, totals, masks)):
        batch = score_rows(scoring, raw, top_k=top_k, shown=shown)
        model_totals.add(batch.totals)
        rows = batch.explained
        if not len(rows):
            continue
        taken = pa.array(rows)
        result = to_arrow_flagged(batch).take(taken)
        arrays = [raw.column(j).take(taken) for j in range(raw.num_columns)]
        if several:
            arrays.append(pa.array(np.full(len(rows), i, dtype=np.int32)))
        arrays += [result.field(S.SCORE), pa.array(np.ones(len(rows), dtype=bool)), result.field(S.REASONS)]
        yield pa.RecordBatch.from_arrays(arrays, schema=out_schema)


def read_task(
    task: list[dict], schema: pa.Schema, date_filter: tuple[str, str] | None, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The rows of one task's byte ranges, in batches of at most `batch_rows`, with the columns
    and types of `schema`: what the UDF path's Spark scan hands Python for the same rows."""
    import pyarrow.compute as pc

    for piece in task:
        partition = dict(piece["partition"])
        parquet = _open(piece["uri"])
        groups = owned_row_groups(parquet.metadata, piece["start"], piece["length"])
        if not groups:
            continue
        present = set(parquet.schema_arrow.names)
        read = [f.name for f in schema if f.name not in partition and f.name in present]
        if date_filter is not None and date_filter[0] not in read and date_filter[0] in present:
            read.append(date_filter[0])
        for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=groups, columns=read, use_threads=False):
            if date_filter is not None:
                column, day = date_filter
                keep = pc.equal(batch.column(column), pa.scalar(dt.date.fromisoformat(day), pa.date32()))
                batch = batch.filter(pc.fill_null(keep, False))
                if batch.num_rows == 0:
                    continue
            yield _conform(batch, schema, partition)


def owned_row_groups(metadata, start: int, length: int) -> list[int]:
    """The row groups whose middle byte lies in [start, start + length): every row group of a
    file is owned by exactly one of the ranges that tile it (Spark's rule for Parquet splits)."""
    owned = []
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        chunks = [group.column(c) for c in range(group.num_columns)]
        first = min((_offset(c) for c in chunks), default=0)
        middle = first + sum(c.total_compressed_size for c in chunks) // 2
        if start <= middle < start + length:
            owned.append(i)
    return owned


def _offset(column) -> int:
    dictionary = column.dictionary_page_offset
    return dictionary if column.has_dictionary_page and dictionary is not None and dictionary > 0 else column.data_page_offset


def _open(uri: str):
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    filesystem, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (None, uri)
    # Spark writes INT96 timestamps as microseconds: read them so (pyarrow's default is ns).
    return pq.ParquetFile(path, filesystem=filesystem, coerce_int96_timestamp_unit="us")


def _conform(batch: pa.RecordBatch, schema: pa.Schema, partition: dict[str, str | None]) -> pa.RecordBatch:
    """`batch` with exactly the fields of `schema`, cast to their types: partition columns from
    `partition`, columns the file lacks as nulls."""
    arrays = []
    names = set(batch.schema.names)
    for field in schema:
        if field.name in partition:
            value = partition[field.name]
            column = _constant(value, field.type, batch.num_rows)
        elif field.name in names:
            column = batch.column(field.name)
            if column.type != field.type:
                column = column.cast(field.type)
        else:
            column = pa.nulls(batch.num_rows, type=field.type)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _constant(value: object, type_: pa.DataType, rows: int) -> pa.Array:
    """A partition value (text, or a JSON value from the Delta log) as `rows` values of `type_`;
    a timestamp without an offset is UTC (lakescore's session time zone)."""
    if value is None:
        return pa.nulls(rows, type=type_)
    if pa.types.is_timestamp(type_) and isinstance(value, str):
        moment = dt.datetime.fromisoformat(value)
        if type_.tz and moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        value = moment
    return pa.array([value] * rows).cast(type_)
