"""The nightly scoring job against the session's tiny transactions table (4 days, 2026-11-01..04).

The bundles come from tests/scoring_bundles.py (a TEST FIXTURE trained in-process on the first
three days), registered as `scoretest` (mlp) and `scoretest_ae` (autoencoder) so they cannot
collide with models other tests register.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from pipelines.nightly import COUNTED, PartitionError, VerificationError, run_nightly
from pipelines.sql import run_sql
from lakescore import lake, registry
from lakescore import schemas as S
from lakescore.bundle import BundleError
from lakescore.drift import psi
from lakescore.features import TRANSACTIONS_V1
from lakescore.spark import default_spark_conf, delta_jars
from localclusters import session_processes
from scoring_bundles import AUTOENCODER, build_test_bundle
from udfs.scorer import build_scoring_model, score_rows

DAY = dt.date(2026, 11, 4)
MLP_NAME = "scoretest"
AE_NAME = "scoretest_ae"
REPO = Path(__file__).resolve().parent.parent
# The typed view of the transactions' flagged rows: the spec's key, the allow-listed columns
# (account_id, sensitive in the spec, as its hash), then flagged's own.
VIEW = "flagged_transactions"
VIEW_COLUMNS = [
    S.TRANSACTION_ID, S.ACCOUNT_ID, S.EVENT_TS, S.AMOUNT, S.MERCHANT_CATEGORY, S.COUNTRY,
    S.RECORD_KEY, S.SCORE, S.THRESHOLD, S.REASONS, S.MODEL_NAME, S.MODEL_VERSION, S.MODEL_SHA256,
    S.SCORING_ROLE, S.SOURCE_TABLE, S.RUN_ID, S.RUN_DATE, S.SCORED_AT,
]


@pytest.fixture(scope="module")
def bundles(spark, settings, transactions):
    """Register the test-fixture bundles; return {name: (bundle, directory)}."""
    train = spark.table(transactions).where(F.col(S.EVENT_DATE) < F.lit(DAY)).toPandas()
    out = {}
    for name, kind in ((MLP_NAME, "mlp"), (AE_NAME, AUTOENCODER)):
        version = registry.next_version(spark, settings, name)
        directory = registry.bundle_dir(settings, name, version)
        bundle = build_test_bundle(
            directory, train, train[S.IS_ANOMALY].to_numpy(), TRANSACTIONS_V1, name=name, version=version, kind=kind
        )
        registry.register_bundle(spark, settings, bundle, directory)
        out[name] = (bundle, directory)
    return out


@pytest.fixture(scope="module")
def day_rows(spark, transactions):
    """The raw rows of DAY, as `udfs.scorer` sees them."""
    return spark.table(transactions).where(F.col(S.EVENT_DATE) == F.lit(DAY)).toPandas()


@pytest.fixture(scope="module")
def expected(bundles, day_rows):
    """What the numpy/torch core says about DAY, in one process, without Spark."""
    bundle, _ = bundles[MLP_NAME]
    scoring = build_scoring_model(bundle)
    batch = score_rows(scoring, day_rows, top_k=3)
    return {
        "scores": dict(zip(day_rows[S.TRANSACTION_ID], batch.scores)),
        "flagged": set(day_rows[S.TRANSACTION_ID][batch.flagged]),
        "counts": scoring.layout.split(batch.totals.counts),
        "all_scores": np.sort(batch.scores),
    }


@pytest.fixture(scope="module")
def first_run(spark, settings, bundles, transactions):
    (summary,) = run_nightly(spark, settings, DAY, model=MLP_NAME)
    return summary


def _flagged(spark, settings, day=DAY, name=MLP_NAME, role=S.PRIMARY):
    """The primary run's rows of the transactions, through their typed view."""
    return spark.table(settings.table(VIEW)).where(
        (F.col(S.RUN_DATE) == F.lit(day)) & (F.col(S.MODEL_NAME) == name) & (F.col(S.SCORING_ROLE) == role)
    )


def _metrics(spark, settings, day=DAY, name=MLP_NAME, role=S.PRIMARY) -> dict:
    rows = spark.table(settings.table(S.RUN_METRICS)).where(
        (F.col(S.RUN_DATE) == F.lit(day)) & (F.col(S.MODEL_NAME) == name) & (F.col(S.SCORING_ROLE) == role)
    ).collect()
    return {(r[S.SCOPE], r[S.FEATURE], r[S.METRIC]): r[S.VALUE] for r in rows} | {"_run_ids": {r[S.RUN_ID] for r in rows}}


def _versions(spark, settings) -> tuple[int, int]:
    return tuple(lake.delta_version(spark, str(lake.table_path(settings, t))) for t in (S.FLAGGED, S.RUN_METRICS))


def test_a_run_writes_the_flagged_rows_of_the_date_with_reasons_and_provenance(spark, settings, bundles, first_run, expected):
    summary = first_run
    bundle, _ = bundles[MLP_NAME]
    assert spark.table(settings.table(S.FLAGGED)).dtypes == [(f.name, f.dataType.simpleString()) for f in S.FLAGGED_SCHEMA]
    flagged = _flagged(spark, settings)
    assert flagged.columns == VIEW_COLUMNS
    # The view reads the record back in the source's types.
    source_types = dict(spark.table(settings.table(S.TRANSACTIONS)).dtypes)
    # account_id is sensitive in the transactions spec: the view holds its hash, as text.
    assert {c: t for c, t in flagged.dtypes if c in source_types} == {
        c: "string" if c == S.ACCOUNT_ID else source_types[c] for c in VIEW_COLUMNS[:6]
    }
    rows = flagged.collect()
    assert {r[S.TRANSACTION_ID] for r in rows} == expected["flagged"]
    assert len(rows) == summary.rows_flagged > 0
    for r in rows:
        assert r[S.SCORE] == pytest.approx(expected["scores"][r[S.TRANSACTION_ID]], rel=1e-6)
        assert r[S.SCORE] >= r[S.THRESHOLD] == bundle.threshold
        assert (r[S.MODEL_VERSION], r[S.MODEL_SHA256], r[S.RUN_ID]) == (bundle.version, bundle.sha256, summary.run_id)
        assert r[S.RUN_DATE] == DAY and r[S.SOURCE_TABLE] == settings.table(S.TRANSACTIONS)
        assert len(r[S.ACCOUNT_ID]) == 64  # sha256 hex, never the clear id
        assert r[S.RECORD_KEY] == str(r[S.TRANSACTION_ID]) and r[S.SCORING_ROLE] == S.PRIMARY
        features = [reason[S.REASON_FEATURE] for reason in r[S.REASONS]]
        contributions = [reason[S.REASON_CONTRIBUTION] for reason in r[S.REASONS]]
        assert len(features) == 3 and set(features) <= set(TRANSACTIONS_V1.features)
        assert contributions == sorted(contributions, reverse=True)
    # Event times copied from the source keep their value; lakescore writes every timestamp, the
    # generated source's included, as Parquet INT64 microseconds, not the deprecated INT96.
    source = spark.table(settings.table(S.TRANSACTIONS)).select(S.TRANSACTION_ID, S.EVENT_TS)
    event_ts = {r[S.TRANSACTION_ID]: r[S.EVENT_TS] for r in source.where(F.col(S.TRANSACTION_ID).isin(list(expected["flagged"]))).collect()}
    assert {r[S.TRANSACTION_ID]: r[S.EVENT_TS] for r in rows} == event_ts
    for table, columns in ((S.FLAGGED, (S.SCORED_AT,)), (S.TRANSACTIONS, (S.EVENT_TS,))):
        assert _parquet_timestamp_storage(lake.table_path(settings, table), columns) == {("INT64", "microseconds")}


def _parquet_timestamp_storage(table_path: Path, columns: tuple[str, ...]) -> set[tuple[str, str | None]]:
    """(physical type, time unit) of `columns` over every data file of a table (not the
    checkpoints in its _delta_log)."""
    import pyarrow.parquet as pq

    found = set()
    for path in Path(table_path).rglob("*.parquet"):
        if "_delta_log" in path.parts:
            continue
        schema = pq.ParquetFile(path).schema
        for name in columns:
            column = schema.column(schema.names.index(name))
            found.add((column.physical_type, json.loads(column.logical_type.to_json()).get("timeUnit")))
    return found


