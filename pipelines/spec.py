"""Drafting a feature spec from a lake table: its schema and a sample of its rows."""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from lakescore import lake
from lakescore.config import Settings
from lakescore.specs import render_suggestion, spec_name_for, suggest_spec

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
    suggestion = suggest_spec(
        types, sample, name=spec_name_for(table), partition_columns=lake.partition_columns(spark, source)
    )
    return render_suggestion(suggestion.spec, suggestion.notes, suggestion.left_out)
