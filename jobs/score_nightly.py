"""Nightly scoring: score one date partition of a source table with a registered model, write the
flagged rows and the run's metrics to the lake as Delta tables.

Embedded default (this machine; `make setup` made .venv and .jars):

    PYSPARK_PYTHON=$PWD/.venv/bin/python .venv/bin/spark-submit --driver-memory 4g \\
      --jars "$(ls .jars/*.jar | paste -sd,)" \\
      jobs/score_nightly.py --run-date 2026-11-27

(in local mode the driver is the executor: spark-submit's default 1g heap keeps the GC busy;
`lakescore score` starts its own JVM with 4g).

or `lakescore score --run-date 2026-11-27`. A cluster whose machines do not have lakescore
installed gets the code as a zip (`lakescore package` -> dist/lakescore-0.1.0.zip), the Delta jars
from Maven (or --jars), a Python with numpy/pandas/pyarrow/torch/safetensors on every executor,
and the shared metastore and lake root:

    spark-submit --master spark://HOST:7077 \\
      --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
      --py-files dist/lakescore-0.1.0.zip \\
      --conf spark.pyspark.python=/opt/lakescore-env/bin/python \\
      --conf spark.hadoop.javax.jdo.option.ConnectionURL='jdbc:postgresql://metastore/hive' \\
      jobs/score_nightly.py --run-date 2026-11-27 --model transactions --table transactions \\
      --set lake.root=/shared/lake

Options: `--table` a catalog table or a path (Delta or Parquet, detected); `--model name` (its
champion) or `name@version`, or `--bundle DIR` for a bundle outside the registry; `--shadow
name@version` a challenger scored in the same pass over the rows, written as its own slice
(scoring_role `shadow`); `--run-date D` (default: yesterday, UTC) or `--from A --to B`, which runs
each date as its own run. A run replaces only its own slice of the tables: (run_date, source,
model, role).

What a run does and writes, step by step: pipelines/nightly.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, VerboseOption, fail, lake_session, print_rows, setup
from lakescore import lake
from lakescore.bundle import BundleError
from lakescore.registry import RegistryError
from pipelines.nightly import run_nightly


def score(
    run_date: Optional[str] = typer.Option(None, "--run-date", help="Date partition to score, YYYY-MM-DD (default: yesterday, UTC)."),
    first: Optional[str] = typer.Option(None, "--from", help="First date of a range (each date is its own run)."),
    last: Optional[str] = typer.Option(None, "--to", help="Last date of a range."),
    table: Optional[str] = typer.Option(None, help="Catalog table or path, Delta or Parquet (default: score.table)."),
    model: Optional[str] = typer.Option(None, help="`name` (its champion) or `name@version` (default: score.model)."),
    bundle: Optional[Path] = typer.Option(None, help="Score with this bundle directory instead of the registry."),
    shadow: Optional[str] = typer.Option(
        None, help="`name@version` of a challenger to score in the same pass, written as scoring_role 'shadow'."
    ),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Score a date partition with the champion model (and a shadow challenger); write lakescore.flagged and lakescore.run_metrics.

    \f
    Each parameter is one command-line option (typer reads them from this signature), hence more than seven.
    """
    settings = setup(config, set_, {"score.table": table, "score.model": model}, verbose)
    try:
        if run_date and (first or last):
            raise ValueError("give either --run-date or --from/--to, not both")
        if (first is None) != (last is None):
            raise ValueError("a range needs both --from and --to")
        start = dt.date.fromisoformat(run_date or first) if (run_date or first) else None
        end = dt.date.fromisoformat(last) if last else None
    except ValueError as exc:
        fail(str(exc))
    spark = lake_session(settings, "lakescore-score")
    try:
        summaries = run_nightly(spark, settings, start, last_date=end, bundle_path=bundle, shadow=shadow)
    except (BundleError, RegistryError, lake.SourceError, ValueError) as exc:
        fail(str(exc))
    finally:
        spark.stop()
    print_rows(
        [
            {
                "run_date": s.run_date,
                "run_id": s.run_id,
                "model": s.model,
                "role": s.scoring_role,
                "rows": s.rows_read,
                "flagged": s.rows_flagged,
                "flag_rate": s.rows_flagged / s.rows_read if s.rows_read else None,
                "seconds": s.duration_seconds,
                "rows_per_s": s.rows_read / s.scoring_seconds if s.scoring_seconds else None,
            }
            for s in summaries
        ],
        ["run_date", "run_id", "model", "role", "rows", "flagged", "flag_rate", "seconds", "rows_per_s"],
    )


def main() -> None:
    typer.run(score)


if __name__ == "__main__":
    main()
