
import pytest

from lakescore.config import ConfigError, load_settings


def test_defaults_make_the_lake_root_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.lake.root == tmp_path / "lake"
    assert settings.lake.metastore_dir == tmp_path / "lake" / "_metastore"
    assert settings.table("flagged") == "lakescore.flagged"
    assert settings.table("other.flagged") == "other.flagged"


def test_file_then_environment_then_flags_each_win_over_the_one_before(tmp_path):
    config = tmp_path / "lakescore.toml"
    config.write_text('[train]\nepochs = 3\nbatch_size = 64\nhidden = [16, 8]\n[lake]\ndatabase = "from_file"\n')
    settings = load_settings(
        config,
        overrides={"train.batch_size": "128"},
        environ={"LAKESCORE_TRAIN_EPOCHS": "5", "LAKESCORE_LAKE_ROOT": str(tmp_path / "x")},
    )
    assert settings.train.epochs == 5
    assert settings.train.batch_size == 128
    assert settings.train.hidden == (16, 8)
    assert settings.lake.database == "from_file"
    assert settings.lake.root == tmp_path / "x"


def test_an_unknown_setting_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown setting train\.epoch;.*epochs"):
        load_settings(overrides={"train.epoch": "3"}, environ={})
    with pytest.raises(ConfigError, match=r"unknown section 'trian'"):
        load_settings(overrides={"trian.epochs": "3"}, environ={})


def test_a_value_of_the_wrong_type_says_which_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs='many' is not a valid int"):
        load_settings(overrides={"train.epochs": "many", "lake.root": str(tmp_path)}, environ={})


def test_a_feature_spec_setting_must_name_a_file_and_is_read_as_a_path(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.spec=.*nowhere\.toml is no file; give the path of a feature spec"):
        load_settings(overrides={"train.spec": str(tmp_path / "nowhere.toml"), "lake.root": str(tmp_path)}, environ={})
    spec = tmp_path / "sensors.toml"
    spec.write_text('name = "sensors_v1"\n')
    settings = load_settings(overrides={"train.spec": str(spec), "lake.root": str(tmp_path)}, environ={})
    assert settings.train.spec == spec and load_settings(overrides={"lake.root": str(tmp_path)}, environ={}).train.spec is None


@pytest.mark.parametrize("name", ["lake score", "flagged;DROP TABLE x", "1abc", "a.b.c"])
def test_an_identifier_that_would_break_sql_is_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="identifier|one dot"):
        load_settings(overrides={"score.table": name, "lake.root": str(tmp_path)}, environ={})