def test_the_model_runs_once_per_input_row_and_the_metrics_come_from_that_same_pass(spark, settings, transactions, bundles, first_run, expected, day_rows):
    summary = first_run
    # rows_scored is a Spark accumulator the UDF adds every scored row to (all jobs of the run):
    # a second model pass would double it. rows_read is counted from the source, without the model.
    assert summary.rows_scored == summary.rows_read == len(day_rows)
    m = _metrics(spark, settings)
    assert m["_run_ids"] == {summary.run_id}
    assert m[("run", None, "rows_read")] == m[("run", None, "rows_scored")] == len(day_rows)
    assert m[("run", None, "rows_flagged")] == len(expected["flagged"])
    assert m[("run", None, "flag_rate")] == pytest.approx(len(expected["flagged"]) / len(day_rows))
    assert m[("run", None, S.RUN_COMPLETE_METRIC)] == 1.0
    counts = expected["counts"]
    for feature, invalid in counts.invalid.items():
        assert m[("feature", feature, "invalid_values")] == invalid
    assert m[("feature", "log_amount", "psi")] == pytest.approx(
        psi(bundles[MLP_NAME][0].reference["features"]["log_amount"]["fractions"], counts.feature_bins["log_amount"])
    )
    histogram = sum(v for k, v in m.items() if k != "_run_ids" and k[2] == "histogram_count")
    assert histogram == len(day_rows)
    scores = expected["all_scores"]
    for metric, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999)):
        exact = np.quantile(scores, q, method="inverted_cdf")
        # Read from a histogram with bins 0.01 wide on the logit scale (udfs.run_totals.ScoreGrid).
        assert abs(_logit(m[("score", None, metric)]) - _logit(exact)) <= 0.005 + 1e-9
    assert m[("score", None, "mean")] == pytest.approx(scores.mean())
    assert m[("score", None, "max")] == pytest.approx(scores.max(), rel=1e-6)
    source_version = lake.resolve_source(spark, settings, transactions).version
    assert m[("source", settings.table(S.TRANSACTIONS), "source_version")] == source_version
    # run_metrics (with run_complete) is committed after flagged.
    flagged_commit, metrics_commit = (
        spark.sql(f"DESCRIBE HISTORY delta.`{lake.table_path(settings, t)}` LIMIT 1").collect()[0]["timestamp"]
        for t in (S.FLAGGED, S.RUN_METRICS)
    )
    assert flagged_commit <= metrics_commit


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def test_feedback_counts_verdict_keys_that_name_no_flagged_row_and_records_them_anyway(spark, settings, first_run, expected):
    from lakescore.feedback import verdicts_for
    from pipelines.feedback import VerdictSource, run_feedback

    flagged_key = str(sorted(expected["flagged"])[0])
    try:
        known = run_feedback(spark, settings, VerdictSource(key=flagged_key, verdict="false_positive"), table="transactions")
        assert (known.recorded, known.unknown) == (1, 0)
        missed = run_feedback(spark, settings, VerdictSource(key="999999999", verdict="confirmed_anomaly"), table="transactions")
        assert (missed.recorded, missed.unknown, missed.unknown_examples) == (1, 1, ("999999999",))
        verdicts = verdicts_for(spark, settings, "transactions")
        assert verdicts[flagged_key] is False and verdicts["999999999"] is True
    finally:  # the session's transactions feed retraining tests: leave no verdict behind
        spark.sql(
            f"DELETE FROM {settings.table(S.FEEDBACK)} WHERE source_table = 'lakescore.transactions' "
            f"AND record_key IN ('{flagged_key}', '999999999')"
        )


def test_rerunning_a_date_publishes_it_in_one_commit_with_identical_scores_and_deletes_the_replaced_rows(spark, settings, first_run):
    summary = first_run
    before = {r[S.TRANSACTION_ID]: r[S.SCORE] for r in _flagged(spark, settings).collect()}
    versions = _versions(spark, settings)
    (again,) = run_nightly(spark, settings, DAY, model=MLP_NAME)
    after = _flagged(spark, settings).collect()
    # flagged_all: the new rows appended, then the replaced run's deleted; run_metrics: the publish.
    assert _versions(spark, settings) == (versions[0] + 2, versions[1] + 1)
    stored = spark.table(settings.table(S.FLAGGED_ALL)).where(
        (F.col(S.RUN_DATE) == F.lit(DAY)) & (F.col(S.MODEL_NAME) == MLP_NAME) & (F.col(S.SCORING_ROLE) == S.PRIMARY)
    )
    assert {r[S.RUN_ID] for r in stored.select(S.RUN_ID).distinct().collect()} == {again.run_id}
    assert {r[S.TRANSACTION_ID]: r[S.SCORE] for r in after} == before  # bit-identical, no duplicates
    assert len(after) == len(before) and {r[S.RUN_ID] for r in after} == {again.run_id} != {summary.run_id}
    assert _metrics(spark, settings)["_run_ids"] == {again.run_id}


def test_a_missing_partition_fails_naming_it_and_with_allow_empty_a_range_records_zero_rows(spark, settings, bundles, transactions):
    bundle, _ = bundles[AE_NAME]
    empty_day, full_day = dt.date(2026, 10, 31), dt.date(2026, 11, 1)  # the table starts on 11-01
    versions = _versions(spark, settings)
    with pytest.raises(PartitionError) as error:
        run_nightly(spark, settings, empty_day, last_date=full_day, model=f"{AE_NAME}@{bundle.version}")
    assert f"{settings.table(S.TRANSACTIONS)} partition event_date=2026-10-31 is missing or empty (0 rows" in str(error.value)
    assert "--allow-empty" in str(error.value)
    assert _versions(spark, settings) == versions  # nothing written, not even the full day after it

    summaries = run_nightly(
        spark, settings, empty_day, last_date=full_day, model=f"{AE_NAME}@{bundle.version}", allow_empty=True
    )
    assert [s.run_date for s in summaries] == [empty_day, full_day]
    assert len({s.run_id for s in summaries}) == 2

    empty, full = summaries
    assert (empty.rows_read, empty.rows_flagged) == (0, 0)
    m = _metrics(spark, settings, empty_day, AE_NAME)
    assert m[("run", None, "rows_read")] == 0 and m[("run", None, "rows_flagged")] == 0
    assert m[("run", None, "flag_rate")] is None and m[("score", None, "p50")] is None
    assert m[("run", None, S.RUN_COMPLETE_METRIC)] == 1.0
    assert _flagged(spark, settings, empty_day, AE_NAME).count() == 0

    rows = _flagged(spark, settings, full_day, AE_NAME).collect()
    assert len(rows) == full.rows_flagged > 0 and full.rows_read > 0
    of_the_day = {r[0] for r in spark.table(transactions).where(F.col(S.EVENT_DATE) == F.lit(full_day)).select(S.TRANSACTION_ID).collect()}
    assert {r[S.TRANSACTION_ID] for r in rows} <= of_the_day
    assert {(r[S.MODEL_NAME], r[S.MODEL_VERSION]) for r in rows} == {(AE_NAME, bundle.version)}
    assert _metrics(spark, settings, full_day, AE_NAME)[("run", None, "rows_flagged")] == full.rows_flagged


