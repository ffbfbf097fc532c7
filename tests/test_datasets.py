"""The real benchmarks shipped inside PyPI packages, written to the lake like any source."""

import pytest

from lakescore import schemas as S
from lakescore.datasets import load_breast_cancer, load_shuttle


def test_shuttle_has_the_published_shape_and_anomaly_rate():
    frame = load_shuttle()
    assert len(frame) == 49_097
    assert [c for c in frame.columns if c not in (S.RECORD_ID, S.IS_ANOMALY)] == [f"f{i}" for i in range(1, 10)]
    assert frame[S.IS_ANOMALY].mean() == pytest.approx(0.0715, abs=0.0005)
    assert frame[S.RECORD_ID].is_unique


def test_breast_cancer_marks_the_212_malignant_tumours_as_anomalies():
    frame = load_breast_cancer()
    assert len(frame) == 569 and frame[S.IS_ANOMALY].sum() == 212
    assert "mean_radius" in frame.columns and frame.shape[1] == 32


def test_benchmarks_land_in_the_catalog_as_delta_tables(spark, settings):
    from pipelines.load_benchmarks import run_load_benchmarks

    counts = {r["table_name"]: (r["rows"], r["anomalies"]) for r in run_load_benchmarks(spark, settings, ["breast_cancer"])}
    assert counts == {"breast_cancer": (569, 212)}
    detail = spark.sql(f"DESCRIBE DETAIL {settings.table('breast_cancer')}").collect()[0]
    assert detail["format"] == "delta"