def test_a_lake_root_that_is_not_writable_is_refused(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    (read_only / "file").write_text("")
    with pytest.raises(ConfigError, match="not writable"):
        load_settings(overrides={"lake.root": str(read_only / "file" / "lake")}, environ={})


def test_a_choice_outside_its_options_lists_them(tmp_path):
    with pytest.raises(ConfigError, match="train.kind='forest' is not one of: mlp, autoencoder"):
        load_settings(overrides={"train.kind": "forest", "lake.root": str(tmp_path)}, environ={})


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_an_anomaly_rate_out_of_range_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="anomaly_rate"):
        load_settings(overrides={"generate.anomaly_rate": "0.7", "lake.root": str(tmp_path)}, environ={})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lake.database": "lake score"}, r"lake\.database 'lake score' is not a plain SQL identifier"),
        ({"spark.arrow_batch_size": "0"}, r"spark\.arrow_batch_size=0 must be a positive number"),
        ({"spark.shuffle_partitions": "-1"}, r"spark\.shuffle_partitions=-1 must be a positive number"),
        ({"ray.num_workers": "0"}, r"ray\.num_workers=0 must be a positive number"),
        ({"ray.cpus_per_worker": "0"}, r"ray\.cpus_per_worker=0.0 must be a positive number"),
        ({"ray.address": "spark", "ray.spark_worker_nodes": "0"}, r"ray\.spark_worker_nodes=0 must be at least 1"),
        ({"ray.address": "spark", "ray.spark_head_cpus": "-1"}, r"ray\.spark_head_cpus=-1 at least 0"),
        ({"ray.address": "spark"}, r"WITHOUT authentication.*ray\.spark_unauthenticated=true"),
        ({"ray.max_failures": "-2"}, r"ray\.max_failures=-2 must be >= -1 \(-1: unlimited\)"),
        ({"generate.format": "csv"}, r"generate\.format='csv' is not one of: delta, parquet"),
        ({"generate.table": "a b"}, r"generate\.table 'a b' is not a plain SQL identifier"),
        ({"generate.files_per_day": "0"}, r"generate\.files_per_day=0 must be a positive number"),
        ({"generate.rows_per_task": "0"}, r"generate\.rows_per_task=0 must be a positive number"),
        ({"generate.anomaly_rate": "-0.1"}, r"generate\.anomaly_rate=-0\.1 must be in \[0, 0\.5\)"),
        ({"train.model_name": "my-model"}, r"train\.model_name 'my-model' is not a plain SQL identifier"),
        ({"train.threshold_policy": "best"}, r"threshold_policy='best' is not one of: target_precision, alert_rate, fixed"),
        ({"train.epochs": "0"}, r"train\.epochs=0 must be a positive number"),
        ({"train.max_pos_weight": "0"}, r"train\.max_pos_weight=0.0 must be a positive number"),
        ({"train.hidden": "64,0"}, r"train\.hidden=\(64, 0\) must list positive layer sizes"),
        ({"train.autoencoder_hidden": ""}, r"train\.autoencoder_hidden=\(\) must list positive layer sizes"),
        ({"train.threshold_value": "1.5"}, r"threshold_value=1\.5 must be in \(0, 1\] for the target_precision policy"),
        ({"train.threshold_policy": "alert_rate", "train.threshold_value": "0"}, r"in \(0, 1\] for the alert_rate policy"),
        ({"train.clip_low_quantile": "0.9", "train.clip_high_quantile": "0.1"}, r"must satisfy 0 <= low < high <= 1"),
        ({"train.clip_margin": "nan"}, r"train\.clip_margin=nan must be a finite number >= 0"),
        ({"train.first_date": "2026-11-05", "train.last_date": "2026-11-01"}, r"first_date=2026-11-05 is after"),
        ({"train.test_days": "0"}, r"validation_days and train\.test_days must be at least 1"),
        ({"train.shuffle_buffer_rows": "-1"}, r"train\.shuffle_buffer_rows=-1 must be >= 0"),
        ({"train.negative_sample_rate": "0"}, r"train\.negative_sample_rate=0\.0 must be in \(0, 1\]: the share of normal"),
        ({"train.negative_sample_rate": "1.5"}, r"train\.negative_sample_rate=1\.5 must be in \(0, 1\]"),
        ({"train.negative_sample_rate": "nan"}, r"train\.negative_sample_rate=nan must be in \(0, 1\]"),
        ({"train.worker_cache_mb": "-1"}, r"train\.worker_cache_mb=-1 must be >= 0"),
        ({"train.whole_read_mb": "-1"}, r"train\.whole_read_mb=-1 must be >= 0 \(0: always take Ray Data's shards\)"),
        ({"train.validation_fraction": "0.5"}, r"train\.validation_fraction=0\.5 must be in \(0, 0\.5\)"),
        ({"score.sensitive_action": "mask"}, r"score\.sensitive_action='mask' is not one of: hash, drop"),
        ({"score.allow_columns": "amount, ,country"}, r"an empty column name in score\.allow_columns"),
        ({"score.date_column": "day-1"}, r"score\.date_column 'day-1' is not a plain SQL identifier"),
        ({"score.top_reasons": "0"}, r"score\.top_reasons=0 must be a positive number"),
    ],
)
def test_each_rule_refuses_a_bad_value_with_a_message_naming_the_setting(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides={**overrides, "lake.root": str(tmp_path)}, environ={})


