"""The `lakescore` command: one subcommand per job, each with --help.

Each subcommand runs the same code as its spark-submit script in jobs/, in this process, on the
embedded default (or wherever --set spark.master / PYSPARK_SUBMIT_ARGS point it).
"""

from __future__ import annotations

import typer

from jobs.generate_transactions import generate
from jobs.load_benchmarks import load_benchmarks
from jobs.sql import sql

app = typer.Typer(
    help="Anomaly detection at data-lake scale: generate, train, score, query, retrain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("generate")(generate)
app.command("load-benchmarks")(load_benchmarks)
app.command("sql")(sql)


if __name__ == "__main__":
    app()
