"""What every entry point shares: --config/--set options, logging, loading settings."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from pyspark.sql import SparkSession

from lakescore.config import ConfigError, Settings, load_settings
from lakescore.catalog import CatalogMismatch, check_catalog
from lakescore.metastore import MetastoreError
from lakescore.spark import build_spark_session

ConfigOption = typer.Option(
    None, "--config", "-c", help="TOML settings file (default: $LAKESCORE_CONFIG, then ./lakescore.toml)."
)
SetOption = typer.Option(
    None,
    "--set",
    "-s",
    help="Override one setting, e.g. --set lake.root=/data/lake --set train.epochs=5 (repeatable).",
)
VerboseOption = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level (Spark's JVM at INFO).")


def parse_overrides(pairs: Optional[list[str]]) -> dict[str, str]:
    """['a.b=1', ...] -> {'a.b': '1'}; a pair without '=' is a ConfigError."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {pair!r} must look like section.key=value, e.g. train.epochs=5")
        overrides[key.strip()] = value.strip()
    return overrides


def setup(config: Optional[Path], pairs: Optional[list[str]], extra: dict | None = None, verbose: bool = False) -> Settings:
    """Configure logging and load settings; exit 2 with the message on a configuration error."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # py4j and Ray are chatty at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        overrides = parse_overrides(pairs)
        overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
        if verbose:
            overrides.setdefault("spark.log_level", "INFO")
        return load_settings(config, overrides)
    except ConfigError as exc:
        fail(f"configuration error: {exc}")


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print a one-line error for people and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def print_rows(rows, columns: list[str]) -> None:
    """Print Spark Rows as an aligned text table."""
    data = [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(d[i]) for d in data]) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    typer.echo("  ".join("-" * w for w in widths))
    for d in data:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(d, widths)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "NULL" if value is None else str(value)


def lake_session(settings: Settings, app_name: str) -> SparkSession:
    """The Spark session of a job that reads or writes the lake, once the catalog is checked to
    agree with `lake.root` (lakescore.catalog): on a mismatch the job stops here, before it reads
    or writes anything, with the message naming the table, both locations and the fix."""
    try:
        spark = build_spark_session(settings, app_name=app_name)
    except MetastoreError as exc:
        fail(str(exc))
    try:
        check_catalog(spark, settings)
    except CatalogMismatch as exc:
        spark.stop()
        fail(str(exc))
    return spark


def training_job_session(settings: Settings, app_name: str, verbose: bool) -> SparkSession:
    """The Spark session of a job that trains with Ray (train, retrain): Ray's own loggers at
    WARNING and Spark's at ERROR, unless --verbose."""
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    spark = lake_session(settings, app_name)
    if not verbose:
        spark.sparkContext.setLogLevel("ERROR")
    return spark