def test_a_model_with_one_input_column_scores_in_spark_as_in_one_process(spark, tmp_path):
    """The UDF gets its input columns as separate arrays, and a single one as the bare array:
    both shapes must score as the core does, with nulls, NaN, inf and empty partitions."""
    from lakescore.features import numeric_feature_set
    from udfs.broadcast import broadcast_model
    from udfs.scoring import new_run_totals, score_dataframe, score_models_dataframe

    rng = np.random.default_rng(4)
    values = np.concatenate([rng.normal(0.0, 1.0, 380), rng.normal(6.0, 1.0, 20)])
    labels = np.arange(400) >= 380
    one = numeric_feature_set(["v"])
    bundle = build_test_bundle(tmp_path / "one", pd.DataFrame({"v": values}), labels, one, name="one_input")
    rows = pd.DataFrame({S.RECORD_ID: np.arange(9), "v": [0.1, None, float("nan"), float("inf"), 7.5, -0.3, 6.2, None, 1e300]})
    # 16 partitions for 9 rows: several are empty.
    df = spark.createDataFrame(rows, "record_id long, v double").repartition(16)
    model = broadcast_model(spark, bundle)
    totals = new_run_totals(spark, model)
    scored = score_dataframe(df, model, top_k=3, totals=totals).collect()

    expected = score_rows(build_scoring_model(bundle), rows, top_k=3)
    by_id = {r[S.RECORD_ID]: r for r in scored}
    assert sorted(by_id) == list(range(9))
    # Equal up to float32 rounding: torch may sum in another order for another batch shape.
    assert [by_id[i][S.SCORE] for i in range(9)] == pytest.approx(expected.scores.tolist(), rel=1e-5, abs=1e-9)
    assert [by_id[i][S.IS_FLAGGED] for i in range(9)] == expected.flagged.tolist()
    assert 0 < expected.flagged.sum() < 9  # the outlying values are flagged, the rest are not
    assert [len(by_id[i][S.REASONS] or []) for i in range(9)] == [1 if f else 0 for f in expected.flagged]
    assert totals.value.rows == 9
    np.testing.assert_array_equal(totals.value.counts, expected.totals.counts)

    # What the job uses: only the flagged rows come back, the same ones, while the totals still
    # count every row.
    flagged_totals = new_run_totals(spark, model)
    flagged = score_dataframe(df, model, top_k=3, totals=flagged_totals, flagged_only=True)
    assert flagged.columns == scored[0].__fields__
    only = {r[S.RECORD_ID]: r for r in flagged.collect()}
    assert sorted(only) == [i for i in range(9) if expected.flagged[i]]
    assert all(only[i] == by_id[i] for i in only)
    np.testing.assert_array_equal(flagged_totals.value.counts, expected.totals.counts)

    # Two models in one pass (a primary and a shadow): each model's flagged rows, a row flagged
    # by both once per model, and each model's totals over every row, as each gives alone.
    second = build_test_bundle(tmp_path / "two", pd.DataFrame({"v": values}), labels, one, name="one_input_b", seed=3, epochs=30)
    shadow = broadcast_model(spark, second)
    both_totals = [new_run_totals(spark, model), new_run_totals(spark, shadow)]
    both = score_models_dataframe(df, [model, shadow], top_k=3, totals=both_totals).collect()
    for i, alone in enumerate((expected, score_rows(build_scoring_model(second), rows, top_k=3))):
        mine = {r[S.RECORD_ID]: r for r in both if r[S.MODEL_INDEX] == i}
        assert sorted(mine) == [j for j in range(9) if alone.flagged[j]]
        assert [mine[j][S.SCORE] for j in sorted(mine)] == pytest.approx(alone.scores[alone.flagged].tolist(), rel=1e-5, abs=1e-9)
        assert all(len(mine[j][S.REASONS]) == 1 for j in mine)
        # Counts, flags and invalid values exactly; a score bin may differ by float32 rounding
        # (another batch shape), as the scores do.
        layout = (model, shadow)[i].layout
        got, want = layout.split(both_totals[i].value.counts), layout.split(alone.totals.counts)
        assert (got.rows, got.rows_flagged, got.rows_with_invalid, got.invalid) == (9, alone.flagged.sum(), want.rows_with_invalid, want.invalid)
    assert {r[S.MODEL_INDEX] for r in both} == {0, 1}


def test_category_codes_computed_in_spark_are_the_codes_of_the_text(spark):
    import pyarrow as pa

    from lakescore.features import raw_columns
    from udfs.scoring import category_codes

    values = [None, "grocery", "GROCERY", "spaceships", "", " fuel", "digital_goods", "fuel", "grocery"]
    df = spark.createDataFrame([(i, v) for i, v in enumerate(values)], f"i int, {S.MERCHANT_CATEGORY} string")
    rows = df.select("i", category_codes(S.MERCHANT_CATEGORY, S.MERCHANT_CATEGORIES).alias("code")).orderBy("i").collect()
    assert df.select(category_codes(S.MERCHANT_CATEGORY, S.MERCHANT_CATEGORIES)).schema[0].dataType.simpleString() == "int"
    expected = raw_columns(pa.RecordBatch.from_pydict({S.MERCHANT_CATEGORY: values})).codes(S.MERCHANT_CATEGORY, S.MERCHANT_CATEGORIES)
    assert [r["code"] for r in rows] == expected.tolist() == [-1, 0, -1, -1, -1, -1, 7, 2, 0]


def test_the_flagged_rows_code_is_the_same_from_run_to_run(spark):
    """A run's date, time and threshold reach the flagged rows as data (a broadcast row), not as
    literals that Spark would spell out in the generated code of the scoring stage."""
    from udfs.flagged import OutputColumns, flagged_records
    from udfs.metrics import RunIdentity

    reasons = [{S.REASON_FEATURE: "v", S.REASON_CONTRIBUTION: 1.0, S.REASON_VALUE: 2.0}]
    scored = spark.createDataFrame(
        [(1, 0.9, True, reasons)],
        f"{S.RECORD_ID} long, {S.SCORE} double, {S.IS_FLAGGED} boolean, {S.REASONS} {S.REASONS_TYPE.simpleString()}",
    )
    output = OutputColumns(keys=(S.RECORD_ID,), allowed=(), hashed=(), salt="")

    def run(day: int, threshold: float):
        identity = RunIdentity(f"run-{day}", dt.date(2026, 11, day), "m", day, "ab" * 32, "src", None, threshold)
        return flagged_records(scored, output, identity, dt.datetime(2026, 11, day, 3, tzinfo=dt.timezone.utc))

    assert [tuple(r) for r in run(2, 0.75).collect()] == [
        ("1", {S.RECORD_ID: "1"}, 0.9, 0.75, [tuple(reasons[0].values())], "m", 2, "ab" * 32, S.PRIMARY, "src", "run-2",
         dt.date(2026, 11, 2), dt.datetime(2026, 11, 2, 3))
    ]

    def code(day: int, threshold: float) -> str:
        spark.conf.set("spark.sql.adaptive.enabled", "false")  # the final plan, before it runs
        try:
            plan = run(day, threshold)._jdf.queryExecution()
            return re.sub(r"#\d+|plan_id=\d+", "", plan.debug().codegenToSeq().toString())
        finally:
            spark.conf.unset("spark.sql.adaptive.enabled")

    assert "BroadcastNestedLoopJoin" in code(1, 0.5) and code(1, 0.5) == code(3, 0.9)


def test_a_dated_runs_date_column_is_not_read_but_filled_with_the_run_date(spark):
    """The date column of a dated run holds the run date in every row: when it is a date, the
    scan leaves it out and flagged takes it from the run (hashed like any other sensitive
    column); as text, or as a model input, it is read."""
    from pyspark.sql import types as T

    from udfs.flagged import OutputColumns, flagged_records, scan_columns
    from udfs.metrics import RunIdentity

    output = OutputColumns(keys=(S.RECORD_ID, S.EVENT_DATE), allowed=(S.COUNTRY,), hashed=(), salt="")
    schema = T.StructType(
        [T.StructField(S.RECORD_ID, T.LongType()), T.StructField(S.EVENT_DATE, T.DateType()),
         T.StructField(S.COUNTRY, T.StringType()), T.StructField(S.AMOUNT, T.DoubleType())]
    )
    as_text = T.StructType([T.StructField(f.name, T.StringType() if f.name == S.EVENT_DATE else f.dataType) for f in schema])
    assert scan_columns(output, [S.AMOUNT], schema, S.EVENT_DATE) == ([S.RECORD_ID, S.COUNTRY, S.AMOUNT], S.EVENT_DATE)
    assert scan_columns(output, [S.AMOUNT], schema, None) == ([S.RECORD_ID, S.EVENT_DATE, S.COUNTRY, S.AMOUNT], None)
    assert scan_columns(output, [S.AMOUNT], as_text, S.EVENT_DATE) == ([S.RECORD_ID, S.EVENT_DATE, S.COUNTRY, S.AMOUNT], None)
    assert scan_columns(output, [S.EVENT_DATE, S.AMOUNT], schema, S.EVENT_DATE)[1] is None

    scored = spark.createDataFrame(
        [(1, "CH", 0.9, True, None), (3, "FR", 0.7, True, None)],
        f"{S.RECORD_ID} long, {S.COUNTRY} string, {S.SCORE} double, {S.IS_FLAGGED} boolean, {S.REASONS} {S.REASONS_TYPE.simpleString()}",
    )
    run_date = dt.date(2026, 11, 2)
    identity = RunIdentity("run-2", run_date, "m", 2, "ab" * 32, "src", None, 0.5)
    scored_at = dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc)
    rows = flagged_records(scored, output, identity, scored_at, S.EVENT_DATE).orderBy(S.RECORD_KEY).collect()
    assert [(r[S.RECORD_KEY], r[S.RECORD], r[S.RUN_DATE]) for r in rows] == [
        ("1", {S.RECORD_ID: "1", S.EVENT_DATE: "2026-11-02", S.COUNTRY: "CH"}, run_date),
        ("3", {S.RECORD_ID: "3", S.EVENT_DATE: "2026-11-02", S.COUNTRY: "FR"}, run_date),
    ]
    assert sorted(rows[0][S.RECORD]) == sorted([S.RECORD_ID, S.EVENT_DATE, S.COUNTRY])
    hashed = OutputColumns(keys=output.keys, allowed=output.allowed, hashed=(S.RECORD_ID, S.EVENT_DATE), salt="pepper")
    rows = flagged_records(scored, hashed, identity, scored_at, S.EVENT_DATE).orderBy(S.SCORE).collect()
    digest = hmac.new(b"pepper", b"2026-11-02", hashlib.sha256).hexdigest()  # keyed: HMAC-SHA256
    # A hashed key is hashed in record_key too: the one value feedback's record_key can name.
    key_digests = [hmac.new(b"pepper", str(i).encode(), hashlib.sha256).hexdigest() for i in (3, 1)]
    assert [(r[S.RECORD_KEY], r[S.RECORD][S.RECORD_ID], r[S.RECORD][S.EVENT_DATE]) for r in rows] == [
        (key_digests[0], key_digests[0], digest), (key_digests[1], key_digests[1], digest)
    ]


