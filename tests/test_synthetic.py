"""The synthetic transactions generator: deterministic, partitioned, labelled, realistic enough."""

import datetime as dt

import pytest
from pyspark.sql import functions as F

from lakescore import schemas as S
from lakescore.synthetic import build_transactions

TINY = dict(days=2, rows_per_day=1500, accounts=200, anomaly_rate=0.04, start_date=dt.date(2026, 1, 1))


def test_the_same_seed_gives_identical_rows_whatever_the_partitioning(spark):
    first = build_transactions(spark, seed=3, **TINY)
    second = build_transactions(spark, seed=3, **TINY).repartition(5)
    assert first.count() == second.count()
    assert first.exceptAll(second).count() == 0 and second.exceptAll(first).count() == 0


def test_a_day_regenerates_identically_whatever_else_is_generated_with_it(spark):
    week = build_transactions(spark, seed=3, **{**TINY, "days": 3}).where(F.col(S.EVENT_DATE) == dt.date(2026, 1, 2))
    alone = build_transactions(spark, seed=3, **{**TINY, "days": 1, "start_date": dt.date(2026, 1, 2)})
    assert alone.count() > 1500
    assert week.exceptAll(alone).count() == 0 and alone.exceptAll(week).count() == 0


def test_a_day_is_generated_by_independent_tasks_each_holding_whole_accounts(spark):
    # 1,500 rows a day in tasks of at most 400: four buckets of accounts a day, a task each.
    df = build_transactions(spark, seed=3, rows_per_task=400, **TINY)
    assert df.rdd.getNumPartitions() == 2 * 4
    per_task = (
        df.withColumn("task", F.spark_partition_id())
        .groupBy("task")
        .agg(F.countDistinct(S.EVENT_DATE).alias("days"), F.countDistinct(F.col(S.ACCOUNT_ID) % 4).alias("buckets"),
             F.count(F.lit(1)).alias("rows"))
        .collect()
    )
    assert len(per_task) == 8
    assert all(r["days"] == 1 and r["buckets"] == 1 and 350 <= r["rows"] <= 420 for r in per_task)
    # The same anomaly rate as one task a day would give (4% configured, a third either way).
    rate = df.where(S.IS_ANOMALY).count() / df.count()
    assert 0.04 * 0.67 < rate < 0.04 * 1.33


def test_history_counts_the_accounts_own_payments_of_the_day(spark):
    """count_1h and seconds_since_prev against a brute force over each account's payments that day;
    count_24h adds yesterday's carried payments, so it is at least the day's own count."""
    rows = build_transactions(spark, seed=5, **TINY).toPandas()
    rows["t"] = rows[S.EVENT_TS].astype("int64") // 10**9
    checked = 0
    for _, group in rows.groupby([S.ACCOUNT_ID, S.EVENT_DATE]):
        t = group["t"].to_numpy()
        for i, (ts, count_1h, count_24h, since) in enumerate(
            group[["t", S.TXN_COUNT_1H, S.TXN_COUNT_24H, S.SECONDS_SINCE_PREV]].itertuples(index=False)
        ):
            assert count_1h == ((t >= ts - 3600) & (t <= ts)).sum()
            assert count_24h >= (t <= ts).sum()
            if i > 0:  # rows come ordered by account and time within a task
                assert since == ts - t[i - 1]
            checked += 1
    assert checked == len(rows) > 3000
    # The first payment of a day looks back to a carried previous payment, a day or more back at most a week.
    firsts = rows.groupby([S.ACCOUNT_ID, S.EVENT_DATE]).head(1)[S.SECONDS_SINCE_PREV].dropna()
    assert len(firsts) > 200 and (firsts > 0).all() and (firsts <= 8 * 86400).all()


def test_another_seed_gives_other_rows(spark):
    first = build_transactions(spark, seed=3, **TINY).select(S.TRANSACTION_ID, S.AMOUNT)
    other = build_transactions(spark, seed=4, **TINY).select(S.TRANSACTION_ID, F.col(S.AMOUNT).alias("other"))
    joined = first.join(other, S.TRANSACTION_ID)
    assert joined.count() > 0.9 * first.count()
    assert joined.where(F.col(S.AMOUNT) == F.col("other")).count() < 0.05 * joined.count()


def test_the_written_table_is_partitioned_by_event_date_with_every_day(spark, settings, transactions):
    detail = spark.sql(f"DESCRIBE DETAIL {transactions}").collect()[0]
    assert detail["partitionColumns"] == [S.EVENT_DATE]
    days = [r[0] for r in spark.sql(f"SELECT DISTINCT {S.EVENT_DATE} FROM {transactions} ORDER BY 1").collect()]
    assert days == [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(4)]
    assert spark.table(transactions).schema.names == S.TRANSACTIONS_SCHEMA.names


def test_anomalies_come_at_the_configured_rate_in_all_four_kinds(spark, settings, transactions):
    df = spark.table(transactions)
    total = df.count()
    rate = df.where(S.IS_ANOMALY).count() / total
    # 2% configured; card-testing bursts vary in length, so allow a third either way.
    assert settings.generate.anomaly_rate * 0.67 < rate < settings.generate.anomaly_rate * 1.33
    kinds = {r[0] for r in df.where(S.IS_ANOMALY).select(S.ANOMALY_TYPE).distinct().collect()}
    assert kinds == set(S.ANOMALY_TYPES)
    assert df.where(~F.col(S.IS_ANOMALY) & F.col(S.ANOMALY_TYPE).isNotNull()).count() == 0


