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