def _write_parquet_source(spark, frame: pd.DataFrame, path: Path) -> str:
    spark.createDataFrame(frame).write.partitionBy(S.EVENT_DATE).parquet(str(path))
    return str(path)


def test_missing_or_mistyped_feature_columns_fail_naming_them_before_anything_is_written(spark, settings, day_rows, first_run, tmp_path):
    broken = (
        spark.createDataFrame(day_rows.head(20))
        .drop(S.AMOUNT)
        .withColumn(S.HOUR_OF_DAY, F.col(S.HOUR_OF_DAY).cast("string"))
    )
    broken.write.partitionBy(S.EVENT_DATE).parquet(str(tmp_path / "broken"))
    versions = _versions(spark, settings)
    with pytest.raises(ValueError) as error:
        run_nightly(spark, settings, DAY, source=str(tmp_path / "broken"), model=MLP_NAME)
    message = str(error.value)
    assert "missing column(s): amount" in message
    assert "hour_of_day is string, expected numeric" in message
    assert "amount (numeric)" in message  # the expected inputs and their types are listed
    assert _versions(spark, settings) == versions


def test_a_bundle_that_fails_verification_is_refused_before_anything_is_written(spark, settings, bundles, first_run, tmp_path):
    _, directory = bundles[MLP_NAME]
    copy = tmp_path / "bundle"
    shutil.copytree(directory, copy)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    versions = _versions(spark, settings)
    with pytest.raises(BundleError, match="weights.safetensors has sha256"):
        run_nightly(spark, settings, DAY, bundle_path=copy)
    assert _versions(spark, settings) == versions


def test_a_shadow_whose_spec_keys_rows_otherwise_is_refused_before_anything_is_written(spark, settings, bundles, first_run, transactions):
    import dataclasses

    from lakescore.specs import builtin_spec

    train = spark.table(transactions).where(F.col(S.EVENT_DATE) < F.lit(DAY)).toPandas()
    spec = dataclasses.replace(builtin_spec("transactions_v1"), keys=(S.ACCOUNT_ID, S.EVENT_TS))
    name = "scoretest_keys"
    version = registry.next_version(spark, settings, name)
    directory = registry.bundle_dir(settings, name, version)
    other = build_test_bundle(directory, train, train[S.IS_ANOMALY].to_numpy(), spec.fit(train).feature_set(),
                              name=name, version=version, epochs=2)
    registry.register_bundle(spark, settings, other, directory)
    versions = _versions(spark, settings)
    with pytest.raises(ValueError, match=r"keys its rows by \['transaction_id'\].*by \['account_id', 'event_ts'\].*score.key_columns"):
        run_nightly(spark, settings, DAY, model=MLP_NAME, shadow=name)
    assert _versions(spark, settings) == versions


def test_null_nan_inf_and_unknown_values_in_the_source_are_imputed_and_counted(spark, settings, bundles, day_rows, tmp_path):
    odd_day = dt.date(2026, 12, 1)
    frame = day_rows.head(8).copy()
    frame[S.EVENT_DATE] = odd_day
    frame[S.AMOUNT] = [None, float("nan"), float("inf"), 12.0, 250.0, 3.5, 40.0, 99.0]
    frame[S.DISTANCE_FROM_HOME_KM] = [1.0, None, 2.0, float("nan"), 3.0, 4.0, 5.0, 6.0]
    frame[S.MERCHANT_CATEGORY] = [None, "grocery", "spaceships", "fuel", "online", "retail", "travel", "fuel"]
    frame[S.SECONDS_SINCE_PREV] = 600.0  # the generator leaves these null on an account's first payment
    frame[S.KM_FROM_PREV] = 1.5
    source = _write_parquet_source(spark, frame, tmp_path / "odd")
    _, directory = bundles[MLP_NAME]
    (summary,) = run_nightly(spark, settings, odd_day, source=source, bundle_path=directory)
    assert summary.rows_scored == 8 and summary.source_version is None
    m = _metrics(spark, settings, odd_day)
    assert m[("feature", "log_amount", "invalid_values")] == 3
    assert m[("feature", "log_distance_km", "invalid_values")] == 2
    assert m[("feature", "category_grocery", "invalid_values")] == 2
    assert m[("run", None, "rows_with_invalid")] == 4  # rows 0 to 3
    assert m[("source", source, "source_version")] is None


def _sql_examples() -> list[tuple[str, str]]:
    text = (REPO / "docs" / "sql_examples.md").read_text()
    return re.findall(r"### (.+?)\n\n```sql\n(.+?)```", text, flags=re.S)


def test_every_documented_sql_example_runs_and_returns_the_runs_results(spark, settings, first_run, expected, day_rows):
    first = sorted(expected["flagged"])[0]
    account = int(day_rows.set_index(S.TRANSACTION_ID).loc[first, S.ACCOUNT_ID])
    # The docs use the demo's dates and an example payment; point them at this test's data.
    substitutions = {"2026-11-27": DAY.isoformat(), "2026-11-21": "2026-11-01", "6289398866": str(first)}
    examples = dict(_sql_examples())
    assert len(examples) == 8
    results = {}
    for title, query in examples.items():
        for old, new in substitutions.items():
            query = query.replace(old, new)
        columns, rows = run_sql(spark, settings, query)
        results[title] = [dict(zip(columns, r)) for r in rows]
    n_flagged = len(expected["flagged"])
    per_day = [r for r in results["Flags per day"] if (r["run_date"], r["model_name"], r["scoring_role"]) == (DAY, MLP_NAME, S.PRIMARY)]
    assert [r["flagged"] for r in per_day] == [n_flagged]
    summary_rows = [
        r for r in results["Run summary per night (complete runs only)"]
        if (r["run_date"], r["model_name"], r["scoring_role"]) == (DAY, MLP_NAME, S.PRIMARY)
    ]
    assert [(r["rows_scored"], r["rows_flagged"]) for r in summary_rows] == [(len(day_rows), n_flagged)]
    night = results["The flagged rows of one night, highest score first"]
    assert len(night) == min(20, n_flagged)
    assert night[0]["score"] == pytest.approx(max(expected["scores"][t] for t in expected["flagged"]), abs=1e-4)
    reasons = results["The most frequent reasons"]
    assert sum(r["times_in_top_3"] for r in reasons) == 3 * spark.table(settings.table(S.FLAGGED)).where(
        F.col(S.RUN_DATE).between(dt.date(2026, 11, 1), DAY) & (F.col(S.SCORING_ROLE) == S.PRIMARY)
    ).count()
    mine = {t for t in expected["flagged"] if int(day_rows.set_index(S.TRANSACTION_ID).loc[t, S.ACCOUNT_ID]) == account}
    account_rows = [r for r in results["The flagged rows of one account"] if r["run_date"] == DAY]
    assert {r["transaction_id"] for r in account_rows} == mine and all(len(r["reasons"]) == 3 for r in account_rows)
    m = _metrics(spark, settings)
    drift = [r for r in results["The drift of a feature over nights"] if r["run_date"] == DAY]
    assert [r["psi"] for r in drift] == [round(m[("feature", "log_amount", "psi")], 4)]
    invalid = results["Invalid (imputed) values per feature, one night"]
    assert {r["feature"]: r["invalid_values"] for r in invalid} == {f: n for f, n in expected["counts"].invalid.items() if n}
    # No shadow scored this night (yet): the comparison sees the champion's rows only.
    assert results["Champion and shadow compared, one night"] == [
        {"champion_flagged": n_flagged, "shadow_flagged": 0, "both_flagged": 0, "champion_only": n_flagged, "shadow_only": 0}
    ]


# --- slices: sources, models and roles scored the same night ----------------------------------


@pytest.fixture(scope="module")
def shadow_bundle(spark, settings, bundles, transactions):
    """A second version of the mlp (another seed, fewer epochs): the challenger, registered as
    `scoretest@2` beside the champion `scoretest@1`."""
    train = spark.table(transactions).where(F.col(S.EVENT_DATE) < F.lit(DAY)).toPandas()
    version = registry.next_version(spark, settings, MLP_NAME)
    directory = registry.bundle_dir(settings, MLP_NAME, version)
    bundle = build_test_bundle(
        directory, train, train[S.IS_ANOMALY].to_numpy(), TRANSACTIONS_V1, name=MLP_NAME, version=version, seed=1, epochs=25
    )
    registry.register_bundle(spark, settings, bundle, directory)
    return bundle


