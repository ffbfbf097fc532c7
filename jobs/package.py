"""Build what spark-submit ships to a cluster whose machines do not have lakescore installed.

    lakescore package            # or: make dist
    # -> dist/lakescore-0.1.0.zip: the packages lakescore, udfs, pipelines and jobs, pure Python

then pass the zip with --py-files (Spark puts it on the driver's and every Python worker's path):

    spark-submit --master spark://HOST:7077 \\
      --py-files dist/lakescore-0.1.0.zip \\
      --jars "$(ls .jars/*.jar | paste -sd,)" \\
      --conf spark.pyspark.python=/opt/lakescore-env/bin/python \\
      jobs/score_nightly.py --run-date 2026-11-27 --model transactions --table transactions

The zip carries the project's own code only; `training` stays out (it runs on Ray, never in a Spark
executor). The third-party packages (numpy, pandas, pyarrow, torch, safetensors) must already be in
the executors' Python: a container image, a virtual environment at the same path on every node, or a
packed environment shipped with `--archives lakescore-env.tar.gz#environment`; cluster_configs/README.md
has the commands for each.

The zip is reproducible: same sources, same bytes (fixed timestamps, sorted entries), so its sha256
identifies the code a run used.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from jobs.common import ConfigOption, SetOption, fail, setup
from lakescore.spark import MissingJarsError, delta_jars
from pipelines.package import PackageError, build_pyfiles_zip, spark_submit_flags

def package(
    dest: Path = typer.Option(Path("dist"), help="Folder for the zip."),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Build dist/lakescore-<version>.zip (lakescore, udfs, pipelines, jobs) for spark-submit --py-files."""
    settings = setup(config, set_)
    try:
        built = build_pyfiles_zip(dest)
    except PackageError as exc:
        fail(str(exc))
    try:
        jars = delta_jars(settings.spark.jars_dir)
    except MissingJarsError:
        jars = []
    size_kib = built.path.stat().st_size / 1024
    typer.echo(f"{built.path}: {len(built.files)} files, {size_kib:.0f} KiB, sha256 {built.sha256}")
    typer.echo("spark-submit flags (add --master and spark.pyspark.python for your cluster):")
    typer.echo("  " + shlex.join(spark_submit_flags(built.path.resolve(), jars)))
    if not jars:
        typer.echo("  (no Delta jars in .jars/: run `make jars`, or use --packages io.delta:delta-spark_4.2_2.13:4.4.0)")


def main() -> None:
    typer.run(package)


if __name__ == "__main__":
    main()
