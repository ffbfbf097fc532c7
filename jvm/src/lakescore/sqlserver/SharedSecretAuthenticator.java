package lakescore.sqlserver;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;

import javax.security.sasl.AuthenticationException;

import org.apache.hive.service.auth.PasswdAuthenticationProvider;

/**
 * The Thrift server's password check for `sql.auth = "password"`
 * (hive.server2.authentication=CUSTOM): the user and password a client sends must equal the
 * ones lakescore's Python code handed over with {@link #configure} (read from
 * $LAKESCORE_SQL_PASSWORD or sql.password_file), compared in constant time. The secret lives in
 * this JVM's memory only: never in Spark's conf (shown in the UI), the command line or a log.
 */
public final class SharedSecretAuthenticator implements PasswdAuthenticationProvider {

  private static volatile byte[] expectedUser;
  private static volatile byte[] expectedPassword;

  public static void configure(String user, String password) {
    if (password == null || password.isEmpty()) {
      throw new IllegalArgumentException("an empty shared secret would let anyone in");
    }
    expectedUser = user.getBytes(StandardCharsets.UTF_8);
    expectedPassword = password.getBytes(StandardCharsets.UTF_8);
  }

  @Override
  public void Authenticate(String user, String password) throws AuthenticationException {
    byte[] wantUser = expectedUser;
    byte[] wantPassword = expectedPassword;
    if (wantPassword == null) {
      throw new AuthenticationException("lakescore serve-sql has no shared secret configured");
    }
    byte[] gotUser = (user == null ? "" : user).getBytes(StandardCharsets.UTF_8);
    byte[] gotPassword = (password == null ? "" : password).getBytes(StandardCharsets.UTF_8);
    // Both compared, always, each in constant time: no early exit tells which one was wrong.
    boolean userOk = MessageDigest.isEqual(gotUser, wantUser);
    boolean passwordOk = MessageDigest.isEqual(gotPassword, wantPassword);
    if (!(userOk & passwordOk)) {
      throw new AuthenticationException("wrong user or password for lakescore serve-sql");
    }
  }
}