def _slice_files(spark, settings, table) -> dict[tuple, dict[str, str]]:
    """{slice: {data file: sha256 of its bytes}} over the files the table's Delta log lists now
    (its JSON commits replayed: `add` and `remove` actions, with each file's partition values)."""
    root = lake.table_path(settings, table)
    live: dict[str, dict] = {}
    for commit in sorted((root / "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = action["add"]["partitionValues"]
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    files: dict[tuple, dict[str, str]] = {}
    for path, values in live.items():
        key = tuple(values[c] for c in S.SLICE_COLUMNS)
        data = (root / urllib.parse.unquote(path)).read_bytes()
        files.setdefault(key, {})[path] = hashlib.sha256(data).hexdigest()
    return files


def _slice_rows(spark, settings, table) -> dict[tuple, list]:
    """{slice: its rows, sorted} of a table."""
    rows: dict[tuple, list] = {}
    for r in spark.read.format("delta").load(str(lake.table_path(settings, table))).collect():
        key = tuple(str(r[c]) for c in S.SLICE_COLUMNS)
        rows.setdefault(key, []).append(repr(tuple(r)))
    return {k: sorted(v) for k, v in rows.items()}


def test_sources_models_and_roles_scored_the_same_night_keep_their_slices_byte_for_byte(
    spark, settings, bundles, shadow_bundle, first_run, day_rows, tmp_path
):
    """Two sources and three models the same night: the champion and a shadow challenger on the
    transactions (one pass), the autoencoder on an undated second source. Re-running the
    champion replaces its slice only: the others keep their files, bytes and rows."""
    transactions = settings.table(S.TRANSACTIONS)
    # The second source: a branch's payments, undated (no event_date column) and in another place.
    branch = day_rows.head(300).drop(columns=[S.EVENT_DATE])
    branch_path = str(tmp_path / "branch_payments")
    spark.createDataFrame(branch).write.parquet(branch_path)
    versions = _versions(spark, settings)

    primary, shadow = run_nightly(spark, settings, DAY, model=MLP_NAME, shadow=f"{MLP_NAME}@{shadow_bundle.version}")
    # Both slices in one commit to each table (flagged_all: the append, then the delete of the
    # rows it replaced); one pass: each model's own totals count every row.
    assert _versions(spark, settings) == (versions[0] + 2, versions[1] + 1)
    history = spark.sql(f"DESCRIBE HISTORY delta.`{lake.table_path(settings, S.RUN_METRICS)}` LIMIT 1").collect()[0]
    assert history["operation"] == "WRITE" and "'shadow'" in str(history["operationParameters"]) and "'primary'" in str(
        history["operationParameters"]
    )
    assert history["userMetadata"] == f"lakescore publish {primary.run_id}"
    assert (primary.scoring_role, shadow.scoring_role) == (S.PRIMARY, S.SHADOW)
    assert primary.rows_scored == shadow.rows_scored == primary.rows_read == len(day_rows)
    assert shadow.model == f"{MLP_NAME}@{shadow_bundle.version}" and primary.run_id != shadow.run_id
    challenger = score_rows(build_scoring_model(shadow_bundle), day_rows, top_k=3)
    shadow_rows = _flagged(spark, settings, role=S.SHADOW).collect()
    assert {r[S.TRANSACTION_ID] for r in shadow_rows} == set(day_rows[S.TRANSACTION_ID][challenger.flagged])
    assert len(shadow_rows) == shadow.rows_flagged > 0
    assert {(r[S.MODEL_VERSION], r[S.RUN_ID]) for r in shadow_rows} == {(shadow_bundle.version, shadow.run_id)}
    champion = {r[S.RECORD_KEY] for r in _flagged(spark, settings).collect()}
    assert len(champion) == primary.rows_flagged
    assert _metrics(spark, settings, role=S.SHADOW)[("run", None, "rows_flagged")] == shadow.rows_flagged
    assert _metrics(spark, settings)[("run", None, "rows_flagged")] == primary.rows_flagged
    # The documented comparison of champion and shadow, by SQL.
    (comparison,) = [q for title, q in _sql_examples() if title.startswith("Champion and shadow")]
    _, (row,) = run_sql(spark, settings, comparison.replace("2026-11-27", DAY.isoformat()))
    challenged = {str(t) for t in day_rows[S.TRANSACTION_ID][challenger.flagged]}
    assert tuple(row) == (
        len(champion), len(challenged), len(champion & challenged), len(champion - challenged), len(challenged - champion)
    )

    undated_day = DAY  # an undated source is scored whole as the run of the date given
    # The model's spec names event_date; naming it in score.date_column overrides the spec's check,
    # and a source without it is scored whole.
    undated = settings.with_overrides({"score.date_column": S.EVENT_DATE})
    (other,) = run_nightly(spark, undated, undated_day, source=branch_path, model=AE_NAME)
    assert other.rows_read == other.rows_scored == 300 and other.scoring_role == S.PRIMARY
    branch_view = spark.table(settings.table("flagged_branch_payments")).where(F.col(S.RUN_DATE) == F.lit(undated_day))
    assert S.EVENT_DATE not in branch_view.columns and dict(branch_view.dtypes)[S.TRANSACTION_ID] == "bigint"
    assert {r[S.SOURCE_TABLE] for r in branch_view.collect()} == {branch_path}
    assert branch_view.count() == other.rows_flagged

    slices = {
        "champion": (DAY.isoformat(), transactions, MLP_NAME, S.PRIMARY),
        "shadow": (DAY.isoformat(), transactions, MLP_NAME, S.SHADOW),
        "branch": (undated_day.isoformat(), branch_path, AE_NAME, S.PRIMARY),
    }
    before = {t: (_slice_files(spark, settings, t), _slice_rows(spark, settings, t)) for t in (S.FLAGGED, S.RUN_METRICS)}
    for table, (files, rows) in before.items():
        assert set(slices.values()) <= set(files) and set(slices.values()) <= set(rows), table

    (again,) = run_nightly(spark, settings, DAY, model=MLP_NAME)  # the champion alone, re-run
    after = {t: (_slice_files(spark, settings, t), _slice_rows(spark, settings, t)) for t in (S.FLAGGED, S.RUN_METRICS)}
    for table in (S.FLAGGED, S.RUN_METRICS):
        (files_before, rows_before), (files_after, rows_after) = before[table], after[table]
        assert set(files_after) == set(files_before)
        for key in files_before:
            if key == slices["champion"]:
                assert not set(files_after[key]) & set(files_before[key]), f"{table}: the re-run slice kept old files"
                assert rows_after[key] != rows_before[key] and again.run_id in rows_after[key][0]
            else:
                assert files_after[key] == files_before[key], f"{table}: slice {key} changed"
                assert rows_after[key] == rows_before[key], f"{table}: rows of slice {key} changed"
    assert {r[S.RECORD_KEY] for r in _flagged(spark, settings).collect()} == champion


def _old_layout_tables(spark, settings) -> None:
    """flagged and run_metrics as the lakescore before slices wrote them: flagged wide (one
    column per copied source column, two sources' columns side by side) and partitioned by
    run_date only, run_metrics without source_table and scoring_role."""
    day, at = dt.date(2026, 11, 2), dt.datetime(2026, 11, 3, 1, 2, 3)
    reasons = [(S.AMOUNT, 1.5, 250.0)]
    flagged = spark.createDataFrame(
        [
            (7, 42, dt.datetime(2026, 11, 2, 10, 30), 250.0, None, 0.9, 0.5, reasons, "tx", 1, "ab" * 32, "lakescore.transactions", "r1", day, at),
            (8, 42, dt.datetime(2026, 11, 2, 11, 0), None, None, 0.7, 0.5, reasons, "tx", 1, "ab" * 32, "lakescore.transactions", "r1", day, at),
            (None, None, None, None, 5, 0.8, 0.6, reasons, "sh", 2, "cd" * 32, "/data/shuttle", "r2", day, at),
        ],
        f"{S.TRANSACTION_ID} long, {S.ACCOUNT_ID} long, {S.EVENT_TS} timestamp, {S.AMOUNT} double, {S.RECORD_ID} long, "
        f"{S.SCORE} double, {S.THRESHOLD} double, {S.REASONS} {S.REASONS_TYPE.simpleString()}, {S.MODEL_NAME} string, "
        f"{S.MODEL_VERSION} int, {S.MODEL_SHA256} string, {S.SOURCE_TABLE} string, {S.RUN_ID} string, {S.RUN_DATE} date, "
        f"{S.SCORED_AT} timestamp",
    )
    flagged.write.format("delta").partitionBy(S.RUN_DATE).save(str(lake.table_path(settings, S.FLAGGED)))
    metrics = spark.createDataFrame(
        [
            ("r1", day, "tx", 1, "run", None, "rows_read", 100.0, at),
            ("r1", day, "tx", 1, "source", "lakescore.transactions", "source_version", 3.0, at),
            ("r2", day, "sh", 2, "run", None, "rows_read", 50.0, at),
            ("r2", day, "sh", 2, "source", "/data/shuttle", "source_version", None, at),
        ],
        "run_id string, run_date date, model_name string, model_version int, scope string, feature string, "
        "metric string, value double, recorded_at timestamp",
    )
    metrics.write.format("delta").partitionBy(S.RUN_DATE).save(str(lake.table_path(settings, S.RUN_METRICS)))


def test_tables_in_the_old_layout_are_refused_by_a_run_and_upgraded_once_by_the_upgrade_command(spark, settings, bundles, tmp_path):
    from pipelines.upgrade import TableLayoutError, check_table_layouts, upgrade_tables

    old = settings.with_overrides({"lake.root": str(tmp_path / "lake"), "lake.database": "oldlayout"})
    _old_layout_tables(spark, old)
    paths = [str(lake.table_path(old, t)) for t in (S.FLAGGED, S.RUN_METRICS)]
    _, directory = bundles[MLP_NAME]
    with pytest.raises(TableLayoutError, match="older lakescore.*lakescore upgrade-tables --apply"):
        run_nightly(spark, old, DAY, source=lake.resolve_source(spark, settings, S.TRANSACTIONS).path, bundle_path=directory)
    assert [lake.delta_version(spark, p) for p in paths] == [0, 0]

    plan = upgrade_tables(spark, old)  # a dry run
    assert len(plan) == 2 and all(line.startswith("would ") for line in plan)
    assert "flagged_shuttle" in plan[0] and "flagged_transactions" in plan[0]
    assert [lake.delta_version(spark, p) for p in paths] == [0, 0]

    upgrade_tables(spark, old, apply=True)
    assert [lake.delta_version(spark, p) for p in paths] == [1, 1]  # one overwrite commit each
    check_table_layouts(spark, old)  # a run would now write
    flagged = spark.read.format("delta").load(paths[0])
    assert flagged.dtypes == [(f.name, f.dataType.simpleString()) for f in S.FLAGGED_SCHEMA]
    rows = {r[S.RECORD_KEY]: r for r in flagged.collect()}
    assert sorted(rows) == ["5", "7", "8"]
    # A null (the amount of 8, another source's record_id) is left out of the record.
    assert sorted(rows["8"][S.RECORD]) == sorted([S.TRANSACTION_ID, S.ACCOUNT_ID, S.EVENT_TS])
    assert (rows["8"][S.RECORD][S.TRANSACTION_ID], rows["8"][S.RECORD][S.ACCOUNT_ID]) == ("8", "42")
    assert rows["5"][S.RECORD] == {S.RECORD_ID: "5"} and rows["5"][S.SOURCE_TABLE] == "/data/shuttle"
    assert {r[S.SCORING_ROLE] for r in rows.values()} == {S.PRIMARY}
    view = spark.table("oldlayout.flagged_transactions").orderBy(S.TRANSACTION_ID).collect()
    assert [(r[S.TRANSACTION_ID], r[S.EVENT_TS], r[S.AMOUNT]) for r in view] == [
        (7, dt.datetime(2026, 11, 2, 10, 30), 250.0), (8, dt.datetime(2026, 11, 2, 11, 0), None)
    ]
    metrics = spark.read.format("delta").load(paths[1])
    assert metrics.dtypes == [(f.name, f.dataType.simpleString()) for f in S.RUN_METRICS_SCHEMA]
    assert {(r[S.RUN_ID], r[S.SOURCE_TABLE], r[S.SCORING_ROLE]) for r in metrics.collect()} == {
        ("r1", "lakescore.transactions", S.PRIMARY), ("r2", "/data/shuttle", S.PRIMARY)
    }
    # Runs from before `run_complete` are complete (their metrics are there): published in the view.
    assert sorted(r[S.RUN_ID] for r in metrics.where(F.col(S.METRIC) == S.RUN_COMPLETE_METRIC).collect()) == ["r1", "r2"]
    assert spark.catalog.getTable("oldlayout.flagged").tableType == "VIEW"
    assert sorted(r[S.RECORD_KEY] for r in spark.table("oldlayout.flagged").collect()) == ["5", "7", "8"]
    assert upgrade_tables(spark, old, apply=True)[0].endswith("already in the current layout, left as it is")


def test_a_partition_short_of_the_floors_fails_with_its_counts_before_anything_is_written(spark, settings, bundles, first_run):
    earlier = DAY - dt.timedelta(days=1)
    run_nightly(spark, settings, earlier, model=MLP_NAME)  # a complete run before DAY: the trailing median
    trailing = _metrics(spark, settings, earlier)[("run", None, "rows_read")]
    versions = _versions(spark, settings)

    absolute = settings.with_overrides({"score.min_rows": str(first_run.rows_read + 1)})
    with pytest.raises(PartitionError) as error:
        run_nightly(spark, absolute, DAY, model=MLP_NAME)
    assert (
        f"{settings.table(S.TRANSACTIONS)} partition event_date={DAY} holds {first_run.rows_read} rows, "
        f"fewer than score.min_rows={first_run.rows_read + 1}"
    ) in str(error.value)

    # Just above what DAY holds relative to the earlier night: the floor is a few rows over DAY's count.
    fraction = round(first_run.rows_read / trailing + 0.05, 3)
    relative = settings.with_overrides({"score.min_fraction_of_median": str(fraction)})
    with pytest.raises(PartitionError) as error:
        run_nightly(spark, relative, DAY, model=MLP_NAME)
    assert (
        f"holds {first_run.rows_read} rows, fewer than {fraction:g} x the median {trailing:g} of the last 1 complete runs"
    ) in str(error.value)
    assert _versions(spark, settings) == versions


def test_a_catch_up_starts_the_day_after_the_last_complete_run_and_needs_a_first_date_without_one(spark, settings, bundles, first_run, day_rows, tmp_path):
    from lakescore.feedback import source_name
    from pipelines.nightly import last_complete_run_date

    source = settings.table(S.TRANSACTIONS)
    last = last_complete_run_date(spark, settings, source, MLP_NAME, S.PRIMARY)
    assert last is not None and last >= DAY  # the table's last day has been scored
    versions = _versions(spark, settings)
    # Every later date is missing from the 4-day table: the first one is the one it stops at.
    with pytest.raises(PartitionError, match=f"partition event_date={last + dt.timedelta(days=1)} is missing"):
        run_nightly(spark, settings, model=MLP_NAME, catch_up=True)
    assert _versions(spark, settings) == versions

    fresh = _write_parquet_source(spark, day_rows.head(50), tmp_path / "fresh")
    assert last_complete_run_date(spark, settings, source_name(settings, fresh), MLP_NAME, S.PRIMARY) is None
    with pytest.raises(ValueError, match=f"found no complete run of model {MLP_NAME} on {re.escape(source_name(settings, fresh))}.*--from"):
        run_nightly(spark, settings, source=fresh, model=MLP_NAME, catch_up=True)


def test_sensitive_columns_without_a_hash_key_are_refused_before_anything_is_written(spark, settings, bundles, first_run):
    from lakescore.config import ConfigError

    keyless = settings.with_overrides({"score.sensitive_columns": S.ACCOUNT_ID, "score.hash_key": ""})
    versions = _versions(spark, settings)
    with pytest.raises(ConfigError, match="account_id are sensitive and would be hashed, but the hash key is empty"):
        run_nightly(spark, keyless, DAY, model=MLP_NAME)
    assert _versions(spark, settings) == versions


def test_a_flagged_row_holds_no_clear_value_of_any_sensitive_column(spark, settings, bundles, day_rows, tmp_path):
    from lakescore.feedback_keys import keyed_hash

    key = "night-key"
    sensitive = (S.TRANSACTION_ID, S.ACCOUNT_ID)
    private = settings.with_overrides({"score.sensitive_columns": ",".join(sensitive), "score.hash_key": key})
    source = _write_parquet_source(spark, day_rows, tmp_path / "private")
    (summary,) = run_nightly(spark, private, DAY, source=source, model=MLP_NAME)
    rows = spark.table(settings.table(S.FLAGGED)).where(F.col(S.RUN_ID) == summary.run_id).collect()
    assert len(rows) == summary.rows_flagged > 0
    by_hash = {keyed_hash(key, str(r[S.TRANSACTION_ID])): r for r in day_rows.to_dict("records")}
    clear = {str(r[c]) for r in day_rows.to_dict("records") for c in sensitive}
    for row in rows:
        source_row = by_hash[row[S.RECORD_KEY]]  # the key is the keyed hash of the transaction id
        assert row[S.RECORD][S.ACCOUNT_ID] == keyed_hash(key, str(source_row[S.ACCOUNT_ID]))
        assert row[S.RECORD][S.TRANSACTION_ID] == row[S.RECORD_KEY]
        assert row[S.RECORD][S.EVENT_TS].startswith(source_row[S.EVENT_TS].strftime("%Y-%m-%dT%H:%M:%S"))  # not sensitive: kept
        assert not clear & ({row[S.RECORD_KEY]} | set(row[S.RECORD].values()))
        assert not {reason[S.REASON_FEATURE] for reason in row[S.REASONS]} & set(sensitive)


def test_rows_read_that_were_not_all_scored_fail_the_run_before_it_commits(spark, settings, bundles, day_rows, first_run, tmp_path):
    """A file of the partition vanishes between the count and the scan (a VACUUM or compaction
    racing the run) and the scan skips it: the models score fewer rows than were read."""
    source = tmp_path / "vanishing"
    spark.createDataFrame(day_rows).repartition(3).write.partitionBy(S.EVENT_DATE).parquet(str(source))
    versions = _versions(spark, settings)
    removed = []

    def remove_a_file(boundary: str) -> None:
        if boundary == COUNTED:
            victim = sorted(source.glob("*/*.parquet"))[0]
            removed.append(len(pd.read_parquet(victim)))
            victim.unlink()

    spark.conf.set("spark.sql.files.ignoreMissingFiles", "true")
    try:
        with pytest.raises(VerificationError) as error:
            run_nightly(spark, settings, DAY, source=str(source), model=MLP_NAME, boundary=remove_a_file)
    finally:
        spark.conf.unset("spark.sql.files.ignoreMissingFiles")
    assert removed and removed[0] > 0
    assert f"{len(day_rows)} rows read but {len(day_rows) - removed[0]} scored, so nothing was written" in str(error.value)
    assert _versions(spark, settings) == versions
    assert not list((settings.lake.tables_dir / "_staging").glob("*"))  # the staged rows are gone too


# --- whole jobs in subprocesses, each on its own lake root (Derby admits one process) -----------


def _tables_state(spark, paths: list[str]) -> list:
    """Each Delta table's version and rows (reasons aside), to compare before and after a job."""
    return [
        (lake.delta_version(spark, p), sorted(map(tuple, spark.read.format("delta").load(p).drop(S.REASONS).collect()), key=repr))
        for p in paths
    ]


def _subprocess_env() -> dict:
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def _job_flags(settings, lake_root: Path, database: str = "lakescore") -> list[str]:
    return ["--set", f"lake.root={lake_root}", "--set", f"lake.database={database}", "--set", "spark.master=local[2]",
            "--set", f"spark.jars_dir={settings.spark.jars_dir}"]


@pytest.mark.slow
def test_a_spark_submit_run_is_queryable_from_new_sessions_spark_sql_and_lakescore_sql(spark, settings, bundles, transactions, expected, tmp_path):
    """Also the catalog's persistence: tables one process registers under the lake root are found
    by name from the next processes (spark-sql, lakescore sql), one after the other (Derby)."""
    root = tmp_path / "lake"
    source = lake.resolve_source(spark, settings, transactions).path
    _, directory = bundles[MLP_NAME]
    bin_dir = Path(sys.executable).parent
    submit = subprocess.run(
        [str(bin_dir / "spark-submit"), "--master", "local[2]", "--jars", ",".join(delta_jars(settings.spark.jars_dir)),
         str(REPO / "jobs" / "score_nightly.py"), "--run-date", DAY.isoformat(), "--table", source,
         "--bundle", str(directory), *_job_flags(settings, root)],
        env=_subprocess_env(), capture_output=True, text=True, timeout=240,
    )
    assert submit.returncode == 0, submit.stderr[-3000:]
    n_flagged = len(expected["flagged"])
    query = f"SELECT COUNT(*) AS n FROM lakescore.flagged WHERE run_date = DATE'{DAY}'"

    sub_settings = settings.with_overrides({"lake.root": str(root)})
    conf = default_spark_conf(sub_settings)
    conf_args = [a for key in ("spark.sql.extensions", "spark.sql.catalog.spark_catalog", "spark.sql.warehouse.dir",
                               "spark.hadoop.javax.jdo.option.ConnectionURL") for a in ("--conf", f"{key}={conf[key]}")]
    spark_sql = subprocess.run(
        [str(bin_dir / "spark-sql"), "--master", "local[1]", "--jars", ",".join(delta_jars(settings.spark.jars_dir)),
         *conf_args, "-S", "-e", query],
        env=_subprocess_env(), capture_output=True, text=True, timeout=180,
    )
    assert spark_sql.returncode == 0, spark_sql.stderr[-3000:]
    assert spark_sql.stdout.strip().splitlines()[-1].strip() == str(n_flagged)

    cli = subprocess.run(
        [str(bin_dir / "lakescore"), "sql", query, *_job_flags(settings, root)],
        env=_subprocess_env(), capture_output=True, text=True, timeout=180,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert cli.stdout.strip().splitlines()[-1].strip() == str(n_flagged)


@pytest.mark.slow
def test_a_job_killed_while_scoring_leaves_both_tables_exactly_as_they_were(spark, settings, bundles, transactions, tmp_path):
    root = tmp_path / "lake"
    database = "killtest"  # the initial state is registered in this session's catalog under its own name
    sub_settings = settings.with_overrides({"lake.root": str(root), "lake.database": database})
    source = lake.resolve_source(spark, settings, transactions).path
    _, directory = bundles[MLP_NAME]
    run_nightly(spark, sub_settings, DAY, source=source, bundle_path=directory)
    paths = [str(lake.table_path(sub_settings, t)) for t in (S.FLAGGED, S.RUN_METRICS)]

    before = _tables_state(spark, paths)
    # One row per Arrow batch makes the scoring stage last seconds, long enough to kill it mid-way.
    job = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "score_nightly.py"), "--run-date", DAY.isoformat(), "--table", source,
         "--bundle", str(directory), *_job_flags(settings, root, database), "--set", "spark.arrow_batch_size=1"],
        env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not any("pyspark" in cmd and ("daemon" in cmd or "worker" in cmd) for _, cmd in session_processes(job.pid)):
            assert job.poll() is None, f"the job ended before scoring started: {job.stderr.read().decode()[-3000:]}"
            assert time.monotonic() < deadline, "the job's scoring stage did not start within 180 s"
            time.sleep(0.2)
        time.sleep(1.0)  # Python workers are up: the scoring stage is running
        assert job.poll() is None, "the job finished before it could be killed; make its stage slower"
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.stderr.close()
    assert job.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while session_processes(job.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(job.pid) == []
    assert _tables_state(spark, paths) == before


@pytest.mark.slow
def test_the_command_line_exits_3_on_a_missing_partition_and_writes_nothing(settings, bundles, transactions, spark, tmp_path):
    root = tmp_path / "lake"
    source = lake.resolve_source(spark, settings, transactions).path
    _, directory = bundles[MLP_NAME]
    command = [str(Path(sys.executable).parent / "lakescore"), "score", "--table", source, "--bundle", str(directory),
               *_job_flags(settings, root)]
    bad = subprocess.run([*command, "--run-date", "2026-13-01"], env=_subprocess_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "month must be in 1..12" in bad.stderr

    missing = subprocess.run([*command, "--run-date", "2026-10-30"], env=_subprocess_env(), capture_output=True, text=True, timeout=240)
    assert missing.returncode == 3, missing.stderr[-3000:]
    assert "partition event_date=2026-10-30 is missing or empty (0 rows" in missing.stderr
    assert not (lake.table_path(settings.with_overrides({"lake.root": str(root)}), S.FLAGGED) / "_delta_log").exists()


# A job that kills itself (no cleanup, no finally) when the run reaches the boundary named in
# $KILL_AT: the hook is the test's, passed in like any caller's.
_KILLED_RUN = """
import datetime as dt, json, os, sys
from lakescore.config import load_settings
from lakescore.spark import build_spark_session
from pipelines.nightly import run_nightly

settings = load_settings(overrides=json.loads(sys.argv[1]), environ={k: v for k, v in os.environ.items() if k == "LAKESCORE_HASH_KEY"})
spark = build_spark_session(settings, app_name="lakescore-killed")

def die_at(boundary):
    if boundary == os.environ["KILL_AT"]:
        os._exit(9)

run_nightly(spark, settings, dt.date.fromisoformat(sys.argv[2]), source=sys.argv[3], bundle_path=sys.argv[4], boundary=die_at)
"""


def _visible(spark, sub_settings) -> tuple[list, list]:
    """What analysts see of a lake: the published flagged rows (reasons aside) and run_metrics."""
    flagged = lake.published_flagged(spark, sub_settings).drop(S.REASONS)
    metrics = spark.read.format("delta").load(str(lake.table_path(sub_settings, S.RUN_METRICS)))
    return sorted(flagged.collect(), key=repr), sorted(metrics.collect(), key=repr)


def _stored_run_ids(spark, sub_settings) -> set[str]:
    """The run_ids of every row flagged_all stores, published or not."""
    rows = spark.read.format("delta").load(str(lake.table_path(sub_settings, S.FLAGGED_ALL))).select(S.RUN_ID).distinct()
    return {r[S.RUN_ID] for r in rows.collect()}


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["staged", "flagged_written", "published"])
def test_a_job_killed_between_its_writes_shows_the_old_night_or_the_new_one_whole_and_a_rerun_completes(
    spark, settings, bundles, transactions, tmp_path, kill_at
):
    from pipelines.nightly import BOUNDARIES, FLAGGED_WRITTEN, PUBLISHED, STAGED, STAGING_DIR

    assert kill_at in BOUNDARIES
    root, database = tmp_path / "lake", f"kill_{kill_at}"
    # A zero grace: the re-run deletes every unpublished row, so the test sees the lake tidied.
    overrides = {"lake.root": str(root), "lake.database": database, "spark.master": "local[2]",
                 "spark.shuffle_partitions": "2", "spark.jars_dir": str(settings.spark.jars_dir),
                 "score.orphan_grace_hours": "0"}
    sub_settings = settings.with_overrides(overrides)
    source = lake.resolve_source(spark, settings, transactions).path
    _, directory = bundles[MLP_NAME]
    (previous,) = run_nightly(spark, sub_settings, DAY, source=source, bundle_path=directory)
    paths = [str(lake.table_path(sub_settings, t)) for t in (S.FLAGGED_ALL, S.RUN_METRICS)]

    stored, seen = _tables_state(spark, paths), _visible(spark, sub_settings)
    job = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, json.dumps(overrides), DAY.isoformat(), source, str(directory)],
        env={**_subprocess_env(), "KILL_AT": kill_at}, capture_output=True, text=True, timeout=300,
    )
    assert job.returncode == 9, job.stderr[-3000:]
    flagged_seen, metrics_seen = _visible(spark, sub_settings)
    if kill_at == STAGED:
        assert _tables_state(spark, paths) == stored  # the flagged rows were written, but only to the run's own folder
        (staged,) = list((sub_settings.lake.tables_dir / STAGING_DIR).iterdir())
        assert staged.name != previous.run_id and list(staged.glob("*.parquet"))
    if kill_at in (STAGED, FLAGGED_WRITTEN):
        assert (flagged_seen, metrics_seen) == seen  # analysts see the previous night, as it was
    if kill_at == FLAGGED_WRITTEN:
        (killed,) = _stored_run_ids(spark, sub_settings) - {previous.run_id}  # appended, invisible
    if kill_at == PUBLISHED:
        # The whole new night: its rows, the same records as before, and its metrics; nothing of the old one.
        (killed,) = {r[S.RUN_ID] for r in metrics_seen}
        assert killed != previous.run_id and {r[S.RUN_ID] for r in flagged_seen} == {killed}
        records = lambda rows: sorted((r[S.RECORD_KEY], r[S.SCORE]) for r in rows)  # noqa: E731
        assert records(flagged_seen) == records(seen[0]) and len(flagged_seen) == previous.rows_flagged
        assert _stored_run_ids(spark, sub_settings) == {previous.run_id, killed}  # the replaced rows not yet deleted
        # The catalog's view shows the same rows as the reader by path.
        assert sorted(r[S.RECORD_KEY] for r in spark.table(f"{database}.{S.FLAGGED}").collect()) == sorted(
            r[S.RECORD_KEY] for r in flagged_seen
        )

    (again,) = run_nightly(spark, sub_settings, DAY, source=source, bundle_path=directory)
    flagged_seen, metrics_seen = _visible(spark, sub_settings)
    assert {r[S.RUN_ID] for r in flagged_seen} == {r[S.RUN_ID] for r in metrics_seen} == {again.run_id}
    assert len(flagged_seen) == len({r[S.RECORD_KEY] for r in flagged_seen}) == again.rows_flagged == previous.rows_flagged
    assert _stored_run_ids(spark, sub_settings) == {again.run_id}  # the killed run's rows and the replaced ones deleted
    assert not list((sub_settings.lake.tables_dir / STAGING_DIR).glob("*"))  # the killed run's staged rows too