def test_anomaly_kinds_look_like_what_they_are_named(spark, transactions):
    df = spark.table(transactions)
    stats = {
        r[S.ANOMALY_TYPE]: r
        for r in df.groupBy(S.ANOMALY_TYPE)
        .agg(
            F.avg(F.log(F.col(S.AMOUNT) / F.col(S.ACCOUNT_AVG_AMOUNT))).alias("log_ratio"),
            F.avg(S.TXN_COUNT_1H).alias("count_1h"),
            F.avg(F.col(S.NEW_DEVICE).cast("int")).alias("new_device"),
            F.expr(f"percentile({S.DISTANCE_FROM_HOME_KM}, 0.5)").alias("median_km"),
        )
        .collect()
    }
    normal = stats[None]
    assert stats["card_testing"]["count_1h"] > 3 * normal["count_1h"]
    assert stats["amount_spike"]["log_ratio"] > normal["log_ratio"] + 1.0
    assert stats["account_takeover"]["new_device"] == 1.0 and normal["new_device"] < 0.05
    assert stats["impossible_travel"]["median_km"] > 50 * normal["median_km"]


def test_the_data_has_the_nulls_a_real_source_has(spark, transactions):
    df = spark.table(transactions)
    # The first payment of an account has no previous one; online payments often have no location.
    assert df.where(F.col(S.SECONDS_SINCE_PREV).isNull()).count() > 0
    assert df.where(F.col(S.DISTANCE_FROM_HOME_KM).isNull()).count() > 0
    assert df.where(F.col(S.TRANSACTION_ID).isNull() | F.col(S.AMOUNT).isNull()).count() == 0
    assert df.select(S.TRANSACTION_ID).distinct().count() == df.count()


@pytest.mark.slow
def test_regenerating_replaces_only_the_dates_it_writes(spark, settings, transactions):
    from pipelines.generate import run_generate

    # A table of its own: the shared fixture keeps version 0, which the training tests record.
    own = settings.with_overrides({"generate.table": "transactions_regenerated", "generate.days": "2"})
    run_generate(spark, own)
    table = own.table("transactions_regenerated")
    before = spark.table(table).orderBy(S.TRANSACTION_ID).collect()
    version = spark.sql(f"DESCRIBE HISTORY {table}").agg(F.max("version")).collect()[0][0]
    # The first day: its rows look back only within it, so it regenerates row for row.
    one_day = own.with_overrides({"generate.days": "1", "generate.start_date": "2026-11-01"})
    run_generate(spark, one_day)
    # The regenerated day is identical and the other day untouched.
    assert spark.table(table).orderBy(S.TRANSACTION_ID).collect() == before
    last = spark.sql(f"DESCRIBE HISTORY {table}").orderBy(F.desc("version")).first()
    assert last["version"] == version + 1 and last["operation"] == "WRITE"
    assert last["userMetadata"] == "lakescore generate: replaced event_date in (2026-11-01) with 1 file(s)"
    # The replaced day's old file is removed from the table: one file a day remains.
    assert spark.sql(f"DESCRIBE DETAIL {table}").first()["numFiles"] == 2


def test_the_spark_writer_writes_the_same_rows_as_the_arrow_writer(spark, settings):
    from pipelines.generate import run_generate

    arrow = settings.with_overrides({"generate.table": "transactions_arrow", "generate.days": "1", "generate.rows_per_task": "1000"})
    by_spark = arrow.with_overrides({"generate.table": "transactions_spark", "generate.writer": "spark"})
    summaries = [run_generate(spark, s) for s in (arrow, by_spark)]
    assert summaries[0] == summaries[1] and summaries[0][0]["rows"] > 3000
    first, second = (spark.table(s.table(s.generate.table)) for s in (arrow, by_spark))
    assert first.schema == second.schema
    assert first.exceptAll(second).count() == 0 and second.exceptAll(first).count() == 0
    # rows_per_task=1000: three files for the day's 3,000 rows, a task each.
    assert spark.sql(f"DESCRIBE DETAIL {arrow.table('transactions_arrow')}").first()["numFiles"] == 3


def test_file_statistics_bound_every_row_so_data_skipping_keeps_them(spark, settings):
    """Delta skips files by the statistics the arrow writer records: filters at each column's
    extremes must still find their rows."""
    table = settings.table("transactions")
    df = spark.table(table)
    for column in (S.TRANSACTION_ID, S.ACCOUNT_ID, S.EVENT_TS, S.AMOUNT, S.MERCHANT_CATEGORY, S.TXN_COUNT_24H):
        low, high = df.agg(F.min(column), F.max(column)).first()
        assert df.where(F.col(column) == low).count() > 0 and df.where(F.col(column) == high).count() > 0
        assert df.where(F.col(column) >= high).count() == df.where(F.col(column) == high).count()
