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
    assert "replaceWhere" in str(last["operationParameters"]) or "predicate" in str(last["operationParameters"])
