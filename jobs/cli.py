"""The `lakescore` command: one subcommand per job, each with --help.

Each subcommand runs the same code as its spark-submit script in jobs/, in this process, on the
embedded default (or wherever --set spark.master / PYSPARK_SUBMIT_ARGS point it).
"""

from __future__ import annotations

import typer

from jobs.catalog import catalog_app
from jobs.feedback import feedback
from jobs.generate_transactions import generate
from jobs.load_benchmarks import load_benchmarks
from jobs.metastore import metastore_app
from jobs.models import models, promote_command
from jobs.package import package
from jobs.report import report
from jobs.retrain import retrain
from jobs.score_nightly import score
from jobs.serve_sql import serve_sql
from jobs.spec import spec_app
from jobs.sql import sql
from jobs.train import train
from jobs.upgrade_tables import upgrade_tables_command

app = typer.Typer(
    help="Anomaly detection at data-lake scale: generate, train, score, report, query, retrain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("generate")(generate)
app.command("load-benchmarks")(load_benchmarks)
app.command("sql")(sql)
app.command("serve-sql")(serve_sql)
app.command("train")(train)
app.command("package")(package)
app.command("score")(score)
app.command("feedback")(feedback)
app.command("report")(report)
app.command("models")(models)
app.command("promote")(promote_command)
app.command("retrain")(retrain)
app.command("upgrade-tables")(upgrade_tables_command)
app.add_typer(catalog_app, name="catalog")
app.add_typer(metastore_app, name="metastore")
app.add_typer(spec_app, name="spec")


if __name__ == "__main__":
    app()
