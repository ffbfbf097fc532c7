"""Analyst verdicts from one place (a single key, a file, or a table), checked and upserted."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from lakescore import schemas as S
from lakescore.config import Settings
from lakescore.feedback import FeedbackError, normalise_verdicts, record_feedback, unknown_keys

log = logging.getLogger(__name__)
# Unknown keys a result lists by name (the count covers all of them).
UNKNOWN_EXAMPLES = 10


@dataclass(frozen=True)
class FeedbackResult:
    """What `run_feedback` did: verdicts recorded, and how many of them name no flagged row."""

    recorded: int
    unknown: int  # verdict keys that match no row of `flagged` for their source (any run)
    unknown_examples: tuple[str, ...]  # up to UNKNOWN_EXAMPLES of those keys, sorted


@dataclass(frozen=True)
class VerdictSource:
    """Where verdicts come from: exactly one of a single `key` (with its `verdict`, and optionally
    `analyst` and `comment`), a CSV (with header) or Parquet `file`, or a catalog table `from_table`."""

    key: str | None = None
    verdict: str | None = None
    analyst: str | None = None
    comment: str | None = None
    file: Path | None = None
    from_table: str | None = None

    def read(self, spark: SparkSession) -> DataFrame:
        """The verdicts as a DataFrame (record_key, verdict[, analyst, comment, source_table]);
        FeedbackError if not exactly one place is given, or it is incomplete or missing."""
        given = [x for x in (self.key, self.file, self.from_table) if x is not None]
        if len(given) != 1:
            raise FeedbackError("give exactly one of --key (with --verdict), --file or --from-table")
        if self.key is not None:
            if self.verdict is None:
                raise FeedbackError(f"--key {self.key} needs --verdict ({' or '.join(S.VERDICTS)})")
            return spark.createDataFrame(
                [(str(self.key), self.verdict, self.analyst, self.comment)],
                "record_key STRING, verdict STRING, analyst STRING, comment STRING",
            )
        if self.file is not None:
            if not Path(self.file).exists():
                raise FeedbackError(f"verdict file {self.file} does not exist")
            if str(self.file).endswith(".parquet"):
                return spark.read.parquet(str(self.file))
            return spark.read.option("header", True).csv(str(self.file))
        return spark.table(self.from_table)


def run_feedback(
    spark: SparkSession, settings: Settings, verdicts: VerdictSource, table: str | None = None
) -> FeedbackResult:
    """Read `verdicts` about source `table`, check them and upsert them into `feedback` in one
    commit, or write nothing; return how many were recorded and how many name a key that no
    flagged row of that source has (recorded anyway, and logged: a missed anomaly, or a typo)."""
    shaped = normalise_verdicts(verdicts.read(spark), settings, table)
    recorded = record_feedback(spark, settings, shaped)
    unknown = unknown_keys(spark, settings, shaped).select(S.RECORD_KEY).distinct()
    count = unknown.count()
    examples = tuple(sorted(r[0] for r in unknown.orderBy(S.RECORD_KEY).limit(UNKNOWN_EXAMPLES).collect()))
    if count:
        log.warning(
            "%d verdict key(s) name no flagged row of their source (recorded anyway): %s%s",
            count, ", ".join(examples), ", ..." if count > len(examples) else "",
        )
    return FeedbackResult(recorded=recorded, unknown=count, unknown_examples=examples)
