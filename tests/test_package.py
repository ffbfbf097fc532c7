"""`lakescore package`: the zip spark-submit ships with --py-files to machines without lakescore."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipelines.package import SHIPPED_PACKAGES, PackageError, build_pyfiles_zip, project_version
from localclusters import bare_python

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_pyfiles_zip(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def python_without_lakescore(tmp_path_factory):
    return bare_python(tmp_path_factory.mktemp("bare") / "env")


def test_the_zip_holds_every_python_source_of_lakescore_udfs_pipelines_and_jobs_and_nothing_else(built):
    on_disk = {
        p.relative_to(REPO).as_posix()
        for package in SHIPPED_PACKAGES
        for p in (REPO / package).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    with zipfile.ZipFile(built.path) as archive:
        names = set(archive.namelist())
        assert archive.testzip() is None
    data = {p.relative_to(REPO).as_posix() for p in (REPO / "lakescore" / "specs").glob("*.toml")}
    data |= {p.relative_to(REPO).as_posix() for p in (REPO / "lakescore" / "templates").glob("*.j2")}
    assert {"lakescore/specs/transactions_v1.toml", "lakescore/templates/report.html.j2"} <= data
    assert names == on_disk | data and on_disk == set(built.files) and data == set(built.data)
    assert {"lakescore/__init__.py", "udfs/__init__.py", "pipelines/__init__.py", "jobs/__init__.py"} <= names
    assert not any(n.startswith(("training/", "tests/")) for n in names)
    assert built.path.name == f"lakescore-{project_version()}.zip"


def test_building_twice_gives_the_same_bytes(built, tmp_path):
    again = build_pyfiles_zip(tmp_path)
    assert again.sha256 == built.sha256
    assert again.path.read_bytes() == built.path.read_bytes()


def test_a_python_without_lakescore_imports_every_shipped_module_from_the_zip(built, python_without_lakescore, tmp_path):
    without = subprocess.run(
        [str(python_without_lakescore), "-c", "import lakescore"], cwd=tmp_path, capture_output=True, text=True
    )
    assert without.returncode != 0 and "No module named 'lakescore'" in without.stderr
    modules = sorted(n.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for n in built.files)
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(sys.argv[1]), (name, module.__file__)\n"
        "from lakescore.specs import builtin_spec\n"
        "assert builtin_spec('transactions_v1').keys == ('transaction_id',)\n"  # package data read from the zip
        "from lakescore.report import NightReport, render_report\n"  # the report's template, from the zip
        "assert '<h1>t</h1>' in render_report(NightReport('t', 's', (), 'now'))\n"
        "print(len(sys.modules))\n"
    )
    with_zip = subprocess.run(
        [str(python_without_lakescore), "-c", script, str(built.path)],
        cwd=tmp_path, env={"PYTHONPATH": str(built.path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )
    assert with_zip.returncode == 0, with_zip.stderr[-3000:]


def test_a_folder_that_is_not_a_package_is_refused_with_the_fix(tmp_path):
    (tmp_path / "notapackage").mkdir()
    with pytest.raises(PackageError, match=r"no __init__\.py.*run `lakescore package` from a lakescore checkout"):
        build_pyfiles_zip(tmp_path / "dist", root=tmp_path, packages=("notapackage",))


def test_lakescore_package_builds_the_zip_and_prints_the_spark_submit_flags(tmp_path):
    result = CliRunner().invoke(app, ["package", "--dest", str(tmp_path)])
    assert result.exit_code == 0, result.output
    zip_path = tmp_path / f"lakescore-{project_version()}.zip"
    assert zip_path.is_file()
    assert f"--py-files {zip_path.resolve()}" in result.output
    assert "--jars " in result.output and "delta-spark_4.2_2.13-4.4.0.jar" in result.output