# Two runs of one slice at once: each appends its rows, then waits for the other to have done so
# too, and both publish at the same moment. Exits as the job does (jobs.score_nightly.exit_code).
_RACING_RUN = """
import datetime as dt, json, os, sys, time
from pathlib import Path
from lakescore.config import load_settings
from lakescore.spark import build_spark_session
from jobs.score_nightly import exit_code
from pipelines.nightly import FLAGGED_WRITTEN, run_nightly

settings = load_settings(overrides=json.loads(sys.argv[1]), environ={k: v for k, v in os.environ.items() if k == "LAKESCORE_HASH_KEY"})
spark = build_spark_session(settings, app_name="lakescore-race")
barrier = Path(sys.argv[5])

def meet(boundary):
    if boundary == FLAGGED_WRITTEN:
        (barrier / str(os.getpid())).touch()
        deadline = time.monotonic() + 240
        while len(list(barrier.iterdir())) < 2:
            if time.monotonic() > deadline:
                os._exit(7)
            time.sleep(0.02)

try:
    (summary,) = run_nightly(spark, settings, dt.date.fromisoformat(sys.argv[2]), source=sys.argv[3], bundle_path=sys.argv[4], boundary=meet)
    print(json.dumps({"run_id": summary.run_id}))
except Exception as exc:
    code = exit_code(exc)
    if code is None:
        raise
    print(f"error: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
    sys.exit(code)
"""


