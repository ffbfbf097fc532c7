"""The catalog and the lake root agree, or a job refuses before touching either lake (issue: a
relocated lake split reads and writes across two lakes)."""

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lakescore import catalog, lake, registry
from lakescore import schemas as S
from lakescore.bundle import load_bundle
from lakescore.config import load_settings

_SETUP = textwrap.dedent(
    """
    import shutil, sys
    from pathlib import Path
    from lakescore import registry
    from lakescore.bundle import load_bundle
    from lakescore.config import load_settings
    from lakescore.spark import build_spark_session
    from pipelines.feedback import VerdictSource, run_feedback
    from pipelines.generate import run_generate

    root, jars, bundle_dir = sys.argv[1:4]
    settings = load_settings(None, {"lake.root": root, "spark.master": "local[2]", "spark.jars_dir": jars,
                                    "generate.days": "2", "generate.rows_per_day": "200"})
    spark = build_spark_session(settings, "lake-to-copy")
    run_generate(spark, settings)
    run_feedback(spark, settings, VerdictSource(key="1", verdict="false_positive"), table="transactions")
    bundle = load_bundle(bundle_dir)
    target = registry.bundle_dir(settings, bundle.name, bundle.version)
    shutil.copytree(bundle_dir, target)
    registry.register_bundle(spark, settings, load_bundle(target), target)
    spark.stop()
    """
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(directory, bundle): a small transactions mlp bundle."""
    from transactions_rows import transactions_bundle

    directory = tmp_path_factory.mktemp("bundle") / "mlp"
    return directory, transactions_bundle(directory)


def _env() -> dict:
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def _lakescore(root: Path, settings, *args: str) -> subprocess.CompletedProcess:
    flags = ["--set", f"lake.root={root}", "--set", "spark.master=local[2]", "--set", f"spark.jars_dir={settings.spark.jars_dir}"]
    return subprocess.run(
        [str(Path(sys.executable).parent / "lakescore"), *args, *flags],
        env=_env(), capture_output=True, text=True, timeout=240,
    )


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with its sha256: the lake byte for byte."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_a_copied_lake_is_refused_until_repaired_and_the_original_is_never_touched(spark, settings, model, tmp_path):
    bundle_path, mlp_bundle = model
    original, copy = tmp_path / "lake", tmp_path / "restored" / "lake2"
    made = subprocess.run(
        [sys.executable, "-c", _SETUP, str(original), str(settings.spark.jars_dir), str(bundle_path)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    shutil.copytree(original, copy)
    before = _snapshot(original)
    verdicts = tmp_path / "verdicts.csv"
    verdicts.write_text("record_key,verdict\n2,confirmed_anomaly\n")

    refused = _lakescore(copy, settings, "feedback", "--table", "transactions", "--file", str(verdicts))
    assert refused.returncode == 2, refused.stdout + refused.stderr[-2000:]
    message = " ".join(refused.stderr.split())
    for expected in (
        f"catalog table lakescore.model_registry is at {original}/tables/lakescore/model_registry",
        f"this lake keeps it at {copy}/tables/lakescore/model_registry",
        f"registry model {mlp_bundle.name}@{mlp_bundle.version} has its bundle at {original}/models",
        "lakescore catalog repair --apply",
        "Nothing was read or written",
    ):
        assert expected in message, message

    applied = _lakescore(copy, settings, "catalog", "repair", "--apply")
    assert applied.returncode == 0 and "applied 4 change(s)" in applied.stdout, applied.stdout + applied.stderr[-2000:]
    # Three tables re-registered (transactions, feedback, model_registry) and one bundle path.
    assert applied.stdout.count("re-register at this root") == 3 and "update the registry's bundle path" in applied.stdout
    recorded = _lakescore(copy, settings, "feedback", "--table", "transactions", "--file", str(verdicts))
    assert recorded.returncode == 0, recorded.stderr[-2000:]
    checked = _lakescore(copy, settings, "catalog", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    assert checked.stdout.count(" ok ") == 3 and str(original) not in checked.stdout

    # The copy holds both verdicts and points at its own bundle; the original is as it was.
    feedback = spark.read.format("delta").load(str(copy / "tables" / "lakescore" / "feedback"))
    assert sorted((r["record_key"], r["verdict"]) for r in feedback.collect()) == [
        ("1", "false_positive"), ("2", "confirmed_anomaly")
    ]
    paths = [r["path"] for r in spark.read.format("delta").load(str(copy / "tables" / "lakescore" / "model_registry")).collect()]
    assert paths == [str(copy / "models" / mlp_bundle.name / f"v{mlp_bundle.version}")]
    assert _snapshot(original) == before


def test_registry_paths_outside_the_models_folder_are_reported_and_repaired_in_one_commit(spark, tmp_path, model, settings):
    bundle_path, mlp_bundle = model
    from delta.tables import DeltaTable

    moved = load_settings(None, {"lake.root": str(tmp_path / "lake"), "lake.database": "catalog_probe",
                                 "spark.jars_dir": str(settings.spark.jars_dir)})
    target = registry.bundle_dir(moved, mlp_bundle.name, mlp_bundle.version)
    shutil.copytree(bundle_path, target)
    elsewhere = tmp_path / "old" / "models" / mlp_bundle.name / f"v{mlp_bundle.version}"
    registry.register_bundle(spark, moved, load_bundle(target), elsewhere)
    registry_path = lake.table_path(moved, S.MODEL_REGISTRY)
    commits = DeltaTable.forPath(spark, str(registry_path)).history().count()

    with pytest.raises(catalog.CatalogMismatch, match=f"has its bundle at {elsewhere}, not at {target}"):
        catalog.check_catalog(spark, moved)
    planned = catalog.repair_catalog(spark, moved)  # dry run
    assert [(r.what, r.after, r.possible) for r in planned] == [
        (f"{mlp_bundle.name}@{mlp_bundle.version}", str(target), True)
    ]
    assert DeltaTable.forPath(spark, str(registry_path)).history().count() == commits

    catalog.repair_catalog(spark, moved, apply=True)
    catalog.check_catalog(spark, moved)  # agrees now
    assert DeltaTable.forPath(spark, str(registry_path)).history().count() == commits + 1
    assert registry.load_registered(spark, moved, mlp_bundle.name)[1].sha256 == mlp_bundle.sha256
    spark.sql("DROP TABLE IF EXISTS catalog_probe.model_registry")
    spark.sql("DROP DATABASE IF EXISTS catalog_probe")


def test_a_bundle_that_is_not_under_the_new_root_cannot_be_repaired_and_says_what_to_restore(spark, tmp_path, model, settings):
    bundle_path, mlp_bundle = model
    moved = load_settings(None, {"lake.root": str(tmp_path / "lake"), "lake.database": "catalog_probe2",
                                 "spark.jars_dir": str(settings.spark.jars_dir)})
    registry.register_bundle(spark, moved, mlp_bundle, bundle_path)  # outside moved's models folder
    [repair] = catalog.repair_catalog(spark, moved, apply=True)
    assert not repair.possible and "restore it there first" in repair.action
    with pytest.raises(catalog.CatalogMismatch):
        catalog.check_catalog(spark, moved)
    spark.sql("DROP TABLE IF EXISTS catalog_probe2.model_registry")
    spark.sql("DROP DATABASE IF EXISTS catalog_probe2")
