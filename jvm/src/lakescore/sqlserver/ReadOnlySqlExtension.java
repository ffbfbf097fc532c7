package lakescore.sqlserver;

import java.util.Collections;
import java.util.Map;
import java.util.Set;
import java.util.WeakHashMap;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.SparkSessionExtensions;
import scala.Function1;
import scala.runtime.BoxedUnit;

/**
 * `spark.sql.extensions` entry of `lakescore serve-sql`'s session: every SQL statement a session
 * of this JVM parses goes through {@link ReadOnlyParser}, which refuses what `lakescore sql`
 * refuses without --write (lakescore/sql_policy.py). The Thrift server runs a client's
 * statements in the JVM, with no Python in between: this is where its policy must live.
 *
 * Fail-closed: every session is read-only except the ones lakescore's own Python code marks
 * trusted with {@link #trust} (the session that started the server; clients of the Thrift server
 * each get a new session, never that one).
 */
public final class ReadOnlySqlExtension implements Function1<SparkSessionExtensions, BoxedUnit> {

  private static final Set<SparkSession> TRUSTED =
      Collections.synchronizedSet(Collections.newSetFromMap(new WeakHashMap<SparkSession, Boolean>()));

  /** Let `session` (lakescore's own, never a client's) run any statement. */
  public static void trust(SparkSession session) {
    TRUSTED.add(session);
  }

  static boolean isTrusted(SparkSession session) {
    return TRUSTED.contains(session);
  }

  @Override
  public BoxedUnit apply(SparkSessionExtensions extensions) {
    extensions.injectParser((session, delegate) -> new ReadOnlyParser(session, delegate));
    return BoxedUnit.UNIT;
  }
}
