#!/usr/bin/env bash
# The whole mission on the embedded default: generate a week of transactions into the lake,
# train a champion and a challenger, score a night with both (the challenger as a shadow, same
# pass), query it with SQL through the catalog, and print the path of the night's HTML report. Run by `make demo`; re-runnable (each step
# replaces what it wrote before, atomically).
set -euo pipefail
cd "$(dirname "$0")/.."
LS=.venv/bin/lakescore
export LAKESCORE_LAKE_ROOT="${LAKESCORE_LAKE_ROOT:-$PWD/lake}"
# The key of the keyed hash of sensitive columns (account_id): a run with sensitive columns refuses
# to start without one. A demo key, made once per lake; a deployment reads it from a secret store.
if [ -z "${LAKESCORE_HASH_KEY:-}" ]; then
  mkdir -p "$LAKESCORE_LAKE_ROOT"
  [ -s "$LAKESCORE_LAKE_ROOT/demo-hash.key" ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$LAKESCORE_LAKE_ROOT/demo-hash.key")
  export LAKESCORE_SCORE_HASH_KEY_FILE="$LAKESCORE_LAKE_ROOT/demo-hash.key"
fi

echo "== 1. generate a week of synthetic transactions into ${LAKESCORE_LAKE_ROOT}"
$LS generate

echo "== 2. rows and anomalies per day, by SQL against the catalog"
$LS sql "SELECT event_date, COUNT(*) AS rows, SUM(CAST(is_anomaly AS INT)) AS anomalies,
                COUNT(DISTINCT account_id) AS accounts
         FROM lakescore.transactions GROUP BY event_date ORDER BY event_date"
$LS sql "SELECT anomaly_type, COUNT(*) AS rows FROM lakescore.transactions
         WHERE is_anomaly GROUP BY anomaly_type ORDER BY rows DESC"

echo "== 3. train an mlp on the week with Ray Train (last day = test, the day before = validation),"
echo "      evaluated beside an IsolationForest, exported as a verified bundle into the registry"
$LS train --table transactions --kind mlp

echo "== 3b. a challenger to shadow it: a shorter training with another seed (registered as challenger)"
$LS train --table transactions --kind mlp --epochs 3 --set train.seed=11
SHADOW_VERSION=$($LS sql "SELECT MAX(version) AS v FROM lakescore.model_registry
                          WHERE name = 'transactions' AND stage = 'challenger'" | tail -n 1 | tr -d ' ')

# The last generated day: generate.start_date (2026-11-21) + generate.days (7) - 1.
DAY=2026-11-27
echo "== 4. score ${DAY} with the champion and, in the same pass, the challenger transactions@${SHADOW_VERSION}"
echo "      as a shadow: the nightly job, as spark-submit runs it"
PYSPARK_PYTHON="$PWD/.venv/bin/python" PYSPARK_DRIVER_PYTHON="$PWD/.venv/bin/python" \
  .venv/bin/spark-submit --driver-memory 4g --jars "$(ls "$PWD"/.jars/*.jar | paste -sd,)" \
  --driver-java-options "-Dlog4j2.configurationFile=$PWD/lakescore/log4j2.properties" \
  jobs/score_nightly.py --run-date "$DAY" --shadow "transactions@${SHADOW_VERSION}"

echo "== 5. the night's results by SQL: flagged counts per role, the champion's top flagged rows with reasons"
echo "      (typed, through the source's view), the run's metrics"
$LS sql "SELECT run_date, model_name, model_version, scoring_role, COUNT(*) AS flagged
         FROM lakescore.flagged WHERE run_date = DATE'${DAY}'
         GROUP BY run_date, model_name, model_version, scoring_role ORDER BY scoring_role"
$LS sql "SELECT transaction_id, account_id, amount, merchant_category, ROUND(score, 4) AS score,
                transform(reasons, r -> concat(r.feature, ' ', format_number(r.contribution, 3))) AS reasons
         FROM lakescore.flagged_transactions WHERE run_date = DATE'${DAY}' AND scoring_role = 'primary'
         ORDER BY score DESC LIMIT 8"
$LS sql "SELECT scope, feature, metric, ROUND(value, 4) AS value FROM lakescore.run_metrics
         WHERE run_date = DATE'${DAY}' AND scoring_role = 'primary'
           AND (scope IN ('run', 'source', 'model') OR metric IN ('p50', 'p90', 'p99', 'p99_9')
                OR (metric = 'psi' AND value > 0.1))
         ORDER BY scope, metric, feature"

echo "== 6. champion against shadow, the same night by SQL: flagged by each, by both, by one only"
$LS sql "SELECT COUNT_IF(p.record_key IS NOT NULL) AS champion_flagged,
                COUNT_IF(s.record_key IS NOT NULL) AS shadow_flagged,
                COUNT_IF(p.record_key IS NOT NULL AND s.record_key IS NOT NULL) AS both_flagged,
                COUNT_IF(s.record_key IS NULL) AS champion_only,
                COUNT_IF(p.record_key IS NULL) AS shadow_only
         FROM (SELECT record_key FROM lakescore.flagged
               WHERE run_date = DATE'${DAY}' AND scoring_role = 'primary') p
         FULL OUTER JOIN (SELECT record_key FROM lakescore.flagged
                          WHERE run_date = DATE'${DAY}' AND scoring_role = 'shadow') s
         USING (record_key)"
$LS sql "SELECT v.transaction_id, v.amount, ROUND(v.score, 4) AS score, v.scoring_role AS flagged_only_by
         FROM lakescore.flagged_transactions v
         LEFT ANTI JOIN (SELECT record_key, scoring_role FROM lakescore.flagged_transactions
                         WHERE run_date = DATE'${DAY}') o
           ON o.record_key = v.record_key AND o.scoring_role <> v.scoring_role
         WHERE v.run_date = DATE'${DAY}'
         ORDER BY score DESC LIMIT 8"
echo "More queries: docs/sql_examples.md"

echo "== 7. the night's report, written by the run into the lake (flags per night, scores against the"
echo "      training reference, drift per feature, reasons, invalid values, champion against shadow);"
echo "      \`lakescore report --run-date D\` renders it again. Open it in a browser:"
$LS report --run-date "$DAY"

echo "== 8. the same tables for analysts over JDBC/ODBC (DBeaver, Superset, beeline; README, \"A SQL endpoint\"):"
echo "      start the read-only endpoint with: LAKESCORE_LAKE_ROOT=${LAKESCORE_LAKE_ROOT} $LS serve-sql   then, in another terminal:"
BEELINE="$(.venv/bin/python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "bin", "beeline"))')"
echo "${BEELINE} -u jdbc:hive2://127.0.0.1:10000/lakescore -e \"SELECT run_date, scoring_role, COUNT(*) AS flagged FROM lakescore.flagged GROUP BY run_date, scoring_role ORDER BY run_date\""
