"""Scoring a table shaped nothing like transactions, with only its feature spec: the sensors table
(tests/sensor_rows.py: string key, spaced and mixed-case names, nanosecond timestamps, nulls in
every column, partitioned by `reading_day`), a hand-written spec and a suggested one."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lakescore import lake
from lakescore import schemas as S
from lakescore.spark import delta_jars
from lakescore.specs import load_spec, suggest_spec
from pipelines.nightly import run_nightly
from scoring_bundles import build_test_bundle
from sensor_rows import SPEC_PATH, START, write_sensors
from test_score_nightly import REPO, _job_flags, _subprocess_env
from udfs.flagged import source_view_name
from udfs.scorer import build_scoring_model, reason_value_mask, score_rows

DAY = (START + dt.timedelta(days=5)).date()  # the last of the table's days; the others train
BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_the_sensors_table_scores_with_spark_submit_from_its_spec_alone_and_reads_back_typed_in_sql(spark, settings, tmp_path):
    path = write_sensors(tmp_path / "sensors")
    source = lake.resolve_source(spark, settings, str(path))
    frame = lake.read_source(spark, source)
    train = frame.where(frame["reading_day"] < DAY).toPandas()
    day_rows = frame.where(frame["reading_day"] == DAY).toPandas()
    # The hand-written spec, with the site named sensitive: its clear value must never reach flagged.
    spec = dataclasses.replace(load_spec(SPEC_PATH), sensitive=("site",))
    feature_set = spec.fit(train).feature_set()
    bundle = build_test_bundle(
        tmp_path / "bundle", train, train["fault"].astype("boolean").fillna(False).to_numpy(dtype=float), feature_set, name="sensortest"
    )
    allow = ["--set", "score.allow_columns=Temp C,site,door open"]
    root = tmp_path / "lake"
    submit = subprocess.run(
        [str(BIN / "spark-submit"), "--master", "local[2]", "--jars", ",".join(delta_jars(settings.spark.jars_dir)),
         str(REPO / "jobs" / "score_nightly.py"), "--run-date", DAY.isoformat(), "--table", str(path),
         "--bundle", str(tmp_path / "bundle"), *_job_flags(settings, root), *allow],
        env=_subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert submit.returncode == 0, submit.stderr[-3000:]

    scoring = build_scoring_model(bundle)
    expected = score_rows(scoring, day_rows, top_k=3, shown=reason_value_mask(feature_set, {"site"}))
    flagged_ids = set(day_rows["reading_id"][expected.flagged])
    assert 0 < len(flagged_ids) < len(day_rows)
    # The job's typed view, in SQL from a new process; and flagged's every row as text.
    view = f"lakescore.{source_view_name(str(path))}"
    query = (
        "SELECT to_json(named_struct("
        f"'view', (SELECT collect_list(named_struct('record_key', record_key, 'reading_id', reading_id, "
        f"'temp', `Temp C`, 'temp_type', typeof(`Temp C`), 'site', site, 'reasons', reasons)) FROM {view} "
        f"WHERE run_date = DATE'{DAY}'), "
        "'flagged', (SELECT collect_list(to_json(struct(record, reasons))) FROM lakescore.flagged))) AS result"
    )
    cli = subprocess.run(
        [str(BIN / "lakescore"), "sql", query, *_job_flags(settings, root)],
        env=_subprocess_env(), capture_output=True, text=True, timeout=180,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    result = json.loads(cli.stdout.strip().splitlines()[-1])
    rows = result["view"]
    assert {r["record_key"] for r in rows} == flagged_ids
    assert all(r["reading_id"] == r["record_key"] and r["temp_type"] == "double" for r in rows)
    temps = dict(zip(day_rows["reading_id"], day_rows["Temp C"]))
    for r in rows:
        want = temps[r["record_key"]]
        assert ("temp" not in r and not np.isfinite(want)) or r["temp"] == pytest.approx(want, rel=1e-12)
    by_id = {r["record_key"]: r for r in rows}
    for i in np.flatnonzero(expected.flagged):
        got = by_id[day_rows["reading_id"].iloc[i]]["reasons"]
        assert [x["feature"] for x in got] == [x[S.REASON_FEATURE] for x in expected.reasons[i]]
        for reason in got:
            assert reason["feature"] in feature_set.features
            if reason["feature"].startswith("site="):
                assert reason.get("value") is None  # a feature of a sensitive column shows no value
    # The site is sensitive: flagged keeps its hash, never its text (reasons name the one-hot
    # feature, `site=Plant-7`, which is the spec's own wording, without a value).
    sites = set(day_rows["site"].dropna())
    assert all(len(r["site"]) == 64 for r in rows if "site" in r)
    records = [json.loads(t)["record"] for t in result["flagged"]]
    assert records and not any(site in value for record in records for value in record.values() if value for site in sites)

    # The suggested spec: no hand-written file at all.
    types = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
    suggestion = suggest_spec(types, train, name="sensors_suggested", partition_columns=["reading_day"])
    assert suggestion.spec.keys == ("reading_id",) and suggestion.spec.date_column == "reading_day"
    suggested = suggestion.spec.fit(train).feature_set()
    build_test_bundle(tmp_path / "suggested", train, train["fault"].astype("boolean").fillna(False).to_numpy(dtype=float), suggested,
                      name="sensortest_suggested")
    (other,) = run_nightly(spark, settings, DAY, source=str(path), bundle_path=tmp_path / "suggested")
    in_session = settings.table(source_view_name(other.source))
    keys = spark.sql(f"SELECT record_key FROM {in_session} WHERE model_name = 'sensortest_suggested'").collect()
    assert other.rows_read == len(day_rows) and len(keys) == other.rows_flagged > 0
    assert {r[0] for r in keys} <= set(day_rows["reading_id"])
