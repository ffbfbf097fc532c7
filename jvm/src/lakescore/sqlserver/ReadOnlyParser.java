package lakescore.sqlserver;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.catalyst.FunctionIdentifier;
import org.apache.spark.sql.catalyst.TableIdentifier;
import org.apache.spark.sql.catalyst.analysis.UnresolvedFunction;
import org.apache.spark.sql.catalyst.analysis.UnresolvedRelation;
import org.apache.spark.sql.catalyst.analysis.UnresolvedTableValuedFunction;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.SubqueryExpression;
import org.apache.spark.sql.catalyst.parser.ParameterContext;
import org.apache.spark.sql.catalyst.parser.ParseException;
import org.apache.spark.sql.catalyst.parser.ParserInterface;
import org.apache.spark.sql.catalyst.plans.logical.Command;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.StructType;
import scala.jdk.javaapi.CollectionConverters;

/**
 * Parses with the delegate (Spark's parser, wrapped by Delta's), then refuses a plan that is not
 * a query, SHOW, DESCRIBE or USE, and always refuses ADD JAR/FILE/ARCHIVE, CREATE FUNCTION,
 * reflect()/java_method()/try_reflect(), reads by path (`parquet.`/etc``) and table-valued
 * functions other than range(): the rules of lakescore/sql_policy.py, on the same parse.
 */
final class ReadOnlyParser implements ParserInterface {

  static final Set<String> READ_ONLY_COMMANDS = Set.of(
      "ShowTables", "ShowTablesExtended", "ShowViews", "ShowColumns", "ShowPartitions",
      "ShowNamespaces", "ShowFunctions", "ShowCreateTable", "ShowTableProperties",
      "ShowTblProperties", "DescribeRelation", "DescribeColumn", "DescribeNamespace",
      "DescribeFunction",
      // Clients switch database on connect (JDBC URL's /lakescore, PyHive's database=).
      "SetCatalogAndNamespace", "SetNamespaceCommand", "ShowCatalogsCommand",
      "ShowCurrentNamespaceCommand");
  static final Map<String, String> ALWAYS_REFUSED = Map.of(
      "AddJarsCommand", "ADD JAR loads code into the JVM",
      "AddFilesCommand", "ADD FILE copies files onto every executor",
      "AddArchivesCommand", "ADD ARCHIVE copies files onto every executor",
      "CreateFunction", "CREATE FUNCTION loads code into the JVM",
      "CreateFunctionCommand", "CREATE FUNCTION loads code into the JVM",
      "CreateUserDefinedFunction", "CREATE FUNCTION defines code the catalog runs");
  static final Set<String> REFLECTION = Set.of("reflect", "java_method", "try_reflect");
  static final Set<String> TABLE_FUNCTIONS = Set.of("range");
  static final Set<String> FILE_FORMATS =
      Set.of("parquet", "delta", "json", "csv", "orc", "text", "avro", "binaryfile", "xml");
  static final String FIX = "query lakescore's tables by name (e.g. SELECT ... FROM lakescore.flagged)";

  private final SparkSession session;
  private final ParserInterface delegate;

  ReadOnlyParser(SparkSession session, ParserInterface delegate) {
    this.session = session;
    this.delegate = delegate;
  }

  @Override
  public LogicalPlan parsePlan(String sqlText) throws ParseException {
    return checked(delegate.parsePlan(sqlText));
  }

  @Override
  public LogicalPlan parsePlanWithParameters(String sqlText, ParameterContext parameters) throws ParseException {
    return checked(delegate.parsePlanWithParameters(sqlText, parameters));
  }

  @Override
  public LogicalPlan parseQuery(String sqlText) throws ParseException {
    return checked(delegate.parseQuery(sqlText));
  }