@pytest.mark.slow
def test_two_runs_of_one_slice_at_once_publish_one_night_whole_and_the_other_fails_cleanly_or_is_replaced(
    spark, settings, bundles, transactions, tmp_path
):
    from jobs.score_nightly import EXIT_CONFLICT

    root, database = tmp_path / "lake", "racetest"
    overrides = {"lake.root": str(root), "lake.database": database, "spark.master": "local[1]",
                 "spark.shuffle_partitions": "1", "spark.jars_dir": str(settings.spark.jars_dir)}
    sub_settings = settings.with_overrides(overrides)
    source = lake.resolve_source(spark, settings, transactions).path
    _, directory = bundles[MLP_NAME]
    (previous,) = run_nightly(spark, sub_settings, DAY, source=source, bundle_path=directory)
    before = _visible(spark, sub_settings)[0]

    # Each process has a catalog of its own (Derby admits one process); the tables are shared, by path.
    racer = {**overrides, "spark.conf": {"spark.sql.catalogImplementation": "in-memory"}}
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # Their output goes to files: a pipe nobody reads until the end fills (64 KiB of Spark's
    # warnings) and blocks its writer before the barrier, so the other waits out its deadline.
    logs = [(tmp_path / f"racer{i}.out", tmp_path / f"racer{i}.err") for i in range(2)]
    jobs = []
    for out_path, err_path in logs:
        with out_path.open("w") as out, err_path.open("w") as err:
            jobs.append(subprocess.Popen(
                [sys.executable, "-c", _RACING_RUN, json.dumps(racer), DAY.isoformat(), source, str(directory), str(barrier)],
                env=_subprocess_env(), stdout=out, stderr=err, text=True,
            ))
    results = [(job.wait(timeout=400), out.read_text(), err.read_text()) for job, (out, err) in zip(jobs, logs)]
    codes = sorted(code for code, _, _ in results)
    assert codes in ([0, 0], [0, EXIT_CONFLICT]), [err[-3000:] for _, _, err in results]
    published = [json.loads(out.strip().splitlines()[-1])["run_id"] for code, out, _ in results if code == 0]
    for code, _, err in results:
        if code == EXIT_CONFLICT:  # the loser names Delta's conflict
            assert "error: Concurrent" in err, err[-3000:]

    flagged_seen, metrics_seen = _visible(spark, sub_settings)
    (winner,) = {r[S.RUN_ID] for r in metrics_seen}  # one night: every metric of the slice from one run
    assert winner in published and {r[S.RUN_ID] for r in flagged_seen} == {winner}
    keys = [r[S.RECORD_KEY] for r in flagged_seen]
    assert len(keys) == len(set(keys)) == previous.rows_flagged  # never duplicated
    assert sorted(keys) == sorted(r[S.RECORD_KEY] for r in before)
    # The loser's rows (withdrawn on its conflict, or deleted by the run that replaced it) and the
    # previous night's are gone; only the night shown is stored.
    assert _stored_run_ids(spark, sub_settings) == {winner}
