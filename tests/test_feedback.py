"""Analyst feedback: checked, upserted in one commit, latest verdict wins, SQL inserts count too."""

import pytest

from pipelines.feedback import VerdictSource, run_feedback
from lakescore.feedback import FeedbackError, verdicts_for


def test_single_verdicts_and_files_land_and_the_latest_verdict_wins(spark, settings, tmp_path):
    run_feedback(spark, settings, VerdictSource(key="17", verdict="confirmed_anomaly", analyst="ana"), table="fb_t")
    csv = tmp_path / "verdicts.csv"
    csv.write_text("record_key,verdict,comment\n17,false_positive,called the customer\n 18 ,CONFIRMED_ANOMALY,\n")
    assert run_feedback(spark, settings, VerdictSource(file=csv), table="fb_t").recorded == 2
    assert verdicts_for(spark, settings, "fb_t") == {"17": False, "18": True}
    rows = spark.sql("SELECT * FROM lakescore.feedback WHERE source_table = 'lakescore.fb_t' AND record_key = '17'").collect()
    assert len(rows) == 1 and rows[0]["comment"] == "called the customer"


def test_a_verdict_inserted_with_sql_is_read_like_any_other(spark, settings):
    run_feedback(spark, settings, VerdictSource(key="1", verdict="false_positive"), table="fb_sql")
    spark.sql(
        "INSERT INTO lakescore.feedback VALUES "
        "('lakescore.fb_sql', '1', 'confirmed_anomaly', 'bo', 'second look', current_timestamp() + INTERVAL 1 SECOND)"
    )
    assert verdicts_for(spark, settings, "fb_sql") == {"1": True}


def test_a_batch_with_an_unknown_verdict_writes_nothing(spark, settings, tmp_path):
    from lakescore.feedback import ensure_feedback_table

    from delta.tables import DeltaTable

    feedback = DeltaTable.forPath(spark, ensure_feedback_table(spark, settings))
    before = feedback.history().count()
    csv = tmp_path / "bad.csv"
    csv.write_text("record_key,verdict\n1,confirmed_anomaly\n2,maybe\n")
    with pytest.raises(FeedbackError, match="unknown verdict.*'maybe'.*Nothing was written"):
        run_feedback(spark, settings, VerdictSource(file=csv), table="fb_bad")
    spark.createDataFrame([(1, "x")], "id INT, label STRING").createOrReplaceTempView("not_verdicts")
    with pytest.raises(FeedbackError, match="lack column"):
        run_feedback(spark, settings, VerdictSource(from_table="not_verdicts"), table="fb_bad")
    assert feedback.history().count() == before


def test_a_verdict_typo_inserted_with_sql_is_refused_by_the_table_and_nothing_is_written(spark, settings):
    from delta.tables import DeltaTable

    from lakescore.feedback import ensure_feedback_table

    feedback = DeltaTable.forPath(spark, ensure_feedback_table(spark, settings))
    before = feedback.toDF().count()
    with pytest.raises(Exception, match="verdict_known"):
        spark.sql(
            "INSERT INTO lakescore.feedback VALUES "
            "('lakescore.fb_typo', '1', 'confirmed_anomaly ', 'bo', NULL, current_timestamp()), "
            "('lakescore.fb_typo', '2', 'false_positive', 'bo', NULL, current_timestamp())"
        )
    assert feedback.toDF().count() == before
    assert verdicts_for(spark, settings, "fb_typo") == {}


def test_a_source_is_one_name_however_the_analyst_spells_it(spark, settings):
    run_feedback(spark, settings, VerdictSource(key="7", verdict="confirmed_anomaly"), table="Fb_Names")
    spark.sql(
        "INSERT INTO lakescore.feedback VALUES "
        "('fb_names', '8', 'false_positive', 'bo', NULL, current_timestamp()), "
        "(' LakeScore.FB_NAMES ', '9', 'confirmed_anomaly', 'bo', NULL, current_timestamp()), "
        "('other_table', '10', 'confirmed_anomaly', 'bo', NULL, current_timestamp())"
    )
    expected = {"7": True, "8": False, "9": True}
    assert verdicts_for(spark, settings, "fb_names") == expected
    assert verdicts_for(spark, settings, "lakescore.FB_Names") == expected


def test_a_path_source_is_named_by_its_absolute_path(spark, settings, tmp_path):
    source = tmp_path / "readings"
    run_feedback(spark, settings, VerdictSource(key="1", verdict="false_positive"), table=f"file:{source}/")
    assert verdicts_for(spark, settings, str(source)) == {"1": False}
