#!/usr/bin/env bash
# The whole mission on the embedded default: generate a week of transactions into the lake,
# then query it with SQL through the catalog. Run by `make demo`; re-runnable (each step
# replaces what it wrote before, atomically).
set -euo pipefail
cd "$(dirname "$0")/.."
LS=.venv/bin/lakescore
export LAKESCORE_LAKE_ROOT="${LAKESCORE_LAKE_ROOT:-$PWD/lake}"

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

# The last generated day: generate.start_date (2026-11-21) + generate.days (7) - 1.
DAY=2026-11-27
echo "== 4. score ${DAY} with the champion: the nightly job, as spark-submit runs it"
PYSPARK_PYTHON="$PWD/.venv/bin/python" PYSPARK_DRIVER_PYTHON="$PWD/.venv/bin/python" \
  .venv/bin/spark-submit --driver-memory 4g --jars "$(ls "$PWD"/.jars/*.jar | paste -sd,)" \
  jobs/score_nightly.py --run-date "$DAY"

echo "== 5. the night's results by SQL: flagged count, the top flagged rows with reasons, the run's metrics"
$LS sql "SELECT run_date, model_name, model_version, COUNT(*) AS flagged
         FROM lakescore.flagged WHERE run_date = DATE'${DAY}'
         GROUP BY run_date, model_name, model_version"
$LS sql "SELECT transaction_id, account_id, amount, merchant_category, ROUND(score, 4) AS score,
                transform(reasons, r -> concat(r.feature, ' ', format_number(r.contribution, 3))) AS reasons
         FROM lakescore.flagged WHERE run_date = DATE'${DAY}' ORDER BY score DESC LIMIT 8"
$LS sql "SELECT scope, feature, metric, ROUND(value, 4) AS value FROM lakescore.run_metrics
         WHERE run_date = DATE'${DAY}'
           AND (scope IN ('run', 'source', 'model') OR metric IN ('p50', 'p90', 'p99', 'p99_9')
                OR (metric = 'psi' AND value > 0.1))
         ORDER BY scope, metric, feature"
echo "More queries: docs/sql_examples.md"
