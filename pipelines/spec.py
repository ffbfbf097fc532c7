"""Drafting a feature spec from a lake table: its schema and a sample of its rows."""

from __future__ import annotations

import logging
import re

from pyspark.sql import SparkSession

from lakescore import lake
from lakescore.config import Settings
from lakescore.specs import render_suggestion, suggest_spec

log = logging.getLogger(__name__)


def suggest_for_table(spark: SparkSession, settings: Settings, table: str, sample_rows: int = 5000) -> str:
    """A commented TOML spec drafted from `table` (catalog name or path) for a person to edit.

    Args:
        table: a catalog table (`t` or `db.t`) or a Delta/Parquet path.
        sample_rows: about this many rows, sampled across the whole table (seed 0), give the
            statistics (uniqueness, cardinality, skew); the schema gives the types.

    The sample is collected to the driver: keep `sample_rows` in the thousands.
    """
    if sample_rows < 1:
        raise ValueError(f"sample_rows is {sample_rows}; give a positive number of rows, e.g. 5000")
    source = lake.resolve_source(spark, settings, table)
    frame = lake.read_source(spark, source)
    types = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
    total = frame.count()
    # A Bernoulli sample over every file, not the first rows (those are one partition's, one day's).
    fraction = min(1.0, 2.0 * sample_rows / total) if total else 1.0
    sample = frame.sample(fraction=fraction, seed=0).limit(sample_rows).toPandas()
    log.info("suggesting a spec for %s from %d of its %d rows", table, len(sample), total)
    stem = re.sub(r"[^a-z0-9]+", "_", table.rstrip("/").split("/")[-1].split(".")[-1].lower()).strip("_")
    name = f"{stem if stem[:1].isalpha() else 't_' + stem}_v1"
    suggestion = suggest_spec(types, sample, name=name, partition_columns=_partition_columns(spark, source))
    return render_suggestion(suggestion.spec, suggestion.notes, suggestion.left_out)


def _partition_columns(spark: SparkSession, source: lake.Source) -> tuple[str, ...]:
    if source.format != "delta":
        return ()
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{source.path}`").collect()[0]
    return tuple(detail["partitionColumns"] or ())
