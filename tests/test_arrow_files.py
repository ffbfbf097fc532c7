"""The scoring files path (udfs.arrow_files): task planning, row-group ownership, and the nightly
job on it against the UDF path on the same rows (identical flagged tables and metrics), with the
fallbacks where reading the files would not be exact."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from lakescore import lake
from lakescore import schemas as S
from lakescore.config import ConfigError
from lakescore.lake import DataFile
from pipelines.nightly import FILES_PATH, UDF_PATH, run_nightly
from udfs.arrow_files import OPEN_COST_BYTES, owned_row_groups, plan_tasks, read_task

MIB = 1024 * 1024


def _ranges_of(tasks):
    return [r for task in tasks for r in task]


def test_a_large_file_is_cut_into_ranges_that_tile_it_and_small_files_are_packed():
    files = [DataFile("big", 300 * MIB), *(DataFile(f"small{i}", MIB) for i in range(10))]
    tasks = plan_tasks(files, task_bytes=128 * MIB, parallelism=2)
    big = sorted((r.start, r.length) for r in _ranges_of(tasks) if r.file.uri == "big")
    assert big == [(0, 128 * MIB), (128 * MIB, 128 * MIB), (256 * MIB, 44 * MIB)]
    small = [r for r in _ranges_of(tasks) if r.file.uri != "big"]
    assert sorted(r.file.uri for r in small) == sorted(f"small{i}" for i in range(10))
    assert all((r.start, r.length) == (0, MIB) for r in small)
    # The 44 MiB tail (48 with the open cost) and the ten 1 MiB files (5 MiB each with it) share one task.
    assert [len(t) for t in tasks] == [1, 1, 11]
    assert tasks[2][0].length == 44 * MIB


def test_a_small_partition_still_spreads_over_every_core():
    files = [DataFile(f"f{i}", 20 * MIB) for i in range(4)]
    tasks = plan_tasks(files, task_bytes=128 * MIB, parallelism=2)
    # total 4 x (20 + 4) MiB over 2 cores: splits of 48 MiB, two files per task.
    assert [len(t) for t in tasks] == [2, 2]
    assert plan_tasks([], 128 * MIB, 2) == []
    with pytest.raises(ValueError, match="positive"):
        plan_tasks(files, 0, 2)


def test_the_plan_depends_only_on_the_files_not_their_order():
    files = [DataFile(f"f{i}", (i + 1) * 3 * MIB) for i in range(7)]
    assert plan_tasks(files, 16 * MIB, 2) == plan_tasks(list(reversed(files)), 16 * MIB, 2)


def test_every_row_group_is_owned_by_exactly_one_range_whatever_the_split(tmp_path):
    path = tmp_path / "groups.parquet"
    values = np.arange(10_000, dtype=np.float64)
    pq.write_table(pa.table({"x": values, "s": [f"v{i % 97}" for i in range(10_000)]}), path, row_group_size=1_000)
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups == 10
    size = path.stat().st_size
    for split in (1, 777, 5_000, 20_000, size):
        owners = [owned_row_groups(metadata, start, split) for start in range(0, size, split)]
        assert sorted(g for o in owners for g in o) == list(range(10)), split


def test_a_task_reads_its_columns_in_sparks_types_with_partition_values_and_missing_columns(tmp_path):
    path = tmp_path / "event_date=2026-11-04" / "part.parquet"
    path.parent.mkdir()
    table = pa.table({
        "amount": pa.array([1.5, None, float("nan")], pa.float32()),
        "n": pa.array([1, None, 3], pa.int32()),
        "day": pa.array([dt.date(2026, 11, 4), dt.date(2026, 11, 5), None], pa.date32()),
    })
    pq.write_table(table, path)
    wanted = pa.schema([
        ("amount", pa.float64()), ("n", pa.int64()), ("event_date", pa.date32()), ("added_later", pa.string()),
    ])
    task = [{"uri": str(path), "start": 0, "length": path.stat().st_size, "partition": [["event_date", "2026-11-04"]]}]
    (batch,) = read_task(task, wanted, None, 1_000)
    assert batch.schema == wanted
    assert batch.column("amount").to_pylist()[:2] == [1.5, None] and np.isnan(batch.column("amount")[2].as_py())
    assert batch.column("n").to_pylist() == [1, None, 3]
    assert batch.column("event_date").to_pylist() == [dt.date(2026, 11, 4)] * 3
    assert batch.column("added_later").null_count == 3
    # A date inside the files: only its rows (a null date is no match).
    (only,) = read_task(task, wanted, ("day", "2026-11-04"), 1_000)
    assert only.column("n").to_pylist() == [1]
    assert list(read_task(task, wanted, ("day", "2026-11-30"), 1_000)) == []


DAY = dt.date(2026, 11, 4)
MLP_NAME = "filestest"
AE_NAME = "filestest_ae"
# Metrics that measure the run, not its rows.
TIMINGS = {"scoring_seconds", "duration_seconds"}


def _with_read_path(settings, read_path: str):
    import dataclasses

    return dataclasses.replace(settings, score=dataclasses.replace(settings.score, read_path=read_path))


@pytest.fixture(scope="module")
def files_settings(settings, tmp_path_factory):
    """A lake of this module's own: its nights must not show in the runs the suite's other modules
    query by date (the README's SQL examples read every model of a night)."""
    return settings.with_overrides({"lake.root": str(tmp_path_factory.mktemp("fileslake")), "lake.database": "filestest"})


@pytest.fixture(scope="module")
def file_bundles(spark, files_settings, transactions):
    """A primary mlp and a shadow autoencoder (test-fixture bundles), registered for this module."""
    settings = files_settings
    from lakescore import registry
    from lakescore.features import TRANSACTIONS_V1
    from scoring_bundles import AUTOENCODER, build_test_bundle

    train = spark.table(transactions).where(F.col(S.EVENT_DATE) < F.lit(DAY)).toPandas()
    for name, kind in ((MLP_NAME, "mlp"), (AE_NAME, AUTOENCODER)):
        version = registry.next_version(spark, settings, name)
        directory = registry.bundle_dir(settings, name, version)
        bundle = build_test_bundle(
            directory, train, train[S.IS_ANOMALY].to_numpy(), TRANSACTIONS_V1, name=name, version=version, kind=kind
        )
        registry.register_bundle(spark, settings, bundle, directory)


def _night(spark, settings, source: str, day: dt.date = DAY, shadow: str | None = AE_NAME):
    """(summaries, flagged rows, metrics) of one run; rows and metrics without what differs from run to run."""
    summaries = run_nightly(spark, settings, day, source=source, model=MLP_NAME, shadow=shadow)
    run_ids = [s.run_id for s in summaries]
    flagged = (
        spark.table(settings.table(S.FLAGGED))
        .where(F.col(S.RUN_ID).isin(run_ids))
        .drop(S.RUN_ID, S.SCORED_AT)
        .toPandas()
    )
    flagged[S.REASONS] = flagged[S.REASONS].map(
        lambda reasons: [tuple((r.asDict() if hasattr(r, "asDict") else dict(r)).items()) for r in reasons]
    )
    flagged = flagged.sort_values([S.MODEL_NAME, S.RECORD_KEY]).reset_index(drop=True)
    metrics = (
        spark.read.format("delta").load(str(lake.table_path(settings, S.RUN_METRICS)))
        .where(F.col(S.RUN_ID).isin(run_ids) & ~F.col(S.METRIC).isin(sorted(TIMINGS)))
        .select(S.MODEL_NAME, S.SCOPE, S.FEATURE, S.METRIC, S.VALUE)
        .toPandas()
        .sort_values([S.MODEL_NAME, S.SCOPE, S.FEATURE, S.METRIC], na_position="first")
        .reset_index(drop=True)
    )
    return summaries, flagged, metrics


def _same_nights(files_night, udf_night) -> None:
    (files_summaries, files_flagged, files_metrics), (udf_summaries, udf_flagged, udf_metrics) = files_night, udf_night
    assert [s.read_path for s in files_summaries] == [FILES_PATH] * len(files_summaries)
    assert [s.read_path for s in udf_summaries] == [UDF_PATH] * len(udf_summaries)
    assert [(s.rows_read, s.rows_scored, s.rows_flagged) for s in files_summaries] == [
        (s.rows_read, s.rows_scored, s.rows_flagged) for s in udf_summaries
    ]
    assert len(files_flagged) > 0
    # Scores bit for bit, reasons and every copied value: the same frames.
    pd.testing.assert_frame_equal(files_flagged, udf_flagged, check_exact=True)
    pd.testing.assert_frame_equal(files_metrics, udf_metrics, check_exact=True)


def test_the_files_path_writes_the_udf_paths_flagged_rows_and_metrics_bit_for_bit_with_a_shadow(
    spark, files_settings, transactions, file_bundles
):
    files_night = _night(spark, _with_read_path(files_settings, "files"), transactions)
    udf_night = _night(spark, _with_read_path(files_settings, "udf"), transactions)
    _same_nights(files_night, udf_night)
    assert {s.model.split("@")[0] for s in files_night[0]} == {MLP_NAME, AE_NAME}


def _dirty_day(spark, transactions) -> pd.DataFrame:
    """DAY's rows with nulls, NaN and an unknown category, in two days' dates."""
    frame = spark.table(transactions).where(F.col(S.EVENT_DATE) >= F.lit(DAY - dt.timedelta(days=1))).toPandas()
    frame.loc[frame.index[::7], S.AMOUNT] = np.nan
    frame.loc[frame.index[1::11], S.AMOUNT] = None
    frame.loc[frame.index[2::13], S.MERCHANT_CATEGORY] = "never_seen"
    frame.loc[frame.index[3::17], S.COUNTRY] = None
    frame[S.EVENT_TS] = frame[S.EVENT_TS].dt.tz_localize("UTC").astype("datetime64[us, UTC]")
    return frame


def test_a_parquet_source_with_the_date_inside_its_files_scores_the_same_on_both_paths(
    spark, files_settings, transactions, file_bundles, tmp_path
):
    # Not partitioned: the date column is in the files, filtered by the task (nulls, NaN, an
    # unknown category and an empty file among them).
    path = tmp_path / "dirty"
    path.mkdir()
    frame = _dirty_day(spark, transactions)
    half = len(frame) // 2
    pq.write_table(pa.Table.from_pandas(frame.iloc[:half], preserve_index=False), path / "a.parquet", row_group_size=500)
    pq.write_table(pa.Table.from_pandas(frame.iloc[half:], preserve_index=False), path / "b.parquet", row_group_size=700)
    pq.write_table(pa.Table.from_pandas(frame.iloc[:0], preserve_index=False), path / "empty.parquet")
    files_night = _night(spark, _with_read_path(files_settings, "files"), str(path), shadow=None)
    udf_night = _night(spark, _with_read_path(files_settings, "udf"), str(path), shadow=None)
    _same_nights(files_night, udf_night)
    assert files_night[0][0].rows_read == int((frame[S.EVENT_DATE] == DAY).sum())


def _delta_copy(spark, transactions, path, properties: dict[str, str]) -> str:
    props = ", ".join(f"'{k}' = '{v}'" for k, v in properties.items())
    rows = spark.table(transactions).where(F.col(S.EVENT_DATE) == F.lit(DAY))
    spark.sql(
        f"CREATE TABLE delta.`{path}` USING delta PARTITIONED BY ({S.EVENT_DATE}) TBLPROPERTIES ({props}) "
        f"AS SELECT * FROM {transactions} WHERE {S.EVENT_DATE} = DATE'{DAY}'"
    )
    assert rows.count() > 0
    return str(path)


def test_deletion_vectors_send_the_run_to_the_udf_path_which_skips_the_deleted_rows(
    spark, files_settings, transactions, file_bundles, tmp_path, caplog
):
    path = _delta_copy(spark, transactions, tmp_path / "dv", {"delta.enableDeletionVectors": "true"})
    before = spark.read.format("delta").load(path).count()
    spark.sql(f"DELETE FROM delta.`{path}` WHERE {S.TRANSACTION_ID} % 3 = 0")
    assert spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()["numFiles"] >= 1
    kept = spark.read.format("delta").load(path).count()
    assert 0 < kept < before
    with caplog.at_level(logging.INFO, logger="pipelines.nightly"):
        summaries, flagged, _ = _night(spark, files_settings, path, shadow=None)
    assert summaries[0].read_path == UDF_PATH and summaries[0].rows_scored == kept
    assert any("deletion vectors" in r.getMessage() and "udf path" in r.getMessage() for r in caplog.records)
    assert not (flagged[S.RECORD_KEY].map(lambda k: int(k) % 3 == 0)).any()
    with pytest.raises(ConfigError, match="deletion vectors"):
        run_nightly(spark, _with_read_path(files_settings, "files"), DAY, source=path, model=MLP_NAME)


def test_column_mapping_sends_the_run_to_the_udf_path(spark, files_settings, transactions, file_bundles, tmp_path):
    path = _delta_copy(
        spark, transactions, tmp_path / "mapped",
        {"delta.columnMapping.mode": "name", "delta.minReaderVersion": "2", "delta.minWriterVersion": "5"},
    )
    spark.sql(f"ALTER TABLE delta.`{path}` RENAME COLUMN {S.COUNTRY} TO country_old")
    spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({S.COUNTRY} STRING)")
    summaries, _, _ = _night(spark, files_settings, path, shadow=None)
    assert summaries[0].read_path == UDF_PATH
    assert summaries[0].rows_scored == spark.read.format("delta").load(path).count()