def test_with_overrides_checks_the_new_values_too(tmp_path):
    settings = load_settings(overrides={"lake.root": str(tmp_path)}, environ={})
    assert settings.with_overrides({"train.epochs": "3"}).train.epochs == 3
    with pytest.raises(ConfigError, match=r"train\.epochs=0 must be a positive number"):
        settings.with_overrides({"train.epochs": "0"})


def test_training_and_scoring_may_name_a_path_where_generate_needs_a_table(tmp_path):
    settings = load_settings(
        overrides={"lake.root": str(tmp_path), "train.table": "/data/t", "score.table": "file:/data/t"}, environ={}
    )
    assert (settings.train.table, settings.score.table) == ("/data/t", "file:/data/t")
    with pytest.raises(ConfigError, match=r"generate\.table '/data/t' is not a plain SQL identifier"):
        load_settings(overrides={"lake.root": str(tmp_path), "generate.table": "/data/t"}, environ={})


def test_every_choice_the_code_defines_is_accepted(tmp_path):
    from lakescore import schemas as S

    choices = {
        "train.kind": S.MODEL_KINDS,
        "train.threshold_policy": S.THRESHOLD_POLICIES,
        "score.sensitive_action": S.SENSITIVE_ACTIONS,
        "generate.format": S.TABLE_FORMATS,
    }
    for name, allowed in choices.items():
        section, key = name.split(".")
        for value in allowed:
            settings = load_settings(overrides={"lake.root": str(tmp_path), name: value}, environ={})
            assert getattr(getattr(settings, section), key) == value


def test_constants_moved_into_lakescore_stay_importable_from_their_old_modules():
    from lakescore import models
    from lakescore import schemas as S
    from training import thresholds
    from udfs import flagged

    assert models.KINDS is S.MODEL_KINDS and (models.MLP, models.AUTOENCODER) == S.MODEL_KINDS
    assert thresholds.POLICIES is S.THRESHOLD_POLICIES
    assert (thresholds.TARGET_PRECISION, thresholds.ALERT_RATE, thresholds.FIXED) == S.THRESHOLD_POLICIES
    assert (flagged.HASH, flagged.DROP) == S.SENSITIVE_ACTIONS


def test_the_hash_key_never_shows_in_the_settings_repr_that_a_log_line_or_traceback_prints(tmp_path):
    secret = "do-not-print-this-key"
    settings = load_settings(overrides={"lake.root": str(tmp_path)}, environ={"LAKESCORE_HASH_KEY": secret})
    assert settings.score.hash_key == secret
    assert secret not in repr(settings) and secret not in str(settings.score)


@pytest.mark.parametrize(
    "setting, what, variable, extra",
    [
        ("score.hash_key_file", "the hash key", "LAKESCORE_HASH_KEY", {}),
        ("sql.password_file", "the password", "LAKESCORE_SQL_PASSWORD", {"sql.auth": "password"}),
        (
            "catalog.password_file",
            "the metastore password",
            "LAKESCORE_CATALOG_PASSWORD",
            {"catalog.url": "jdbc:postgresql://db:5432/metastore"},
        ),
    ],
)
def test_a_secret_file_that_cannot_be_read_names_the_setting_and_the_variable_to_set_instead(
    tmp_path, setting, what, variable, extra
):
    missing = tmp_path / "no.secret"
    overrides = {"lake.root": str(tmp_path), setting: str(missing), **extra}
    with pytest.raises(ConfigError) as refused:
        load_settings(overrides=overrides, environ={})
    assert str(refused.value) == (
        f"{setting} {missing} cannot be read (No such file or directory); point it at the file holding {what}, "
        f"or set {variable}"
    )
