"""Analyst feedback: verdicts on flagged records, kept in the `feedback` Delta table.

A verdict is `confirmed_anomaly` or `false_positive` for one record of one source table, named
by its key (`transaction_id` for transactions, `record_id` for the benchmark tables) as a string.
Retraining joins verdicts to the source by that key; a verdict overrides the source's label.

Writers: `lakescore feedback` (one record, a CSV/Parquet file, or a table of verdicts) upserts by
(source_table, record_key) in one MERGE commit; analysts may also `INSERT INTO lakescore.feedback`
in SQL. Readers take the latest verdict per record (by recorded_at), so both ways agree.
"""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from lakescore import lake
from lakescore import schemas as S
from lakescore.config import Settings

REQUIRED = ("record_key", "verdict")


class FeedbackError(ValueError):
    pass


def source_name(settings: Settings, source: str) -> str:
    """How feedback names a source: `db.table` for catalog tables, the path as given otherwise."""
    return source if ("/" in source or source.startswith("file:")) else settings.table(source)


def ensure_feedback_table(spark: SparkSession, settings: Settings) -> str:
    """Create the feedback table if needed; return its path (read and written by path)."""
    return lake.ensure_own_table(spark, settings, S.FEEDBACK, S.FEEDBACK_SCHEMA)


def normalise_verdicts(df: DataFrame, settings: Settings, source_table: str | None) -> DataFrame:
    """Check and shape verdicts to the feedback schema (pure: no I/O).

    Args:
        df: columns record_key and verdict, optionally source_table, analyst, comment, recorded_at.
        source_table: used where df has no source_table column.

    Raises FeedbackError naming missing columns or unknown verdicts (with the allowed ones).
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise FeedbackError(
            f"verdicts lack column(s) {', '.join(missing)}; expected record_key, verdict "
            f"({' or '.join(S.VERDICTS)}) and optionally source_table, analyst, comment"
        )
    if "source_table" not in df.columns:
        if not source_table:
            raise FeedbackError("verdicts have no source_table column; pass --table to say which table they are about")
        df = df.withColumn("source_table", F.lit(source_name(settings, source_table)))
    shaped = df.select(
        F.col("source_table").cast("string").alias("source_table"),
        F.trim(F.col("record_key").cast("string")).alias("record_key"),
        F.lower(F.trim(F.col("verdict").cast("string"))).alias("verdict"),
        (F.col("analyst").cast("string") if "analyst" in df.columns else F.lit(None).cast("string")).alias("analyst"),
        (F.col("comment").cast("string") if "comment" in df.columns else F.lit(None).cast("string")).alias("comment"),
        (
            F.col("recorded_at").cast("timestamp") if "recorded_at" in df.columns else F.current_timestamp()
        ).alias("recorded_at"),
    )
    bad = (
        shaped.where(
            F.col("record_key").isNull()
            | (F.col("record_key") == "")
            | F.col("verdict").isNull()
            | ~F.col("verdict").isin(*S.VERDICTS)
            | F.col("source_table").isNull()
        )
        .limit(5)
        .collect()
    )
    if bad:
        examples = "; ".join(f"key={r['record_key']!r} verdict={r['verdict']!r}" for r in bad)
        raise FeedbackError(
            f"verdicts with an empty key or an unknown verdict ({examples}); each needs a record_key and "
            f"a verdict of {' or '.join(S.VERDICTS)}. Nothing was written"
        )
    return shaped


def record_feedback(spark: SparkSession, settings: Settings, verdicts: DataFrame) -> int:
    """Upsert normalised verdicts by (source_table, record_key) in one commit; return how many.

    Within one batch the latest verdict per record wins.
    """
    table = ensure_feedback_table(spark, settings)
    latest = latest_verdicts(verdicts)
    count = latest.count()
    (
        DeltaTable.forPath(spark, table)
        .alias("t")
        .merge(latest.alias("n"), "t.source_table = n.source_table AND t.record_key = n.record_key")
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )
    return count


def latest_verdicts(feedback: DataFrame) -> DataFrame:
    """One row per (source_table, record_key): the most recent verdict."""
    newest_first = Window.partitionBy("source_table", "record_key").orderBy(F.desc("recorded_at"))
    return feedback.withColumn("_rank", F.row_number().over(newest_first)).where("_rank = 1").drop("_rank")


def feedback_version(spark: SparkSession, settings: Settings) -> int:
    """Current Delta version of the feedback table (recorded in a bundle's lineage)."""
    ensure_feedback_table(spark, settings)
    return lake.delta_version(spark, str(lake.table_path(settings, S.FEEDBACK)))


def verdicts_for(
    spark: SparkSession, settings: Settings, source_table: str, version: int | None = None
) -> dict[str, bool]:
    """{record_key: is_anomaly} from the latest verdicts on `source_table` (at a Delta `version`
    of the feedback table, for reproductions; default: now).

    Collected to the driver on purpose: verdicts are written by people, so there are at most
    thousands, and training broadcasts this small map to every reader.
    """
    ensure_feedback_table(spark, settings)
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    feedback = reader.load(str(lake.table_path(settings, S.FEEDBACK)))
    rows = latest_verdicts(feedback.where(F.col("source_table") == source_name(settings, source_table))).collect()
    return {r["record_key"]: r["verdict"] == "confirmed_anomaly" for r in rows}
