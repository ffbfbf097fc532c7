"""`lakescore sql`: read-only unless --write, and never a way past the catalog into the JVM or the disk."""

import pytest
from pyspark.errors import ParseException

from lakescore.sql_policy import StatementRefused, check_statement
from pipelines.sql import run_sql

TABLE = "lakescore.sql_policy_probe"


@pytest.fixture(scope="module")
def probe(spark, settings, tmp_path_factory):
    """A two-row catalog table, and a Parquet file reachable by path outside the catalog."""
    spark.sql("CREATE DATABASE IF NOT EXISTS lakescore")
    spark.sql(f"DROP TABLE IF EXISTS {TABLE}")
    spark.createDataFrame([(1, "a"), (2, None)], "id INT, label STRING").write.format("delta").saveAsTable(TABLE)
    outside = tmp_path_factory.mktemp("outside") / "secret.parquet"
    spark.createDataFrame([("hunter2",)], "password STRING").write.parquet(str(outside))
    yield outside
    spark.sql(f"DROP TABLE IF EXISTS {TABLE}")


def _rows(spark, settings, query, **kw):
    columns, rows = run_sql(spark, settings, query, **kw)
    return columns, [tuple(r) for r in rows]


def test_a_query_with_a_cte_and_a_subquery_runs_and_returns_its_rows(spark, settings, probe):
    columns, rows = _rows(
        spark, settings,
        f"WITH t AS (SELECT * FROM {TABLE}) SELECT id, label FROM t WHERE id IN (SELECT id FROM {TABLE}) ORDER BY id",
    )
    assert columns == ["id", "label"] and rows == [(1, "a"), (2, None)]


def test_show_and_describe_are_reads(spark, settings, probe):
    _, tables = _rows(spark, settings, "SHOW TABLES IN lakescore")
    assert "sql_policy_probe" in {r[1] for r in tables}
    _, described = _rows(spark, settings, f"DESCRIBE TABLE {TABLE}")
    assert [(r[0], r[1]) for r in described[:2]] == [("id", "int"), ("label", "string")]


@pytest.mark.parametrize(
    "statement",
    [
        f"DROP TABLE {TABLE}",
        f"DELETE FROM {TABLE} WHERE id = 1",
        f"INSERT INTO {TABLE} VALUES (3, 'c')",
        f"UPDATE {TABLE} SET label = 'x'",
        "SET spark.sql.runSQLOnFiles=true",
    ],
)
def test_a_statement_that_changes_the_lake_is_refused_without_write_and_the_table_is_unchanged(spark, settings, probe, statement):
    with pytest.raises(StatementRefused, match="read-only by default.*--write"):
        run_sql(spark, settings, statement)
    assert sorted(tuple(r) for r in spark.table(TABLE).collect()) == [(1, "a"), (2, None)]


@pytest.mark.parametrize(
    "statement, reason",
    [
        ("ADD JAR /tmp/evil.jar", "ADD JAR loads code"),
        ("CREATE FUNCTION evil AS 'com.example.Evil' USING JAR '/tmp/evil.jar'", "CREATE FUNCTION loads code"),
        ("SELECT reflect('java.lang.System', 'exit', 1)", r"reflect\(\) calls Java methods"),
        (f"SELECT id FROM {TABLE} WHERE id IN (SELECT java_method('java.lang.Runtime', 'getRuntime'))", r"java_method\(\)"),
        ("SELECT * FROM parquet.`{outside}`", "reads a path"),
        ("WITH s AS (SELECT * FROM parquet.`{outside}`) SELECT * FROM s", "reads a path"),
        ("SELECT * FROM delta.`/tmp/some/lake/table`", "reads a path"),
        ("SELECT * FROM read_files('{outside}')", "table-valued function read_files"),
    ],
)
@pytest.mark.parametrize("write", [False, True])
def test_code_loading_reflection_and_reads_by_path_are_refused_even_with_write(spark, settings, probe, statement, reason, write):
    with pytest.raises(StatementRefused, match=reason):
        run_sql(spark, settings, statement.format(outside=probe), write=write)


def test_with_write_a_change_runs(spark, settings, probe):
    run_sql(spark, settings, f"INSERT INTO {TABLE} VALUES (3, 'c')", write=True)
    run_sql(spark, settings, f"DELETE FROM {TABLE} WHERE id = 3", write=True)
    assert sorted(tuple(r) for r in spark.table(TABLE).collect()) == [(1, "a"), (2, None)]


def test_two_statements_are_a_syntax_error_and_neither_runs(spark, settings, probe):
    with pytest.raises(ParseException):
        run_sql(spark, settings, f"SELECT 1; DROP TABLE {TABLE}")
    assert spark.catalog.tableExists(TABLE)


def test_the_policy_tells_a_query_from_a_change(spark):
    assert check_statement(spark, "SELECT 1").read_only
    assert check_statement(spark, "VALUES (1), (2)").read_only
    change = check_statement(spark, "DROP TABLE IF EXISTS x", write=True)
    assert not change.read_only and change.root == "DropTable"
