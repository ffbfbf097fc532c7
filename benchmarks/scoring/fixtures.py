"""The scoring benchmark's lake: one generated day of transactions, spread over enough files for
every core, and the registered model `bench` that every workload scores with."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.library import run_generate
from lakescore.manifest import Architecture, FeatureSetSpec, Manifest, PreprocessingRecord, ScoreDefinition, ThresholdRecord
from lakescore import lake, registry
from lakescore import schemas as S
from lakescore.bundle import Bundle, write_bundle
from lakescore.config import Settings, load_settings
from lakescore.drift import reference_histogram
from lakescore.features import TRANSACTIONS_V1
from lakescore.models import build_model, score_batch
from lakescore.preprocess import Preprocessing
from lakescore.spark import default_spark_conf

DAY = dt.date(2026, 11, 27)
MODEL = "bench"
ALERT_RATE = 0.005
SAMPLE_ROWS = 100_000


def benchmark_settings(root: Path, rows: int) -> Settings:
    """Settings of a lake at `root` with one generated day of `rows` rows."""
    return load_settings(
        overrides={
            "lake.root": str(root),
            "generate.days": 1,
            "generate.rows_per_day": rows,
            "generate.accounts": max(1000, rows // 20),
            "generate.start_date": DAY.isoformat(),
            # Several files, so both cores get scan tasks.
            "generate.files_per_day": 4,
            "spark.shuffle_partitions": max(4, rows // 500_000),
            # The transactions spec's account_id is sensitive: flagged holds its keyed hash, as
            # in production (a benchmark's key, not a secret).
            "score.hash_key": "lakescore-benchmark",
        },
        environ={},
    )


def with_driver_java_options(settings: Settings, options: str) -> Settings:
    """`settings` with `options` added to the JVM options lakescore gives a local session it launches."""
    key = "spark.driver.extraJavaOptions"
    java_options = f"{default_spark_conf(settings)[key]} {options}"
    return dataclasses.replace(settings, spark=dataclasses.replace(settings.spark, conf={**settings.spark.conf, key: java_options}))


def prepare_lake(spark, settings: Settings) -> int:
    """Generate the table and register the model if the lake lacks them; return the day's rows."""
    table = settings.table(settings.generate.table)
    if not spark.catalog.tableExists(table):
        started = time.perf_counter()
        run_generate(spark, settings)
        print(f"generated {table}: {settings.generate.rows_per_day:,} rows in {time.perf_counter() - started:.0f}s", flush=True)
    _spread_day(spark, settings, table)
    day = read_day(spark, settings)
    rows = day.count()
    bundle = _bench_bundle(spark, settings, day)
    print(f"table {table}: {rows:,} rows on {DAY}, {spark.sparkContext.defaultParallelism} cores, "
          f"arrow batch {settings.spark.arrow_batch_size:,}; model {bundle.label} ({bundle.kind}, "
          f"{len(TRANSACTIONS_V1.features)} features, {len(TRANSACTIONS_V1.inputs)} input columns)", flush=True)
    return rows


def read_day(spark, settings: Settings):
    """The source table's rows of DAY."""
    source = lake.resolve_source(spark, settings, settings.table(settings.generate.table))
    return lake.read_source(spark, source).where(f"{S.EVENT_DATE} = DATE'{DAY}'")


def parquet_files(path: str) -> list[str]:
    """The live Parquet files of DAY's partition of the Delta table at `path`."""
    from deltalake import DeltaTable

    table = DeltaTable(path)
    # The live files of the day's partition (files the log has removed are not listed).
    return [u.removeprefix("file://") for u in table.file_uris() if f"/{S.EVENT_DATE}={DAY.isoformat()}/" in u]


def _spread_day(spark, settings: Settings, table: str) -> None:
    """Rewrite the day as 4 files per core if it has fewer: a Parquet file of one row group is
    one scan task, and the generator's day can land in a single file (its `files_per_day` hash
    partitioning can put every key in one partition), which would score on one core only."""
    files = parquet_files(str(lake.table_path(settings, settings.generate.table)))
    wanted = 4 * spark.sparkContext.defaultParallelism
    if len(files) >= wanted:
        return
    day = spark.table(table).where(f"{S.EVENT_DATE} = DATE'{DAY}'")
    lake.write_date_partitions(day.repartition(wanted), lake.table_path(settings, settings.generate.table), "delta", S.EVENT_DATE, DAY, DAY)
    print(f"rewrote {DAY} as {wanted} files (it had {len(files)})", flush=True)


def _bench_bundle(spark, settings: Settings, day) -> Bundle:
    """The registered champion `bench`, trained here on a sample if the lake has none: an MLP
    21-64-32-1 trained for a few full-batch epochs (enough for realistic scores and a 0.5% alert
    rate; its accuracy is not the point)."""
    if registry.list_models(spark, settings, MODEL):
        return registry.load_registered(spark, settings, MODEL)[1]
    sample = day.limit(SAMPLE_ROWS).toPandas()
    preprocessing = _fit_preprocessing(sample)
    x, _ = preprocessing.apply(TRANSACTIONS_V1.transform(sample))
    y = torch.from_numpy(sample[S.IS_ANOMALY].to_numpy(dtype=np.float32))
    architecture = {"kind": "mlp", "n_features": x.shape[1], "hidden": [64, 32], "dropout": 0.0}
    torch.manual_seed(0)
    model = build_model(architecture)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt = torch.from_numpy(x)
    for _ in range(30):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(xt), y, pos_weight=torch.tensor(20.0)).backward()
        optimiser.step()
    model.eval()
    scores = score_batch(model, "mlp", x)
    threshold = float(np.quantile(scores, 1.0 - ALERT_RATE))
    manifest = Manifest(
        name=MODEL,
        version=1,
        kind="mlp",
        architecture=Architecture.from_json(architecture),
        feature_set=FeatureSetSpec.of(TRANSACTIONS_V1),
        preprocessing=PreprocessingRecord(preprocessing),
        score=ScoreDefinition.for_kind("mlp"),
        threshold=ThresholdRecord("alert_rate", ALERT_RATE, threshold),
        note="benchmark model (benchmarks/scoring)",
    )
    reference = {
        "features": {f: reference_histogram(x[:, i]) for i, f in enumerate(TRANSACTIONS_V1.features)},
        "score": reference_histogram(scores),
        "rows": len(x),
    }
    directory = registry.bundle_dir(settings, MODEL, 1)
    bundle = write_bundle(directory, manifest, model.state_dict(), reference)
    registry.register_bundle(spark, settings, bundle, directory)
    return bundle


def _fit_preprocessing(sample) -> Preprocessing:
    """Imputation, clipping (0.1% and 99.9% quantiles) and scaling from the sample's features."""
    raw = TRANSACTIONS_V1.transform(sample).astype(np.float64)
    raw[~np.isfinite(raw)] = np.nan
    with np.errstate(all="ignore"):
        return Preprocessing.from_statistics(
            TRANSACTIONS_V1.features, np.nanmedian(raw, 0), np.nanquantile(raw, 0.001, 0),
            np.nanquantile(raw, 0.999, 0), np.nanmean(raw, 0), np.nanstd(raw, 0),
        )
