"""Faults a night must survive loudly: the row floors and the exit codes a scheduler branches on.

Plain Python (no Spark): the end-to-end faults run against the session's tables in
tests/test_score_nightly.py.
"""

from __future__ import annotations

import datetime as dt

import pytest

from lakescore.bundle import BundleError
from lakescore.config import ConfigError, ScoreSettings, load_settings
from lakescore.lake import SourceError
from lakescore.registry import RegistryError
from pipelines.nightly import PartitionError, VerificationError, check_row_floor, verify_rows_scored
from udfs.metrics import RunIdentity

WHERE = "lakescore.transactions partition event_date=2026-11-04"
RUN = RunIdentity(
    run_id="r1", run_date=dt.date(2026, 11, 4), model_name="tx", model_version=3, model_sha256="ab" * 32,
    source="lakescore.transactions", source_version=7, threshold=0.5,
)


def test_an_empty_partition_fails_by_default_naming_the_partition_and_the_way_out():
    with pytest.raises(PartitionError) as error:
        check_row_floor(0, [], ScoreSettings(), WHERE)
    assert str(error.value).startswith(f"{WHERE} is missing or empty (0 rows, score.min_rows=1)")
    assert "--allow-empty" in str(error.value)


def test_a_partition_below_the_absolute_floor_fails_with_both_counts():
    with pytest.raises(PartitionError, match=f"{WHERE} holds 99 rows, fewer than score.min_rows=100"):
        check_row_floor(99, [], ScoreSettings(min_rows=100), WHERE)
    check_row_floor(100, [], ScoreSettings(min_rows=100), WHERE)  # at the floor: accepted


def test_the_relative_floor_is_a_fraction_of_the_median_of_the_trailing_runs():
    score = ScoreSettings(min_fraction_of_median=0.5)
    trailing = [1000, 10, 900, 1100, 5000]  # median 1000: one odd night does not move it
    check_row_floor(500, trailing, score, WHERE)
    with pytest.raises(PartitionError, match=r"holds 499 rows, fewer than 0.5 x the median 1000 of the last 5 complete runs \(500\)"):
        check_row_floor(499, trailing, score, WHERE)


def test_without_trailing_runs_or_with_a_zero_fraction_only_the_absolute_floor_applies():
    check_row_floor(1, [], ScoreSettings(min_fraction_of_median=0.9), WHERE)
    check_row_floor(1, [10_000], ScoreSettings(min_fraction_of_median=0.0), WHERE)
    with pytest.raises(PartitionError):
        check_row_floor(1, [10_000], ScoreSettings(min_fraction_of_median=0.9), WHERE)


def test_a_zero_absolute_floor_lets_an_empty_partition_through():
    check_row_floor(0, [], ScoreSettings(min_rows=0), WHERE)


@pytest.mark.parametrize(
    "setting, value",
    [("score.min_rows", "-1"), ("score.min_fraction_of_median", "-0.1"), ("score.min_fraction_of_median", "nan"), ("score.median_window", "0")],
)
def test_floors_out_of_range_are_refused_when_the_settings_load(setting, value):
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        load_settings(overrides={setting: value}, environ={})


def test_rows_scored_must_equal_rows_read_for_every_model():
    verify_rows_scored(RUN, 3000, 3000, "lakescore.transactions", "event_date=2026-11-04")
    with pytest.raises(VerificationError, match="3000 rows read but 2999 scored, so nothing was written"):
        verify_rows_scored(RUN, 3000, 2999, "lakescore.transactions", "event_date=2026-11-04")


def test_each_kind_of_failure_has_its_own_documented_exit_code():
    from delta.exceptions import ConcurrentAppendException

    from jobs.score_nightly import (
        EXIT_BAD_INPUT, EXIT_CONFLICT, EXIT_SOURCE, EXIT_VERIFICATION, __doc__ as job_doc, exit_code,
    )

    codes = {
        ValueError("column amount missing"): EXIT_BAD_INPUT,
        RegistryError("no model tx"): EXIT_BAD_INPUT,
        SourceError("source path /x does not exist"): EXIT_SOURCE,
        PartitionError("partition empty"): EXIT_SOURCE,
        BundleError("weights.safetensors has sha256 ..."): EXIT_VERIFICATION,
        VerificationError("3000 rows read but 2999 scored"): EXIT_VERIFICATION,
        ConcurrentAppendException(message="Files were added to partition ..."): EXIT_CONFLICT,
    }
    assert {type(e).__name__: exit_code(e) for e in codes} == {type(e).__name__: c for e, c in codes.items()}
    assert exit_code(RuntimeError("a bug")) is None  # internal: re-raised, exit 1 with the traceback
    assert sorted(set(codes.values())) == [2, 3, 4, 5]
    for code in (0, 1, 2, 3, 4, 5):
        assert f"\n    {code}  " in job_doc  # each code is documented where the job is


def test_the_keyed_hash_is_hmac_sha256_under_the_secret_and_refuses_an_empty_key():
    import hashlib
    import hmac

    from lakescore.feedback_keys import keyed_hash

    assert keyed_hash("s3cret", "42") == hmac.new(b"s3cret", b"42", hashlib.sha256).hexdigest()
    assert keyed_hash("s3cret", "42") != keyed_hash("other", "42")
    assert keyed_hash("s3cret", "42") != hashlib.sha256(b"s3cret42").hexdigest()  # not a salted plain hash
    with pytest.raises(ValueError, match="hash key is empty; set LAKESCORE_HASH_KEY"):
        keyed_hash("", "42")


def test_the_hash_key_comes_from_its_environment_variable_or_a_file(tmp_path):
    assert load_settings(environ={"LAKESCORE_HASH_KEY": "from-env"}).score.hash_key == "from-env"
    key_file = tmp_path / "hash.key"
    key_file.write_text("from-file\n")
    assert load_settings(overrides={"score.hash_key_file": str(key_file)}, environ={}).score.hash_key == "from-file"
    with pytest.raises(ConfigError, match="score.hash_key_file .*missing.key cannot be read"):
        load_settings(overrides={"score.hash_key_file": str(tmp_path / "missing.key")}, environ={})


def test_only_staging_folders_of_runs_older_than_the_grace_are_removed(tmp_path):
    from pipelines.nightly import remove_stale_staging

    for name in ("20261101T020000Z-0a1b2c3d", "20261104T015900Z-4e5f6a7b", "not-a-run", "20261104T020500Z-8c9d0e1f"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-0.parquet").write_bytes(b"x")
    removed = remove_stale_staging(tmp_path, older_than=dt.datetime(2026, 11, 4, 2, 0, tzinfo=dt.timezone.utc))
    assert removed == ["20261101T020000Z-0a1b2c3d", "20261104T015900Z-4e5f6a7b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20261104T020500Z-8c9d0e1f", "not-a-run"]
    assert remove_stale_staging(tmp_path / "missing", older_than=dt.datetime(2026, 11, 4, tzinfo=dt.timezone.utc)) == []
