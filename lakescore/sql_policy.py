"""What `lakescore sql` lets a statement do, decided on Spark's own parse of it before it runs.

Read-only by default: one query (SELECT, WITH, VALUES, TABLE, FROM ...) or one SHOW/DESCRIBE.
Anything else (DROP, DELETE, INSERT, ALTER, SET, ...) needs `write=True`. Always refused, with
or without it, because each one reaches past the catalog's tables into the machine or the JVM:

- ADD JAR / FILE / ARCHIVE and CREATE FUNCTION (code loaded into the JVM);
- `reflect`, `java_method`, `try_reflect` (any Java static method, by name);
- reads by path (`parquet.\\`/etc\\``, `delta.\\`/lake/x\\``, table-valued functions other than
  `range`): a statement reaches tables through the catalog only, so the catalog's grants apply.

The statement is parsed, not run: the parser gives the plan's tree, walked here node by node
(subqueries and WITH clauses included). Spark's parser accepts one statement, so `SELECT 1;
DROP TABLE t` is a syntax error before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import SparkSession


class StatementRefused(ValueError):
    """A statement `lakescore sql` will not run; the message says why and what to do."""


# Parsed roots that only read: SHOW ... and DESCRIBE ... (queries are recognised as not commands).
_READ_ONLY_COMMANDS = {
    "ShowTables",
    "ShowTablesExtended",
    "ShowViews",
    "ShowColumns",
    "ShowPartitions",
    "ShowNamespaces",
    "ShowFunctions",
    "ShowCreateTable",
    "ShowTableProperties",
    "ShowTblProperties",
    "DescribeRelation",
    "DescribeColumn",
    "DescribeNamespace",
    "DescribeFunction",
}
_ALWAYS_REFUSED_COMMANDS = {
    "AddJarsCommand": "ADD JAR loads code into the JVM",
    "AddFilesCommand": "ADD FILE copies files onto every executor",
    "AddArchivesCommand": "ADD ARCHIVE copies files onto every executor",
    "CreateFunction": "CREATE FUNCTION loads code into the JVM",
    "CreateFunctionCommand": "CREATE FUNCTION loads code into the JVM",
    "CreateUserDefinedFunction": "CREATE FUNCTION defines code the catalog runs",
}
_REFLECTION = {"reflect", "java_method", "try_reflect"}
_TABLE_FUNCTIONS = {"range"}
# `format.\`path\`` reads a path with that data source (Spark's run-SQL-on-files, or Delta's catalog).
_FILE_FORMATS = {"parquet", "delta", "json", "csv", "orc", "text", "avro", "binaryfile", "xml"}

_FIX = "query lakescore's tables by name (e.g. SELECT ... FROM lakescore.flagged)"


@dataclass(frozen=True)
class StatementKind:
    """What the statement is: a read (query, SHOW, DESCRIBE) or a change to the catalog or a table."""

    root: str  # the parsed plan's root node, e.g. Project, DropTable
    read_only: bool


def check_statement(spark: SparkSession, statement: str, *, write: bool = False) -> StatementKind:
    """Parse `statement` and raise StatementRefused if `lakescore sql` must not run it.

    Args:
        write: allow statements that change tables or the catalog (DROP, DELETE, INSERT, ...);
            the always-refused ones stay refused.

    A syntax error propagates as Spark's ParseException (its message points at the spot).
    """
    jvm = spark.sparkContext._jvm
    plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(statement)
    walker = _Walker(jvm)
    walker.visit(plan)
    root = plan.getClass().getSimpleName()
    if walker.refused:
        raise StatementRefused(f"refused: {walker.refused[0]}; {_FIX}")
    is_query = not walker.is_command(plan) and not walker.writes
    read_only = is_query or root in _READ_ONLY_COMMANDS
    if not read_only and not write:
        raise StatementRefused(
            f"`lakescore sql` is read-only by default and this statement ({root}) is not a query, "
            "SHOW or DESCRIBE; run it again with --write if you mean to change the lake"
        )
    return StatementKind(root=root, read_only=read_only)


class _Walker:
    """Visits every node of a parsed plan, its expressions and the plans inside them."""

    def __init__(self, jvm):
        self.command = jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.plans.logical.Command")
        self.subquery = jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.expressions.SubqueryExpression")
        self.refused: list[str] = []
        self.writes: list[str] = []  # write statements that are not Commands (INSERT INTO ...)

    def is_command(self, plan) -> bool:
        return bool(self.command.isInstance(plan))

    def visit(self, plan) -> None:
        name = plan.getClass().getSimpleName()
        if name in _ALWAYS_REFUSED_COMMANDS:
            self.refused.append(_ALWAYS_REFUSED_COMMANDS[name])
        if name.startswith("InsertInto") or name.startswith("Merge") or name.startswith("Overwrite"):
            self.writes.append(name)
        if name == "UnresolvedRelation":
            self._relation(list(_seq(plan.multipartIdentifier())))
        if name == "UnresolvedTableValuedFunction":
            function = ".".join(_seq(plan.name())).lower()
            if function.split(".")[-1] not in _TABLE_FUNCTIONS:
                self.refused.append(f"the table-valued function {function}() may read files or run code")
        for expression in _seq(plan.expressions()):
            self._expression(expression)
        for child in [*_seq(plan.children()), *_seq(plan.innerChildren())]:
            if hasattr(child, "children") and hasattr(child, "expressions"):
                self.visit(child)

    def _relation(self, parts: list[str]) -> None:
        if len(parts) >= 2 and parts[0].lower() in _FILE_FORMATS and ("/" in parts[-1] or ":" in parts[-1]):
            self.refused.append(f"{parts[0]}.`{parts[-1]}` reads a path, not a catalog table")

    def _expression(self, expression) -> None:
        name = expression.getClass().getSimpleName()
        if name == "UnresolvedFunction":
            function = ".".join(_seq(expression.nameParts())).lower()
            if function.split(".")[-1] in _REFLECTION:
                self.refused.append(f"{function}() calls Java methods by name")
        if self.subquery.isInstance(expression):
            self.visit(expression.plan())
        for child in _seq(expression.children()):
            self._expression(child)


def _seq(scala_seq) -> list:
    """A Scala Seq (through py4j) as a Python list."""
    return [scala_seq.apply(i) for i in range(scala_seq.size())]
