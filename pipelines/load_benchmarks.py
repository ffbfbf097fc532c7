"""The small real anomaly benchmarks that ship inside PyPI packages, written into the lake."""

from __future__ import annotations

from pyspark.sql import SparkSession

from lakescore import lake
from lakescore import schemas as S
from lakescore.config import Settings
from lakescore.datasets import BENCHMARKS


def run_load_benchmarks(spark: SparkSession, settings: Settings, names: list[str] | None = None) -> list:
    """Write each benchmark as a Delta table (overwriting it) and register it; return counts."""
    names = names or list(BENCHMARKS)
    for name in names:
        if name not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        frame = BENCHMARKS[name]()
        path = lake.table_path(settings, name)
        (
            spark.createDataFrame(frame)
            .write.format("delta")
            .mode("overwrite")
            .option("overwriteSchema", "true")
            .save(str(path))
        )
        lake.register_table(spark, settings, name, path, "delta")
    union = " UNION ALL ".join(
        f"SELECT '{n}' AS table_name, COUNT(*) AS rows, SUM(CAST({S.IS_ANOMALY} AS INT)) AS anomalies "
        f"FROM {settings.table(n)}"
        for n in names
    )
    return spark.sql(union).collect()
