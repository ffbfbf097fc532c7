"""TEST HELPER: a process that holds a small lake, serves it with `lakescore serve-sql`'s Thrift
server, and runs lakescore's own work (a nightly run, a `lakescore sql` query) in the same JVM
when the test asks.

With the embedded Derby metastore one process holds the catalog, so the nightly run that commits
while analysts query must run here, beside the server. Run as

    python tests/sql_server_host.py '{"lake.root": ..., "sql.port": ...}'

It prepares the lake (3 generated days, a test bundle registered as SERVED_MODEL, trained on the
first, which scores the second: the flagged view exists from a night's publish on), starts the server, then speaks JSON lines: commands on stdin, events on stdout, each
event line prefixed with EVENT (the JVM may write to stdout too).

Commands: {"op": "nightly", "day": "YYYY-MM-DD", "hold": true} runs run_nightly in a thread,
pausing after its flagged rows are written and before they are published until {"op": "release"};
{"op": "sql", "id": ..., "query": ...} runs pipelines.sql.run_sql (what `lakescore sql` runs) in a
thread; {"op": "stop"} stops the server and exits.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scoring_bundles, a test fixture module

EVENT = "@@sql-server-host "
SERVED_MODEL = "servetest"
FIRST_NIGHT = dt.date(2026, 11, 2)  # scored while preparing (generate.start_date + 1 day)
NIGHT = dt.date(2026, 11, 3)  # the night the tests score


def took(step: str, since: float) -> float:
    print(f"sql_server_host: {step} took {time.monotonic() - since:.1f} s", file=sys.stderr, flush=True)
    return time.monotonic()


def emit(**event) -> None:
    print(EVENT + json.dumps(event, default=str), flush=True)


def prepare_lake(spark, settings) -> int:
    """Generate the days, register a test bundle trained on the first, score FIRST_NIGHT; return its flagged count."""
    from pyspark.sql import functions as F

    from lakescore import registry
    from lakescore import schemas as S
    from lakescore.features import TRANSACTIONS_V1
    from pipelines.generate import run_generate
    from pipelines.nightly import run_nightly
    from scoring_bundles import build_test_bundle

    t = time.monotonic()
    run_generate(spark, settings)
    t = took("generate", t)
    train = spark.table(settings.table(S.TRANSACTIONS)).where(F.col(S.EVENT_DATE) < F.lit(FIRST_NIGHT)).toPandas()
    version = registry.next_version(spark, settings, SERVED_MODEL)
    directory = registry.bundle_dir(settings, SERVED_MODEL, version)
    bundle = build_test_bundle(
        directory, train, train[S.IS_ANOMALY].to_numpy(), TRANSACTIONS_V1, name=SERVED_MODEL, version=version, epochs=30
    )
    registry.register_bundle(spark, settings, bundle, directory)
    t = took("bundle", t)
    (summary,) = run_nightly(spark, settings, FIRST_NIGHT, model=SERVED_MODEL)
    took("first night", t)
    return summary.rows_flagged


def main(overrides: dict[str, str]) -> None:
    from pyspark.sql import functions as F

    from lakescore import lake
    from lakescore import schemas as S
    from lakescore.config import load_settings
    from lakescore.sql_server import build_server_session, start_thrift_server
    from pipelines.nightly import FLAGGED_WRITTEN, run_nightly
    from pipelines.sql import run_sql

    t = time.monotonic()
    # The password only from the environment, as `lakescore serve-sql` takes it; nothing else from there.
    settings = load_settings(overrides=overrides, environ={"LAKESCORE_SQL_PASSWORD": os.environ["LAKESCORE_SQL_PASSWORD"]})
    spark = build_server_session(settings)
    spark.sparkContext.setLogLevel("ERROR")
    t = took("session", t)
    first_night = prepare_lake(spark, settings)
    t = time.monotonic()
    server = start_thrift_server(spark, settings)
    took("thrift server", t)
    emit(event="ready", url=server.jdbc_url, first_night_flagged=first_night)
    release = threading.Event()

    def hold_before_publishing(boundary: str) -> None:
        if boundary == FLAGGED_WRITTEN:
            # The night's rows as written into flagged_all's files (by path: the catalog may not
            # know the table before its first publish).
            written = (
                spark.read.format("delta").load(str(lake.table_path(settings, S.FLAGGED_ALL)))
                .where(F.col(S.RUN_DATE) == F.lit(held_day[0]))
                .count()
            )
            emit(event="held", written=written)
            release.wait(timeout=300)

    held_day: list[dt.date] = []

    def nightly(day: str, hold: bool) -> None:
        held_day[:] = [dt.date.fromisoformat(day)]
        started = time.monotonic()
        try:
            (summary,) = run_nightly(
                spark, settings, dt.date.fromisoformat(day), model=SERVED_MODEL,
                boundary=hold_before_publishing if hold else None,
            )
            took("nightly", started)
            emit(event="nightly_done", rows_flagged=summary.rows_flagged, run_id=summary.run_id)
        except Exception:
            emit(event="nightly_failed", error=traceback.format_exc())

    def sql(request_id: str, query: str) -> None:
        try:
            columns, rows = run_sql(spark, settings, query)
            emit(event="sql", id=request_id, columns=columns, rows=[list(r) for r in rows])
        except Exception as exc:
            emit(event="sql_failed", id=request_id, error=str(exc))

    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "nightly":
            threading.Thread(target=nightly, args=(command["day"], command.get("hold", False)), daemon=True).start()
        elif command["op"] == "release":
            release.set()
        elif command["op"] == "sql":
            threading.Thread(target=sql, args=(command["id"], command["query"]), daemon=True).start()
        elif command["op"] == "stop":
            break
    server.stop()
    spark.stop()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
