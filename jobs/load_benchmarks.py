"""Write the small real anomaly benchmarks that ship inside PyPI packages into the lake.

    spark-submit --jars "$(ls .jars/*.jar | paste -sd,)" jobs/load_benchmarks.py

or `lakescore load-benchmarks`. Writes `lakescore.shuttle` (river's Statlog Shuttle, 49,097
rows) and `lakescore.breast_cancer` (scikit-learn's, malignant = anomaly) as Delta tables of
the same shape as any undated source: `record_id`, numeric features, `is_anomaly`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, lake_session, print_rows, setup
from pipelines.load_benchmarks import run_load_benchmarks


def load_benchmarks(
    name: Optional[list[str]] = typer.Option(None, "--name", help="shuttle and/or breast_cancer (default: both)."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Write the bundled real benchmarks (river Shuttle, sklearn breast cancer) as lake tables."""
    settings = setup(config, set_, None, verbose)
    spark = lake_session(settings, "lakescore-load-benchmarks")
    try:
        print_rows(run_load_benchmarks(spark, settings, name), ["table_name", "rows", "anomalies"])
    finally:
        spark.stop()


def main() -> None:
    typer.run(load_benchmarks)


if __name__ == "__main__":
    main()