  private LogicalPlan checked(LogicalPlan plan) {
    if (ReadOnlySqlExtension.isTrusted(session)) {
      return plan;
    }
    Walker walker = new Walker();
    walker.visit(plan);
    String root = plan.getClass().getSimpleName();
    if (!walker.refused.isEmpty()) {
      throw new SecurityException("lakescore serve-sql refused: " + walker.refused.get(0) + "; " + FIX);
    }
    boolean query = !(plan instanceof Command) && walker.writes.isEmpty();
    if (!query && !READ_ONLY_COMMANDS.contains(root)) {
      throw new SecurityException(
          "lakescore serve-sql is read-only: this statement (" + root + ") is not a query, SHOW or "
              + "DESCRIBE; change the lake with lakescore's jobs or `lakescore sql --write` instead");
    }
    return plan;
  }

  /** Every node of a parsed plan, its expressions and the plans inside them (subqueries, CTEs). */
  private static final class Walker {
    final List<String> refused = new ArrayList<>();
    final List<String> writes = new ArrayList<>();

    void visit(LogicalPlan plan) {
      String name = plan.getClass().getSimpleName();
      if (ALWAYS_REFUSED.containsKey(name)) {
        refused.add(ALWAYS_REFUSED.get(name));
      }
      if (name.startsWith("InsertInto") || name.startsWith("Merge") || name.startsWith("Overwrite")) {
        writes.add(name);
      }
      if (plan instanceof UnresolvedRelation) {
        List<String> parts = CollectionConverters.asJava(((UnresolvedRelation) plan).multipartIdentifier());
        String last = parts.get(parts.size() - 1);
        if (parts.size() >= 2 && FILE_FORMATS.contains(parts.get(0).toLowerCase(Locale.ROOT))
            && (last.contains("/") || last.contains(":"))) {
          refused.add(parts.get(0) + ".`" + last + "` reads a path, not a catalog table");
        }
      }
      if (plan instanceof UnresolvedTableValuedFunction) {
        String function = String.join(".", CollectionConverters.asJava(((UnresolvedTableValuedFunction) plan).name()))
            .toLowerCase(Locale.ROOT);
        if (!TABLE_FUNCTIONS.contains(lastPart(function))) {
          refused.add("the table-valued function " + function + "() may read files or run code");
        }
      }
      for (Expression expression : CollectionConverters.asJava(plan.expressions())) {
        expression(expression);
      }
      for (LogicalPlan child : CollectionConverters.asJava(plan.children())) {
        visit(child);
      }
      for (Object inner : CollectionConverters.asJava(plan.innerChildren())) {
        if (inner instanceof LogicalPlan) {
          visit((LogicalPlan) inner);
        }
      }
    }

    void expression(Expression expression) {
      if (expression instanceof UnresolvedFunction) {
        String function = String.join(".", CollectionConverters.asJava(((UnresolvedFunction) expression).nameParts()))
            .toLowerCase(Locale.ROOT);
        if (REFLECTION.contains(lastPart(function))) {
          refused.add(function + "() calls Java methods by name");
        }
      }
      if (expression instanceof SubqueryExpression) {
        visit(((SubqueryExpression) expression).plan());
      }
      for (Expression child : CollectionConverters.asJava(expression.children())) {
        expression(child);
      }
    }

    private static String lastPart(String dotted) {
      return dotted.substring(dotted.lastIndexOf('.') + 1);
    }
  }

  // Everything else is the delegate's: expressions, identifiers and types are not statements.

  @Override
  public Expression parseExpression(String sqlText) throws ParseException {
    return delegate.parseExpression(sqlText);
  }

  @Override
  public TableIdentifier parseTableIdentifier(String sqlText) throws ParseException {
    return delegate.parseTableIdentifier(sqlText);
  }

  @Override
  public FunctionIdentifier parseFunctionIdentifier(String sqlText) throws ParseException {
    return delegate.parseFunctionIdentifier(sqlText);
  }

  @Override
  public scala.collection.immutable.Seq<String> parseMultipartIdentifier(String sqlText) throws ParseException {
    return delegate.parseMultipartIdentifier(sqlText);
  }

  @Override
  public StructType parseRoutineParam(String sqlText) throws ParseException {
    return delegate.parseRoutineParam(sqlText);
  }

  @Override
  public StructType parseTableSchema(String sqlText) throws ParseException {
    return delegate.parseTableSchema(sqlText);
  }

  @Override
  public DataType parseDataType(String sqlText) throws ParseException {
    return delegate.parseDataType(sqlText);
  }
}
