from pathlib import Path

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
