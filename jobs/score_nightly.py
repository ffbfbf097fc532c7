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
model, role). `--catch-up` scores every date after the last complete run of (source, model) up to
yesterday (UTC), each its own run: what the schedules run, so that a night missed (the scheduler
down, the partition late) is scored by the next one; with no run yet, `--from` gives the first date.

Loud by default: a date partition that is missing, or holds fewer rows than score.min_rows or
score.min_fraction_of_median x the median of the slice's last score.median_window complete runs,
fails the run before anything is written (`--allow-empty` for a night that is legitimately
empty); so does a run whose models did not score exactly the rows it read.

Exit codes, distinct so that a scheduler can branch on them:
    0  every run committed
    1  internal error (a bug, or a failure of Spark itself): the traceback is printed
    2  bad input or configuration: options, settings, an unknown model, missing or mistyped columns
    3  source or partition missing, or short of the row floors: wait for the data, then re-run
    4  verification failed: a bundle's checksums, or rows read != rows scored; nothing was written
    5  a concurrent run of the same slice published first (Delta refused this run's commit): its
       night stands whole, this run withdrew its rows; re-run the date only to replace that night

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
from pipelines.nightly import VerificationError, run_nightly

EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_SOURCE = 3
EXIT_VERIFICATION = 4
EXIT_CONFLICT = 5


def exit_code(exc: BaseException) -> int | None:
    """The documented exit code of a run that raised `exc`; None: an internal error (exit 1,
    with its traceback)."""
    # Most specific first: PartitionError is a SourceError, which is a ValueError.
    for kinds, code in (
        (lake.delta_conflicts(), EXIT_CONFLICT),
        ((BundleError, VerificationError), EXIT_VERIFICATION),
        ((lake.SourceError,), EXIT_SOURCE),
        ((RegistryError, ValueError), EXIT_BAD_INPUT),
    ):
        if isinstance(exc, kinds):
            return code
    return None


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
    catch_up: bool = typer.Option(
        False,
        "--catch-up",
        help="Score every date after the last complete run of this source and model up to yesterday (UTC), each its own run; "
        "with no run yet, --from (or --run-date) gives the first date.",
    ),
    allow_empty: bool = typer.Option(
        False, "--allow-empty", help="Score a date whose partition is missing or below the row floors (a legitimately empty night)."
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
        if catch_up and last:
            raise ValueError("--catch-up runs up to yesterday by itself; leave out --to")
        if (first is None) != (last is None) and not catch_up:
            raise ValueError("a range needs both --from and --to")
        start = dt.date.fromisoformat(run_date or first) if (run_date or first) else None
        end = dt.date.fromisoformat(last) if last else None
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    spark = lake_session(settings, "lakescore-score")
    try:
        summaries = run_nightly(
            spark, settings, start, last_date=end, bundle_path=bundle, shadow=shadow, allow_empty=allow_empty,
            catch_up=catch_up,
        )
    except Exception as exc:  # noqa: BLE001 - mapped to the documented exit codes; others re-raised
        code = exit_code(exc)
        if code is None:
            raise
        message = str(exc)
        if code == EXIT_CONFLICT:
            message = (
                "another run committed to the same tables first, so this run's commit was refused and it wrote "
                f"nothing visible; re-run the date (Delta: {message.splitlines()[0]})"
            )
        fail(message, code)
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
