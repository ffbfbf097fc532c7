"""Analyst feedback: verdicts on flagged records, kept in the `feedback` Delta table.

A verdict is `confirmed_anomaly` or `false_positive` for one record of one source table, named
by its key (`transaction_id` for transactions, `record_id` for the benchmark tables) as a string.
Retraining joins verdicts to the source by that key; a verdict overrides the source's label.

The verdict is an enumerated type, enforced where every writer meets it: the CLI checks a batch
before writing (nothing of a batch with one bad verdict is written), and the table itself holds a
Delta CHECK constraint (`verdict_known`), so an `INSERT` in SQL with a typo fails instead of
turning into a label. A source is named one way: a catalog table by its qualified lower-case name
(`lakescore.transactions`, whether the analyst wrote `transactions` or `LakeScore.Transactions`),
a path by its absolute form; readers normalise rows inserted by SQL the same way.

Writers: `lakescore feedback` (one record, a CSV/Parquet file, or a table of verdicts) upserts by
(source_table, record_key) in one MERGE commit; analysts may also `INSERT INTO lakescore.feedback`
in SQL. Readers take the latest verdict per record (by recorded_at), so both ways agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from lakescore import lake
from lakescore import schemas as S
from lakescore.config import Settings
from lakescore.feedback_keys import KEY_SEPARATOR

REQUIRED = ("record_key", "verdict")


class FeedbackError(ValueError):
    pass


def source_name(settings: Settings, source: str) -> str:
    """How feedback (and flagged) name a source: `db.table` in lower case for a catalog table, the
    absolute path (no `file:`, no trailing slash) for a path."""
    source = source.strip()
    if "/" in source or source.startswith("file:"):
        return str(Path(source.removeprefix("file:")).resolve())
    return settings.table(source).lower()


def source_name_column(settings: Settings, column: Column) -> Column:
    """`source_name` as a Spark expression, for names written by SQL: `transactions` and
    `LakeScore.Transactions` both become `lakescore.transactions`, `file:/x/y/` becomes `/x/y`."""
    name = F.trim(column)
    path = F.regexp_replace(F.regexp_replace(name, "^file:", ""), "/+$", "")
    qualified = F.when(name.contains("."), F.lower(name)).otherwise(
        F.concat(F.lit(settings.lake.database.lower() + "."), F.lower(name))
    )
    return F.when(name.contains("/"), path).otherwise(qualified)


def record_key_expression(parts: Sequence[Column]) -> Column:
    """A row's record key as Spark computes it, from its key columns as text (`CAST(k AS STRING)`,
    or their hashes where they are sensitive), in the spec's order: the rule of
    `lakescore.feedback_keys` (one key: its text; several: joined with `KEY_SEPARATOR`), which
    `lakescore.feedback_keys.record_keys` follows in pandas. `flagged.record_key` is built here."""
    if not parts:
        raise ValueError("a record key needs at least one key column; list the table's key column(s) in the spec's `keys`")
    return parts[0] if len(parts) == 1 else F.concat_ws(KEY_SEPARATOR, *parts)


VERDICT_CONSTRAINT = "verdict_known"


def ensure_feedback_table(spark: SparkSession, settings: Settings) -> str:
    """Create the feedback table if needed, with its CHECK constraint on `verdict`; return its
    path (read and written by path). A table from before the constraint gets it here, unless a
    row already breaks it: then the message lists the bad verdicts and how to fix them."""
    path = lake.ensure_own_table(spark, settings, S.FEEDBACK, S.FEEDBACK_SCHEMA)
    properties = DeltaTable.forPath(spark, path).detail().select("properties").collect()[0]["properties"] or {}
    if f"delta.constraints.{VERDICT_CONSTRAINT}" not in properties:
        allowed = ", ".join(f"'{v}'" for v in S.VERDICTS)  # constants, not input
        try:
            spark.sql(f"ALTER TABLE delta.`{path}` ADD CONSTRAINT {VERDICT_CONSTRAINT} CHECK (verdict IN ({allowed}))")
        except Exception as exc:  # Delta refuses the constraint when existing rows break it
            bad = (
                spark.read.format("delta").load(path).where(~F.col("verdict").isin(*S.VERDICTS))
                .groupBy("verdict").count().limit(10).collect()
            )
            if not bad:
                raise
            listed = ", ".join(f"{r['verdict']!r} ({r['count']} rows)" for r in bad)
            raise FeedbackError(
                f"{settings.table(S.FEEDBACK)} holds verdicts that are neither {' nor '.join(S.VERDICTS)}: "
                f"{listed}. Correct them (lakescore sql --write \"UPDATE {settings.table(S.FEEDBACK)} SET "
                f"verdict = 'false_positive' WHERE verdict = '...'\") or delete them; then run again"
            ) from exc
    return path


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
        source_name_column(settings, F.col("source_table").cast("string")).alias("source_table"),
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


def unknown_keys(spark: SparkSession, settings: Settings, verdicts: DataFrame) -> DataFrame:
    """The normalised `verdicts` whose record key names no row `flagged` shows for their source,
    in any published run (before any run, all of them). Such a verdict is still recorded (an analyst may
    report an anomaly the model missed), but a typo in a key would otherwise go unnoticed: the
    caller reports them. Keys compare as text: `flagged.record_key` (the rule of
    `lakescore.feedback_keys`) against the verdict's trimmed key."""
    flagged = lake.published_flagged(spark, settings)
    if flagged is None:
        return verdicts
    keys = flagged.select(S.SOURCE_TABLE, S.RECORD_KEY).distinct()
    return verdicts.join(keys, [S.SOURCE_TABLE, S.RECORD_KEY], "left_anti")


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
    named = feedback.withColumn("source_table", source_name_column(settings, F.col("source_table")))
    rows = latest_verdicts(named.where(F.col("source_table") == source_name(settings, source_table))).collect()
    return {r["record_key"]: _is_anomaly(r["verdict"]) for r in rows}


def _is_anomaly(verdict: str) -> bool:
    """The label a verdict gives; any other value is refused (the table's constraint keeps them out)."""
    if verdict not in S.VERDICTS:
        raise FeedbackError(f"feedback holds the verdict {verdict!r}, neither {' nor '.join(S.VERDICTS)}; correct it")
    return verdict == S.VERDICTS[0]
